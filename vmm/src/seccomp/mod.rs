//! Per-thread seccomp filters, after Firecracker: every thread kind gets its own allow-list, kept as
//! seccompiler JSON in `vmm/seccomp/x86_64.json` and compiled at start-up (a few hundred BPF
//! instructions, well under a millisecond). Anything not listed kills the whole process
//! (`kill_process`): a compromised thread cannot quietly probe the host. `ioctl` is allowed only
//! for the request numbers each thread really issues.
//!
//! Each thread calls [`install`] itself, after its set-up and before it handles anything the guest
//! or a client controls; the filter then applies to that thread (and threads it spawns) only.

use std::collections::HashMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, TargetArch};

/// The filters, as seccompiler JSON.
pub const FILTERS_JSON: &str = include_str!("../../seccomp/x86_64.json");

/// Which allow-list a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, device back-ends, exit handling.
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the device emulation it dispatches.
    Vcpu,
    /// The control API server thread.
    Api,
}

impl ThreadKind {
    /// Every kind, for checks that the JSON defines them all.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api];

    /// The filter's key in the JSON file.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Cannot compile the seccomp filters: {0}
    #[error("cannot compile the seccomp filters: {0}")]
    Compile(String),
    /// No seccomp filter named {0} in x86_64.json
    #[error("no seccomp filter named {0} in x86_64.json")]
    Missing(&'static str),
    /// Cannot install the {0} seccomp filter: {1}
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(&'static str, seccompiler::Error),
}

type Filters = HashMap<String, BpfProgram>;

/// Compiled once per process; every later `install` only copies the program into the kernel.
static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();

fn filters() -> Result<&'static Filters, SeccompError> {
    FILTERS
        .get_or_init(|| {
            seccompiler::compile_from_json(FILTERS_JSON.as_bytes(), TargetArch::x86_64)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SeccompError::Compile(e.clone()))
}

/// Compiles the filters now, so a broken filter file fails start-up before any thread exists.
/// Optional: [`install`] compiles on first use.
pub fn prepare() -> Result<(), SeccompError> {
    for kind in ThreadKind::ALL {
        program(kind)?;
    }
    Ok(())
}

fn program(kind: ThreadKind) -> Result<&'static BpfProgram, SeccompError> {
    filters()?
        .get(kind.name())
        .ok_or(SeccompError::Missing(kind.name()))
}

/// Installs the filter for `kind` on the calling thread (and sets `no_new_privs`). Irreversible.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = program(kind)?;
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind.name(), e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

    const KVMIO: u32 = 0xAE;

    #[test]
    fn every_thread_kind_compiles() {
        prepare().unwrap();
        for kind in ThreadKind::ALL {
            assert!(!program(kind).unwrap().is_empty(), "{kind:?}");
        }
    }

    /// The JSON spells ioctl numbers in decimal with the name as a comment; recompute each from
    /// its definition so a typo cannot silently allow (or forbid) the wrong request.
    #[test]
    fn ioctl_numbers_match_their_names() {
        let expected: HashMap<&str, u64> = [
            ("KVM_RUN", ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0)),
            (
                "KVM_GET_REGS",
                ioctl_expr(
                    _IOC_READ,
                    KVMIO,
                    0x81,
                    u32::try_from(std::mem::size_of::<kvm_bindings::kvm_regs>()).unwrap(),
                ),
            ),
            (
                "KVM_SET_GSI_ROUTING",
                ioctl_expr(
                    _IOC_WRITE,
                    KVMIO,
                    0x6a,
                    u32::try_from(std::mem::size_of::<kvm_bindings::kvm_irq_routing>()).unwrap(),
                ),
            ),
            (
                "KVM_IOEVENTFD",
                ioctl_expr(
                    _IOC_WRITE,
                    KVMIO,
                    0x79,
                    u32::try_from(std::mem::size_of::<kvm_bindings::kvm_ioeventfd>()).unwrap(),
                ),
            ),
            ("TUNSETOFFLOAD", crate::devices::virtio::tap::TUNSETOFFLOAD),
            ("FIONBIO", libc::FIONBIO),
            ("TCGETS", libc::TCGETS),
            ("TCSETS", libc::TCSETS),
        ]
        .into_iter()
        .collect();

        let json: serde_json::Value = serde_json::from_str(FILTERS_JSON).unwrap();
        let mut seen = 0;
        for kind in ThreadKind::ALL {
            for rule in json[kind.name()]["filter"].as_array().unwrap() {
                if rule["syscall"] != "ioctl" {
                    continue;
                }
                let arg = &rule["args"][0];
                // The comment is the request's name, optionally followed by ": why".
                let comment = arg["comment"].as_str().unwrap();
                let name = comment.split(':').next().unwrap_or(comment);
                let want = expected
                    .get(name)
                    .unwrap_or_else(|| panic!("unknown {name}"));
                assert_eq!(arg["val"].as_u64(), Some(*want), "{name}");
                assert_eq!(arg["index"], 1, "{name}");
                seen += 1;
            }
        }
        assert!(seen >= 3);
    }

    /// Child side of the tests below: only does something when re-executed by them.
    #[test]
    #[ignore = "run by seccomp_* tests in a child process"]
    fn seccomp_child() {
        let Ok(action) = std::env::var("KEEL_SECCOMP_CHILD") else {
            return;
        };
        // Set up a real vCPU before the filter, as the VMM does: one page of guest memory
        // holding `hlt` at 0x1000, real mode.
        let mut vcpu = (action == "kvm_run").then(hlt_vcpu);
        if let Some(kind) = action.strip_prefix("log:") {
            // What keel-vmm does: the real logger, then a thread's filter, then a record from
            // a rust-vmm crate (which reach stderr only if `write` to fd 2 is allowed).
            crate::logging::logger().install().unwrap();
            let kind = ThreadKind::ALL
                .into_iter()
                .find(|k| k.name() == kind)
                .unwrap();
            install(kind).unwrap();
            log::error!(target: "virtio_queue::queue", "logged under the {kind:?} filter");
            log::info!("own line under the {kind:?} filter");
            // SAFETY: exits without running destructors.
            unsafe { libc::_exit(8) }
        }
        install(ThreadKind::Vcpu).unwrap();
        match action.as_str() {
            "socket" => {
                // SAFETY: plain syscall with constant arguments; the filter should kill us here.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                // SAFETY: only reached if the filter let `socket` through.
                unsafe { libc::_exit(42) }
            }
            "allowed" => {
                let msg = b"still alive\n";
                // SAFETY: writes a valid buffer to stdout, then exits without running destructors.
                unsafe {
                    libc::write(1, msg.as_ptr().cast(), msg.len());
                    libc::_exit(7)
                }
            }
            "kvm_run" => {
                let exit = match vcpu.as_mut().map(|v| v.run()) {
                    Some(Ok(kvm_ioctls::VcpuExit::Hlt)) => 0,
                    _ => 3,
                };
                // SAFETY: exits without running destructors (munmap/close are not needed).
                unsafe { libc::_exit(exit) }
            }
            other => panic!("unknown action {other}"),
        }
    }

    fn hlt_vcpu() -> kvm_ioctls::VcpuFd {
        use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
        const GUEST_CODE: u64 = 0x1000;
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        mem.write_slice(&[0xf4], GuestAddress(GUEST_CODE)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: 0x2000,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region maps `mem`, which stays alive (leaked) for the whole process.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        std::mem::forget(mem);
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: GUEST_CODE,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).unwrap();
        // The VM and KVM handles must outlive the vCPU's run.
        std::mem::forget(vm);
        std::mem::forget(kvm);
        vcpu
    }

    fn run_child(action: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::seccomp_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KEEL_SECCOMP_CHILD", action)
            .output()
            .unwrap()
    }

    #[test]
    fn seccomp_forbidden_syscall_kills_the_process() {
        let out = run_child("socket");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn seccomp_vcpu_filter_allows_kvm_run() {
        let out = run_child("kvm_run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_thread_kind_may_log_to_stderr() {
        for kind in ThreadKind::ALL {
            let out = run_child(&format!("log:{}", kind.name()));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(8),
                "{kind:?}: {:?} {stderr}",
                out.status
            );
            let want =
                format!("keel-vmm: ERROR virtio_queue::queue: logged under the {kind:?} filter\n");
            assert!(stderr.contains(&want), "{kind:?}: {stderr}");
            assert!(stderr.contains(&format!("keel-vmm: own line under the {kind:?} filter\n")));
        }
    }

    #[test]
    fn seccomp_allowed_syscalls_keep_running() {
        let out = run_child("allowed");
        assert_eq!(out.status.code(), Some(7), "{:?}", out.status);
        assert!(String::from_utf8_lossy(&out.stdout).contains("still alive"));
    }
}
