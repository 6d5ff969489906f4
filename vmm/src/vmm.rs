//! The running VM: vCPU threads, the event loop on the main thread (event-manager), exit handling,
//! and `VmControl` for the API.
//!
//! Every way a VM ends goes through one `ExitRequest`: vCPU exits (triple fault, KVM errors), the
//! i8042 reset line and the ACPI sleep register (from vCPU threads), the API's power-off, and
//! SIGTERM/SIGINT/SIGHUP (through a signalfd in the loop). The loop wakes on it, stops the vCPUs
//! and returns the reason, which becomes the process exit status.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::api::{VmControl, VmInfo, VmState};
use crate::config::VmConfig;
use crate::devices::acpi::AcpiGed;
use crate::devices::boot_timer::BootTimer;
use crate::devices::serial::SerialInput;
use crate::devices::ExitRequest;
use crate::exit::ExitReason;
use crate::seccomp::{self, ThreadKind};
use crate::vstate::vcpu::{Vcpu, Vcpus};

/// What the builder hands over.
pub struct VmParts {
    pub mem: GuestMemoryMmap,
    pub vm: Arc<VmFd>,
    pub vcpus: Vec<Vcpu>,
    pub exit: Arc<ExitRequest>,
    pub ged: Arc<Mutex<AcpiGed>>,
    pub serial_input: SerialInput,
    pub boot_timer: Arc<Mutex<BootTimer>>,
    /// Virtio devices, served from the event loop.
    pub virtio: Vec<Arc<Mutex<crate::devices::virtio::pci::VirtioPciDevice>>>,
    pub vcpu_count: u8,
    pub memory_mib: u32,
    pub start: Instant,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A built VM, not yet running.
pub struct Vmm {
    parts: VmParts,
}

/// The API's view of a running VM. Every method returns without waiting for the guest.
pub struct VmHandle {
    vcpus: Arc<Vcpus>,
    exit: Arc<ExitRequest>,
    ged: Arc<Mutex<AcpiGed>>,
    paused: AtomicBool,
    vcpu_count: u8,
    memory_mib: u32,
    start: Instant,
}

impl VmControl for VmHandle {
    fn info(&self) -> VmInfo {
        let state = if self.exit.reason().is_some() {
            VmState::ShuttingDown
        } else if self.paused.load(Ordering::Acquire) {
            VmState::Paused
        } else {
            VmState::Running
        };
        VmInfo {
            state,
            vcpus: self.vcpu_count,
            memory_mib: self.memory_mib,
            vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_us: u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }

    fn pause(&self) -> Result<(), String> {
        self.vcpus.pause()?;
        self.paused.store(true, Ordering::Release);
        Ok(())
    }

    fn resume(&self) -> Result<(), String> {
        self.vcpus.resume()?;
        self.paused.store(false, Ordering::Release);
        Ok(())
    }

    fn shutdown(&self) -> Result<(), String> {
        if self.exit.reason().is_some() {
            return Err("the VM is shutting down".to_owned());
        }
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify_power_button()
            .map_err(|e| format!("cannot press the ACPI power button: {e}"))
    }

    fn power_off(&self) -> Result<(), String> {
        self.exit.request(ExitReason::HostPowerOff);
        Ok(())
    }
}

/// Wakes the loop when an exit was requested.
struct ExitWatcher(Arc<ExitRequest>);

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.0.event_fd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event_fd().read();
    }
}

/// Turns termination signals into a host power-off.
struct SignalWatcher {
    fd: OwnedFd,
    exit: Arc<ExitRequest>,
}

/// The signals that power the VM off.
const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

impl SignalWatcher {
    /// Blocks the termination signals in this thread (and threads it starts later) and opens a
    /// signalfd for them.
    fn new(exit: Arc<ExitRequest>) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t and the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for sig in TERMINATION_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: valid set pointer, no old set requested.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: valid set pointer; the returned fd is checked and then owned.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalWatcher { fd, exit })
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.fd, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(info).cast(),
                size,
            )
        };
        if n == size as isize {
            log::info!("signal {} received, powering off", info.ssi_signo);
            self.exit.request(ExitReason::HostPowerOff);
        }
    }
}

/// Puts a terminal on stdin into raw mode for the guest console and restores it on drop.
struct RawTerminal;

impl RawTerminal {
    fn enable() -> Option<Self> {
        use vmm_sys_util::terminal::Terminal;
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(io::stdin().as_raw_fd()) } != 1 {
            return None;
        }
        io::stdin().lock().set_raw_mode().ok().map(|()| RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use vmm_sys_util::terminal::Terminal;
        let _ = io::stdin().lock().set_canon_mode();
    }
}

impl Vmm {
    pub fn new(parts: VmParts) -> Self {
        Vmm { parts }
    }

    /// Guest memory (for tests and tools).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.parts.mem
    }

    /// The boot timer device.
    pub fn boot_timer(&self) -> Arc<Mutex<BootTimer>> {
        self.parts.boot_timer.clone()
    }

    /// Starts the vCPUs and returns the running VM with its control handle.
    pub fn start(self) -> Result<RunningVmm, String> {
        let VmParts {
            mem,
            vm,
            vcpus,
            exit,
            ged,
            serial_input,
            boot_timer: _,
            virtio,
            vcpu_count,
            memory_mib,
            start,
        } = self.parts;
        let mut events: EventManager<Subscriber> =
            EventManager::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        events.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));
        events.add_subscriber(Arc::new(Mutex::new(serial_input)));
        for device in virtio {
            let worker = crate::devices::virtio::worker::VirtioWorker::new(device)
                .map_err(|e| format!("cannot watch a virtio device: {e}"))?;
            events.add_subscriber(Arc::new(Mutex::new(worker)));
        }
        let vcpus = Arc::new(Vcpus::start(vcpus).map_err(|e| e.to_string())?);
        let handle = Arc::new(VmHandle {
            vcpus: vcpus.clone(),
            exit: exit.clone(),
            ged,
            paused: AtomicBool::new(false),
            vcpu_count,
            memory_mib,
            start,
        });
        Ok(RunningVmm {
            _mem: mem,
            _vm: vm,
            vcpus,
            exit,
            events,
            handle,
        })
    }
}

/// A VM whose vCPUs run.
pub struct RunningVmm {
    // Kept alive for as long as the vCPUs run: KVM maps this memory into the guest.
    _mem: GuestMemoryMmap,
    _vm: Arc<VmFd>,
    vcpus: Arc<Vcpus>,
    exit: Arc<ExitRequest>,
    events: EventManager<Subscriber>,
    handle: Arc<VmHandle>,
}

impl RunningVmm {
    /// The handle the API (or a test) controls the VM with.
    pub fn handle(&self) -> Arc<VmHandle> {
        self.handle.clone()
    }

    /// Adds an event source to the loop (signals, sockets).
    fn add_subscriber(&mut self, subscriber: Subscriber) {
        self.events.add_subscriber(subscriber);
    }

    /// Runs the event loop on this thread until an exit is requested, then stops the vCPUs.
    pub fn run(mut self) -> ExitReason {
        let reason = loop {
            if let Some(reason) = self.exit.reason() {
                break reason;
            }
            if let Err(e) = self.events.run() {
                log::error!("event loop failed: {e}");
                self.exit.request(ExitReason::VmmError);
            }
        };
        self.vcpus.stop();
        reason
    }
}

/// Runs the VM `config` describes until it ends: what `keel-vmm` does. Serves the API on
/// `api_sock` if given. Installs the VMM thread's seccomp filter once every other thread runs.
pub fn run(kvm: Kvm, config: VmConfig, api_sock: Option<&Path>) -> ExitReason {
    let start = Instant::now();
    match run_inner(&kvm, &config, api_sock, start) {
        Ok(reason) => {
            log::info!("VM stopped: {reason:?} (exit status {})", reason.code());
            reason
        }
        Err(e) => {
            log::error!("{e}");
            ExitReason::VmmError
        }
    }
}

fn run_inner(
    kvm: &Kvm,
    config: &VmConfig,
    api_sock: Option<&Path>,
    start: Instant,
) -> Result<ExitReason, String> {
    let vmm = crate::builder::build(kvm, config, start).map_err(|e| e.to_string())?;
    let exit = vmm.parts.exit.clone();
    // Before any thread starts, so every thread inherits the blocked signals.
    let signals = SignalWatcher::new(exit).map_err(|e| format!("cannot watch signals: {e}"))?;
    let _terminal = match config.serial {
        crate::config::SerialConfig::Stdout => RawTerminal::enable(),
        _ => None,
    };
    let mut running = vmm.start()?;
    running.add_subscriber(Arc::new(Mutex::new(signals)));
    let _api = match api_sock {
        Some(path) => {
            Some(crate::api::start_server(path, running.handle()).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    // Last: the filter is inherited by threads started afterwards, and there are none.
    seccomp::install(ThreadKind::Vmm).map_err(|e| e.to_string())?;
    Ok(running.run())
}
