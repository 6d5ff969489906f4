//! VMs: definitions kept in the state directory, each running VM one keel-vmm process that the
//! agent starts, watches and restarts by policy, and takes back after an agent restart.
//!
//! Each keel-vmm runs jailed (`launch`, docs/hardening.md): its own uid, a minimal root, its own
//! cgroup with limits sized from the VM. Per VM, `<run_dir>/<name>/` holds the agent's `vm.json`,
//! `vmm.log` and `pid`, and the jail's `sock/` with keel-vmm's control socket `api.sock` and
//! console socket `console.sock`. keel-vmm runs in a session of its own with no pipe to the
//! agent, so it outlives an agent that dies; a new agent finds it again by the pid file and a
//! control socket that answers (VDSM's recovery). A monitor reads each jail's cgroup events and
//! logs the limits a VM hits; the VM's status shows them.
//!
//! A start answers at once: the VM is `starting` while a thread of its own sets up the jail,
//! launches keel-vmm and waits for its control socket, then `running`, or `stopped` with the
//! reason in its status' `error`. The VM table's lock is only ever held for bookkeeping, never
//! across a launch, a wait or a call to keel-vmm, so `get` and `list` answer at once.
//!
//! The parts, one job each: the definition store (`definitions`: define, delete, list, get,
//! validation), the supervisor (`supervisor`: start, watch, exit handling, restart by policy
//! with back-off, taking back running VMs), the limit watcher (`limits`: the jails' cgroup
//! events) and the control calls to keel-vmm (`control`). This module holds [`Vms`], its
//! error and the types they share.

mod control;
mod definitions;
mod limits;
mod supervisor;
/// The entry of VM `name`, which must not be running (nor starting) for `op`.
fn stopped_entry<'e>(
    entries: &'e BTreeMap<String, Entry>,
    name: &str,
    op: &'static str,
) -> Result<&'e Entry, VmError> {
    let entry = entries
        .get(name)
        .ok_or_else(|| VmError::NotFound(name.to_string()))?;
    match &entry.run {
        Some(run) => Err(VmError::State {
            name: name.into(),
            state: run.state,
            op,
        }),
        None => Ok(entry),
    }
}

#[cfg(test)]
mod test_support;

pub use control::vmm_call;
pub use definitions::validate;
pub use supervisor::exit_reason;

use limits::monitor_limits;

use super::api::{VmExit, VmJail, VmSpec, VmState, VmStatus};
use super::http::Response;
use super::images::Store;
use super::launch::{self, Launched, VmRun};
use super::vm_console::VmConsole;
use super::vm_devices::DeviceError;
use crate::jail::{JailError, Jailer};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// How long a new keel-vmm has to open its control socket. Generous: nothing waits on it but
/// the VM's own start thread, and under emulation (the e2e tests' QEMU/TCG) a start takes ~50x
/// longer than on a host. keelctl waits longer than this by default.
pub const START_WAIT: Duration = Duration::from_secs(120);
/// How long keel-vmm has to answer one control request: well under a manager's request
/// timeout (keelctl: 30 s), which the answer to a VM operation must fit in.
pub const VMM_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No VM named {0:?}
    #[error("No VM named {0:?}")]
    NotFound(String),
    /// A VM named {0:?} exists already
    #[error("A VM named {0:?} exists already")]
    Exists(String),
    /// Invalid VM definition: {0}
    #[error("Invalid VM definition: {0}")]
    Invalid(String),
    /// VM {name:?} is {state:?}; cannot {op}
    #[error("VM {name:?} is {state:?}; cannot {op}")]
    State {
        name: String,
        state: VmState,
        op: &'static str,
    },
    /// {0}
    #[error("{0}")]
    Image(#[from] super::images::StoreError),
    /// keel-vmm for {name:?} refused {op}: {message}
    #[error("keel-vmm for {name:?} refused {op}: {message}")]
    Refused {
        name: String,
        op: &'static str,
        message: String,
    },
    /// keel-vmm for {name:?} exited at start: {reason}; its log: {log}
    #[error("keel-vmm for {name:?} exited at start: {reason}; its log: {log}")]
    StartFailed {
        name: String,
        reason: String,
        log: String,
    },
    /// keel-vmm for {name:?} did not open its control socket within {secs} s; its log: {log}
    #[error(
        "keel-vmm for {name:?} did not open its control socket within {secs} s; its log: {log}"
    )]
    StartTimeout {
        name: String,
        secs: u64,
        log: String,
    },
    /// VM {0:?} was powered off while starting
    #[error("VM {0:?} was powered off while starting")]
    StartAborted(String),
    /// Cannot start a thread for VM {0:?}: {1}
    #[error("Cannot start a thread for VM {0:?}: {1}")]
    Thread(String, io::Error),
    /// Cannot {0} {1}: {2}
    #[error("Cannot {0} {1}: {2}")]
    Io(&'static str, PathBuf, io::Error),
    /// {0}
    #[error("{0}")]
    Jail(#[from] JailError),
    /// Every jail uid is held by a running VM
    #[error("Every jail uid is held by a running VM")]
    NoUid,
    /// Disk {disk:?} is in use by running VM {vm:?}
    #[error("Disk {disk:?} is in use by running VM {vm:?}")]
    DiskInUse { disk: String, vm: String },
    /// {0}
    #[error("{0}")]
    Tap(#[from] super::taps::TapError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
}

impl VmError {
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::Exists(_) | Self::State { .. } | Self::Refused { .. } => 409,
            Self::Invalid(_) => 400,
            Self::Image(e) if e.status() == 404 => 400,
            Self::Image(e) => e.status(),
            Self::StartFailed { .. } | Self::StartTimeout { .. } | Self::StartAborted(_) => 422,
            Self::NoUid | Self::DiskInUse { .. } => 409,
            Self::Tap(_) => 422,
            Self::Io(..) | Self::Jail(_) | Self::Thread(..) => 500,
            Self::Devices(DeviceError::Invalid(_)) => 400,
            Self::Devices(DeviceError::Store(e)) if e.status() == 404 => 400,
            Self::Devices(DeviceError::Store(e)) => e.status(),
            Self::Devices(DeviceError::Copy { .. }) => 500,
        }
    }

    pub fn response(&self) -> Response {
        Response::error(self.status(), &self.to_string())
    }
}

struct Run {
    /// keel-vmm's pid; `None` while the start is still setting up its jail.
    pid: Option<u32>,
    state: VmState,
    /// The jail uid the run holds: taken when the start is accepted, so two starts in flight
    /// never share one.
    uid: Option<u32>,
}

struct Entry {
    spec: VmSpec,
    run: Option<Run>,
    last_exit: Option<VmExit>,
    restarts: u32,
    /// Bumped at every start, so a watcher of an old run does not touch a new one.
    generation: u64,
    /// The manager asked it to stop: its exit is not a crash to restart from.
    stopping: bool,
    backoff: Duration,
    console: Arc<VmConsole>,
    /// The jail of the current run, or of the last one with its final counters.
    jail: Option<VmJail>,
    /// Why the last start did not reach `running`; cleared by the next start.
    error: Option<String>,
}

impl Entry {
    fn status(&self) -> VmStatus {
        VmStatus {
            spec: self.spec.clone(),
            state: self.run.as_ref().map_or(VmState::Stopped, |r| r.state),
            pid: self.run.as_ref().and_then(|r| r.pid),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            error: self.error.clone(),
            jail: self.jail.clone(),
        }
    }

    /// The jail uid of the running (or starting) VMM.
    fn uid(&self) -> Option<u32> {
        self.run.as_ref().and_then(|r| r.uid)
    }

    /// The current run's generation, while it is `starting`.
    fn starting(&self, generation: u64) -> bool {
        self.generation == generation
            && self
                .run
                .as_ref()
                .is_some_and(|r| r.state == VmState::Starting)
    }
}

/// Sets up a VM's jail and starts its keel-vmm ([`launch::launch`]; tests stand in a slow one).
pub type Launcher = fn(Option<&Jailer>, &Path, &VmRun) -> Result<Launched, VmError>;

/// How VMs start: the launcher, and how long keel-vmm has to open its control socket.
#[derive(Clone, Copy)]
pub struct Starter {
    pub launch: Launcher,
    pub wait: Duration,
}

impl Default for Starter {
    fn default() -> Self {
        Self {
            launch: launch::launch,
            wait: START_WAIT,
        }
    }
}

/// Where things live and what runs VMs.
#[derive(Debug, Clone)]
pub struct VmPaths {
    /// The keel-vmm binary.
    pub vmm: PathBuf,
    /// Definitions, one `<name>.json` each.
    pub defs: PathBuf,
    /// Per-VM runtime directories.
    pub run: PathBuf,
    /// Where the jails go; `None` starts keel-vmm unjailed (in-process tests, where stand-in
    /// VMMs are shell scripts). The agent on a host always jails.
    pub jail: Option<Jailer>,
}

/// Every VM on the host.
pub struct Vms {
    paths: VmPaths,
    store: Arc<Store>,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// VMs being defined: their private disk copies are made outside the table's lock, so that
    /// copying a large image does not hold up every other VM operation. Locked after `entries`.
    defining: Mutex<BTreeMap<String, VmSpec>>,
    starter: Starter,
}

impl Vms {
    /// Loads the definitions and takes back the VMs still running, logging what happened.
    pub fn open(paths: VmPaths, store: Arc<Store>) -> Result<Arc<Self>, VmError> {
        Self::open_with(paths, store, Starter::default())
    }

    /// As [`Vms::open`], starting VMs with `starter`.
    pub fn open_with(
        paths: VmPaths,
        store: Arc<Store>,
        starter: Starter,
    ) -> Result<Arc<Self>, VmError> {
        for dir in [&paths.defs, &paths.run] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| VmError::Io("create", dir.clone(), e))?;
        }
        let vms = Arc::new(Self {
            paths,
            store,
            entries: Mutex::new(BTreeMap::new()),
            defining: Mutex::new(BTreeMap::new()),
            starter,
        });
        if vms.paths.jail.is_some() {
            let weak = Arc::downgrade(&vms);
            let _ = thread::Builder::new()
                .name("keel-vm-limits".into())
                .spawn(move || monitor_limits(weak));
        }
        let dir = &vms.paths.defs;
        let listing = fs::read_dir(dir).map_err(|e| VmError::Io("read", dir.clone(), e))?;
        let mut names: Vec<PathBuf> = listing
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        for path in names {
            let spec = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<VmSpec>(&b).map_err(|e| e.to_string()));
            match spec {
                Ok(spec) => vms.adopt_definition(spec),
                Err(e) => log::warn!("keel-agent: skipping VM definition {}: {e}", path.display()),
            }
        }
        if vms.paths.jail.is_some() {
            let keep: Vec<String> = vms
                .lock()
                .values()
                .filter(|e| e.run.is_some())
                .flat_map(|e| launch::tap_names(&e.spec.name, e.spec.nics.len()))
                .collect();
            for tap in super::taps::sweep(&keep) {
                log::info!("keel-agent: removed tap {tap} of a VM that ended");
            }
        }
        Ok(vms)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn defining(&self) -> MutexGuard<'_, BTreeMap<String, VmSpec>> {
        self.defining.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.paths.run.join(name)
    }

    /// VM `name`'s console, its history kept in its run directory too.
    fn console_of(&self, name: &str) -> VmConsole {
        VmConsole::with_log(self.dir(name).join(super::vm_console::LOG_FILE))
    }

    fn new_entry(spec: VmSpec, console: VmConsole) -> Entry {
        Entry {
            spec,
            run: None,
            last_exit: None,
            restarts: 0,
            generation: 0,
            stopping: false,
            backoff: Duration::from_secs(1),
            console: Arc::new(console),
            jail: None,
            error: None,
        }
    }
}

/// A control operation on a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Shutdown,
    PowerOff,
    Pause,
    Resume,
}
