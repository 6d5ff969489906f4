//! vCPUs: set-up (CPUID, MSRs, FPU, LAPIC, boot registers), one thread each running `KVM_RUN` and
//! dispatching its exits to the buses, and pause/resume/stop.
//!
//! Kicking a vCPU out of `KVM_RUN` works as in Firecracker: a real-time signal whose handler sets
//! `kvm_run.immediate_exit` of the vCPU running on that thread. If the signal lands inside
//! `KVM_RUN` the ioctl returns `EINTR`; if it lands just before, `immediate_exit` makes the next
//! `KVM_RUN` return at once. Either way the thread then sees the new run state and parks.

use std::cell::Cell;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_run, CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::cpuid::{build_cpuid, CpuidError, Topology};
use crate::arch::{lapic, regs};
use crate::devices::bus::Bus;
use crate::devices::{ExitRequest, RateLimitedLog};
use crate::exit::ExitReason;
use crate::seccomp::{self, ThreadKind};

/// Stack of a vCPU thread: `KVM_RUN` and device emulation need little, and every KiB counts
/// against the per-VM overhead.
const VCPU_THREAD_STACK: usize = 128 * 1024;
/// How long `pause` waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Setting up or starting a vCPU failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Cannot create vCPU {0}: {1}
    #[error("Cannot create vCPU {0}: {1}")]
    Create(u8, kvm_ioctls::Error),
    /// vCPU {0}: {1}
    #[error("vCPU {0}: {1}")]
    Cpuid(u8, CpuidError),
    /// vCPU {0}: KVM refused to {1}: {2}
    #[error("vCPU {0}: KVM refused to {1}: {2}")]
    Kvm(u8, &'static str, kvm_ioctls::Error),
    /// vCPU {0}: {1}
    #[error("vCPU {0}: {1}")]
    Regs(u8, regs::RegsError),
    /// Cannot install the vCPU kick signal handler: {0}
    #[error("Cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// Cannot start the thread of vCPU {0}: {1}
    #[error("Cannot start the thread of vCPU {0}: {1}")]
    Spawn(u8, io::Error),
}

/// One vCPU before its thread starts.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitRequest>,
}

static UNHANDLED_PIO: RateLimitedLog = RateLimitedLog::new();
static UNHANDLED_MMIO: RateLimitedLog = RateLimitedLog::new();

/// What the thread does after one `KVM_RUN`.
#[derive(Debug, PartialEq, Eq)]
enum Emulation {
    /// Run the guest again (after checking the run state).
    Continue,
    /// This vCPU halted for good (`KVM_EXIT_HLT` only happens without in-kernel LAPIC halting).
    Halted,
    /// The VM must end.
    Stop(ExitReason),
}

impl Vcpu {
    /// Creates vCPU `index` on `vm`.
    pub fn new(
        vm: &VmFd,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitRequest>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Vcpu {
            fd,
            index,
            pio,
            mmio,
            exit,
        })
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; for the boot CPU (`boot_entry` given) also the 64-bit boot
    /// registers. Application processors stay in KVM's wait-for-SIPI state until the guest starts
    /// them through the in-kernel LAPIC.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        topology: Topology,
        mem: &GuestMemoryMmap,
        boot_entry: Option<GuestAddress>,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let cpuid = build_cpuid(supported_cpuid, topology).map_err(|e| VcpuError::Cpuid(i, e))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Kvm(i, "set the CPUID", e))?;
        regs::setup_msrs(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        regs::setup_fpu(&self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        lapic::setup_lint(&self.fd).map_err(|e| VcpuError::Kvm(i, "set the LAPIC", e))?;
        if let Some(entry) = boot_entry {
            regs::setup_regs(&self.fd, entry).map_err(|e| VcpuError::Regs(i, e))?;
            regs::setup_sregs(mem, &self.fd).map_err(|e| VcpuError::Regs(i, e))?;
        }
        Ok(())
    }

    /// One `KVM_RUN` and the handling of its exit.
    fn run_once(&mut self) -> Emulation {
        let index = self.index;
        let run = self.fd.get_kvm_run() as *const kvm_run;
        let exit = self.fd.run();
        // The access size of a port I/O exit; kvm-ioctls only hands out size * count bytes.
        let io_size = match &exit {
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => {
                // SAFETY: `run` is this vCPU's mapped kvm_run, valid while `self.fd` lives; for an
                // I/O exit KVM filled the `io` member of the exit union. The read touches only the
                // header fields, not the data area the exit's slice borrows.
                usize::from(unsafe {
                    std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read_volatile()
                })
            }
            _ => 0,
        };
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                // String I/O (`rep insb`) arrives as `count` accesses of `size` bytes each.
                for access in data.chunks_mut(io_size.max(1)) {
                    if !self.pio.read(u64::from(port), access) {
                        access.fill(0xff);
                        UNHANDLED_PIO.log(format_args!(
                            "vCPU {index}: read of {} bytes from unhandled port {port:#x}",
                            access.len()
                        ));
                    }
                }
                Emulation::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                for access in data.chunks(io_size.max(1)) {
                    if !self.pio.write(u64::from(port), access) {
                        UNHANDLED_PIO.log(format_args!(
                            "vCPU {index}: write of {access:02x?} to unhandled port {port:#x}"
                        ));
                    }
                }
                Emulation::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                    UNHANDLED_MMIO.log(format_args!(
                        "vCPU {index}: read of {} bytes from unhandled MMIO {addr:#x}",
                        data.len()
                    ));
                }
                Emulation::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    UNHANDLED_MMIO.log(format_args!(
                        "vCPU {index}: write of {data:02x?} to unhandled MMIO {addr:#x}"
                    ));
                }
                Emulation::Continue
            }
            Ok(VcpuExit::Hlt) => Emulation::Halted,
            Ok(VcpuExit::Shutdown) => {
                log::warn!("vCPU {index}: triple fault (KVM_EXIT_SHUTDOWN)");
                Emulation::Stop(ExitReason::TripleFault)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Emulation::Stop(ExitReason::GuestPowerOff),
                KVM_SYSTEM_EVENT_RESET => Emulation::Stop(ExitReason::GuestReboot),
                KVM_SYSTEM_EVENT_CRASH => {
                    log::warn!("vCPU {index}: guest crash system event");
                    Emulation::Stop(ExitReason::KvmError)
                }
                other => {
                    log::error!("vCPU {index}: unexpected system event {other}");
                    Emulation::Stop(ExitReason::KvmError)
                }
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                log::error!(
                    "vCPU {index}: KVM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
                );
                Emulation::Stop(ExitReason::KvmError)
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: KVM filled the `internal` member of the exit union for this exit reason.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                log::error!(
                    "vCPU {index}: KVM internal error, suberror {suberror} at rip {rip:#x}"
                );
                Emulation::Stop(ExitReason::KvmError)
            }
            // A kick with a pending signal: the loop re-checks the run state.
            Ok(VcpuExit::Intr) => Emulation::Continue,
            Ok(other) => {
                log::error!("vCPU {index}: unexpected exit {other:?}");
                Emulation::Stop(ExitReason::KvmError)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                Emulation::Continue
            }
            Err(e) => {
                log::error!("vCPU {index}: KVM_RUN failed: {e}");
                Emulation::Stop(ExitReason::KvmError)
            }
        }
    }

    /// The thread body: filter, then run until stopped. Returns the vCPU so that its fd and
    /// `kvm_run` mapping are released by the joining thread: the vCPU filter allows neither
    /// `close` nor `munmap` of KVM state to a thread that never needs them while running.
    fn run(mut self, control: &VcpuControl) -> Self {
        if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
            log::error!("vCPU {}: {e}", self.index);
            self.exit.request(ExitReason::VmmError);
            control.park_until_exit();
            return self;
        }
        KICK_TARGET.with(|t| t.set(self.fd.get_kvm_run() as *mut kvm_run));
        while control.wait_runnable() {
            match self.run_once() {
                Emulation::Continue => {}
                Emulation::Halted => control.park_until_exit(),
                Emulation::Stop(reason) => {
                    self.exit.request(reason);
                    control.park_until_exit();
                }
            }
        }
        KICK_TARGET.with(|t| t.set(std::ptr::null_mut()));
        self
    }
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs; null when none. Read by the kick handler.
    static KICK_TARGET: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `const`-initialised thread local without destructor: no allocation, async-signal-safe.
    let target = KICK_TARGET.with(|t| t.get());
    if !target.is_null() {
        // SAFETY: the pointer is the mapped `kvm_run` of the VcpuFd owned by this very thread; it
        // is set after the thread took ownership and cleared before the VcpuFd is dropped. The
        // volatile write matches the kernel reading it at the next KVM_RUN.
        unsafe { std::ptr::addr_of_mut!((*target).immediate_exit).write_volatile(1) };
    }
}

/// The signal that kicks vCPU threads.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), kick_handler));
    result.map_err(VcpuError::Signal)
}

/// What the vCPU threads are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    Exiting,
}

#[derive(Debug)]
struct ControlState {
    desired: RunState,
    /// Threads currently parked (paused, halted or done).
    parked: usize,
}

/// The run state shared by the VMM and every vCPU thread.
#[derive(Debug)]
struct VcpuControl {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks while paused; false once the threads must exit.
    fn wait_runnable(&self) -> bool {
        let mut state = self.lock();
        loop {
            match state.desired {
                RunState::Running => return true,
                RunState::Exiting => return false,
                RunState::Paused => {
                    state.parked += 1;
                    self.changed.notify_all();
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                    state.parked -= 1;
                }
            }
        }
    }

    /// Parks this thread for good (it counts as paused), until the threads must exit.
    fn park_until_exit(&self) {
        let mut state = self.lock();
        state.parked += 1;
        self.changed.notify_all();
        while state.desired != RunState::Exiting {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
    }
}

/// The running vCPU threads of a VM.
pub struct Vcpus {
    threads: Mutex<Vec<JoinHandle<Vcpu>>>,
    count: usize,
    control: Arc<VcpuControl>,
}

impl Vcpus {
    /// Starts one thread per vCPU, running.
    pub fn start(vcpus: Vec<Vcpu>) -> Result<Self, VcpuError> {
        install_kick_handler()?;
        let control = Arc::new(VcpuControl {
            state: Mutex::new(ControlState {
                desired: RunState::Running,
                parked: 0,
            }),
            changed: Condvar::new(),
        });
        let started = Vcpus {
            threads: Mutex::new(Vec::with_capacity(vcpus.len())),
            count: vcpus.len(),
            control,
        };
        for vcpu in vcpus {
            let index = vcpu.index;
            let control = started.control.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .stack_size(VCPU_THREAD_STACK)
                .spawn(move || vcpu.run(&control));
            match thread {
                Ok(thread) => started.lock_threads().push(thread),
                // Dropping `started` stops the threads already running.
                Err(e) => return Err(VcpuError::Spawn(index, e)),
            }
        }
        Ok(started)
    }

    fn lock_threads(&self) -> MutexGuard<'_, Vec<JoinHandle<Vcpu>>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_all(&self) {
        for thread in self.lock_threads().iter() {
            // Fails only if the thread already ended, which is what a kick wants anyway.
            let _ = thread.kill(kick_signal());
        }
    }

    /// Parks every vCPU; returns once all are out of the guest.
    pub fn pause(&self) -> Result<(), String> {
        {
            let mut state = self.control.lock();
            match state.desired {
                RunState::Exiting => return Err("the VM is shutting down".to_owned()),
                RunState::Paused => return Err("the VM is already paused".to_owned()),
                RunState::Running => state.desired = RunState::Paused,
            }
        }
        self.kick_all();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut state = self.control.lock();
        while state.parked < self.count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "only {} of {} vCPUs paused in time",
                    state.parked, self.count
                ));
            }
            state = self
                .control
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<(), String> {
        let mut state = self.control.lock();
        match state.desired {
            RunState::Exiting => return Err("the VM is shutting down".to_owned()),
            RunState::Running => return Err("the VM is not paused".to_owned()),
            RunState::Paused => state.desired = RunState::Running,
        }
        self.control.changed.notify_all();
        Ok(())
    }

    /// Stops every vCPU thread and waits for them.
    pub fn stop(&self) {
        self.control.lock().desired = RunState::Exiting;
        self.control.changed.notify_all();
        self.kick_all();
        let threads = std::mem::take(&mut *self.lock_threads());
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn control(desired: RunState) -> Arc<VcpuControl> {
        Arc::new(VcpuControl {
            state: Mutex::new(ControlState { desired, parked: 0 }),
            changed: Condvar::new(),
        })
    }

    fn wait_parked(control: &VcpuControl, n: usize) {
        let mut state = control.lock();
        while state.parked != n {
            state = control
                .changed
                .wait_timeout(state, Duration::from_secs(5))
                .unwrap()
                .0;
        }
    }

    #[test]
    fn paused_threads_park_and_wake_to_run_or_exit() {
        let control = control(RunState::Paused);
        let c = control.clone();
        let first = std::thread::spawn(move || c.wait_runnable());
        wait_parked(&control, 1);
        control.lock().desired = RunState::Running;
        control.changed.notify_all();
        assert!(first.join().unwrap(), "resumed thread runs");
        assert_eq!(control.lock().parked, 0);

        control.lock().desired = RunState::Paused;
        let c = control.clone();
        let second = std::thread::spawn(move || c.wait_runnable());
        wait_parked(&control, 1);
        control.lock().desired = RunState::Exiting;
        control.changed.notify_all();
        assert!(!second.join().unwrap(), "exiting thread stops");
    }

    #[test]
    fn a_stopped_vcpu_stays_parked_until_exit() {
        let control = control(RunState::Running);
        let c = control.clone();
        let parked = std::thread::spawn(move || c.park_until_exit());
        wait_parked(&control, 1);
        // Resuming does not wake it: only exiting does.
        control.changed.notify_all();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!parked.is_finished());
        control.lock().desired = RunState::Exiting;
        control.changed.notify_all();
        parked.join().unwrap();
    }
}
