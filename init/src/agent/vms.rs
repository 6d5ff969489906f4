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

use super::api::{DiskCopy, ImageKind, OnCrash, VmExit, VmJail, VmSpec, VmState, VmStatus};
use super::atomic::{remove_durable, write_atomic};
use super::console::Console;
use super::http::{self, Limits, Response};
use super::images::Store;
use super::launch::{self, Launched, VmRun};
use super::vm_devices::{self, DeviceError};
use crate::jail::{CgroupLimits, JailError, Jailer};
use keel_api::vmm::{self, ExitReason};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a new keel-vmm has to open its control socket.
const START_WAIT: Duration = Duration::from_secs(10);
/// Restarts after crashes back off from 1 s, doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the monitor reads the jails' cgroup events.
const LIMITS_POLL: Duration = Duration::from_secs(2);

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
            Self::StartFailed { .. } => 422,
            Self::NoUid | Self::DiskInUse { .. } => 409,
            Self::Tap(_) => 422,
            Self::Io(..) | Self::Jail(_) => 500,
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

/// Checks a VM definition before it is stored.
pub fn validate(spec: &VmSpec) -> Result<(), VmError> {
    let bad = |m: String| Err(VmError::Invalid(m));
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 63
        && !spec.name.starts_with('-')
        && spec
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return bad(format!(
            "name {:?} must be 1 to 63 lowercase letters, digits or '-', not starting with '-'",
            spec.name
        ));
    }
    // The limits keel-vmm applies: a VM that cannot start is refused here.
    spec.check_limits()
        .map_err(|e| VmError::Invalid(e.to_string()))?;
    super::images::check_name(&spec.kernel)?;
    if let Some(initrd) = &spec.initrd {
        super::images::check_name(initrd)?;
    }
    vm_devices::validate(spec).map_err(|e| VmError::Invalid(e.to_string()))
}

/// A running VM other than `spec`'s that shares a disk image with it (`shared`, not a private
/// copy) where either writes: a writable shared disk belongs to one running VM at a time.
fn disk_conflict(entries: &BTreeMap<String, Entry>, spec: &VmSpec) -> Option<VmError> {
    entries
        .values()
        .filter(|e| e.run.is_some() && e.spec.name != spec.name)
        .find_map(|other| {
            spec.disks.iter().find_map(|mine| {
                other
                    .spec
                    .disks
                    .iter()
                    .find(|theirs| {
                        theirs.image == mine.image
                            && theirs.copy == DiskCopy::Shared
                            && mine.copy == DiskCopy::Shared
                            && !(theirs.read_only && mine.read_only)
                    })
                    .map(|_| VmError::DiskInUse {
                        disk: mine.image.clone(),
                        vm: other.spec.name.clone(),
                    })
            })
        })
}

/// What keel-vmm's exit status means (its documented exit reasons).
pub fn exit_reason(status: ExitStatus) -> (Option<i32>, String, bool) {
    match (status.code(), status.signal()) {
        (Some(c), _) => match ExitReason::from_code(c) {
            Some(reason) => (Some(c), reason.describe().into(), reason.is_crash()),
            None => (Some(c), format!("unknown exit status {c}"), true),
        },
        (None, Some(sig)) => (None, format!("killed by signal {sig}"), true),
        (None, None) => (None, "ended".into(), true),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Run {
    pid: u32,
    state: VmState,
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
    console: Arc<Console>,
    /// The jail of the current run, or of the last one with its final counters.
    jail: Option<VmJail>,
}

impl Entry {
    fn status(&self) -> VmStatus {
        VmStatus {
            spec: self.spec.clone(),
            state: self.run.as_ref().map_or(VmState::Stopped, |r| r.state),
            pid: self.run.as_ref().map(|r| r.pid),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            jail: self.jail.clone(),
        }
    }

    /// The jail uid of the running VMM.
    fn uid(&self) -> Option<u32> {
        self.run.as_ref().and(self.jail.as_ref()).map(|j| j.uid)
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
}

impl Vms {
    /// Loads the definitions and takes back the VMs still running, logging what happened.
    pub fn open(paths: VmPaths, store: Arc<Store>) -> Result<Arc<Self>, VmError> {
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
    fn console_of(&self, name: &str) -> Console {
        Console::with_log(self.dir(name).join(super::console::LOG_FILE))
    }

    fn new_entry(spec: VmSpec, console: Console) -> Entry {
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
        }
    }

    /// A stored definition, and its keel-vmm if one still runs.
    fn adopt_definition(self: &Arc<Self>, spec: VmSpec) {
        let name = spec.name.clone();
        let console = self.console_of(&spec.name);
        let mut entry = Self::new_entry(spec, console);
        if let Some((pid, state)) = self.find_running(&name) {
            entry.run = Some(Run { pid, state });
            entry.generation = 1;
            if let Some(jailer) = &self.paths.jail {
                let limits = CgroupLimits::for_vm(entry.spec.memory_mib, entry.spec.vcpus.into());
                entry.jail = launch::process_uid(pid)
                    .filter(|uid| launch::is_vm_uid(*uid))
                    .map(|uid| launch::jail_info(jailer, &name, uid, &limits));
            }
            entry
                .console
                .attach(launch::sockets(&self.dir(&name)).1, START_WAIT);
            self.watch_pid(name.clone(), 1, pid);
            log::info!("keel-agent: took back VM {name} (keel-vmm pid {pid}, {state:?})");
        } else if let Some(jailer) = &self.paths.jail {
            // A jail whose VMM ended (or stopped answering) while no agent watched it.
            if let Err(e) = jailer.cleanup(&name) {
                log::warn!("keel-agent: VM {name}: {e}");
            }
        }
        self.lock().insert(name, entry);
    }

    /// The pid and state of a keel-vmm still serving `name`, if any.
    fn find_running(&self, name: &str) -> Option<(u32, VmState)> {
        let dir = self.dir(name);
        let pid: u32 = fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        if exe.file_name() != self.paths.vmm.file_name() {
            return None;
        }
        let info = vmm_call(&launch::sockets(&dir).0, "GET", vmm::VM_INFO).ok()?;
        let info: vmm::VmInfo = info.json_body().ok()?;
        let state = match info.state {
            vmm::VmState::Running => VmState::Running,
            vmm::VmState::Paused => VmState::Paused,
            vmm::VmState::ShuttingDown => VmState::ShuttingDown,
        };
        Some((pid, state))
    }

    /// A VM's status, with its jail's limit counters read now while it runs.
    fn status_of(&self, entry: &Entry) -> VmStatus {
        let mut status = entry.status();
        if let (Some(jail), Some(jailer), Some(_)) =
            (status.jail.as_mut(), &self.paths.jail, &entry.run)
        {
            if let Ok(events) = jailer.cgroup_events(&entry.spec.name) {
                jail.events = events;
            }
        }
        status
    }

    pub fn list(&self) -> Vec<VmStatus> {
        self.lock().values().map(|e| self.status_of(e)).collect()
    }

    pub fn get(&self, name: &str) -> Result<VmStatus, VmError> {
        self.lock()
            .get(name)
            .map(|e| self.status_of(e))
            .ok_or_else(|| VmError::NotFound(name.to_string()))
    }

    pub fn console(&self, name: &str) -> Result<Arc<Console>, VmError> {
        self.lock()
            .get(name)
            .map(|e| Arc::clone(&e.console))
            .ok_or_else(|| VmError::NotFound(name.to_string()))
    }

    /// Whether any VM definition, made or being made, uses this image.
    pub fn uses_image(&self, kind: ImageKind, name: &str) -> Option<String> {
        let uses = |spec: &VmSpec| match kind {
            ImageKind::Kernel => spec.kernel == name,
            ImageKind::Initrd => spec.initrd.as_deref() == Some(name),
            ImageKind::Disk => spec
                .disks
                .iter()
                .any(|d| d.copy == DiskCopy::Shared && d.image == name),
        };
        let entries = self.lock();
        let defining = self.defining();
        entries
            .values()
            .map(|e| &e.spec)
            .chain(defining.values())
            .find(|spec| uses(spec))
            .map(|spec| spec.name.clone())
    }

    /// Pids and names of the running VMMs.
    pub fn running(&self) -> Vec<(String, u32)> {
        self.lock()
            .values()
            .filter_map(|e| e.run.as_ref().map(|r| (e.spec.name.clone(), r.pid)))
            .collect()
    }

    pub fn define(&self, spec: VmSpec) -> Result<VmStatus, VmError> {
        validate(&spec)?;
        {
            let entries = self.lock();
            let mut defining = self.defining();
            if entries.contains_key(&spec.name) || defining.contains_key(&spec.name) {
                return Err(VmError::Exists(spec.name));
            }
            defining.insert(spec.name.clone(), spec.clone());
        }
        let written = self.write_definition(&spec);
        let mut entries = self.lock();
        self.defining().remove(&spec.name);
        written?;
        let console = self.console_of(&spec.name);
        let entry = Self::new_entry(spec, console);
        let status = entry.status();
        entries.insert(status.spec.name.clone(), entry);
        Ok(status)
    }

    /// The VM's private disk copies and its definition file; nothing of them on failure.
    fn write_definition(&self, spec: &VmSpec) -> Result<(), VmError> {
        let path = self.paths.defs.join(format!("{}.json", spec.name));
        let json = serde_json::to_vec_pretty(spec)
            .map_err(|e| VmError::Io("encode", path.clone(), io::Error::other(e)))?;
        vm_devices::make_copies(&self.store, &self.store.vm_copies(), spec)?;
        if let Err(e) = write_atomic(&path, &json, 0o600) {
            vm_devices::remove_copies(&self.store.vm_copies(), &spec.name);
            return Err(VmError::Io("write", path, e.source));
        }
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<VmStatus, VmError> {
        let mut entries = self.lock();
        let entry = entries
            .get(name)
            .ok_or_else(|| VmError::NotFound(name.to_string()))?;
        if let Some(run) = &entry.run {
            return Err(VmError::State {
                name: name.into(),
                state: run.state,
                op: "delete it (power it off first)",
            });
        }
        let path = self.paths.defs.join(format!("{name}.json"));
        remove_durable(&path).map_err(|e| VmError::Io("remove", path, e.source))?;
        let _ = fs::remove_dir_all(self.dir(name));
        vm_devices::remove_copies(&self.store.vm_copies(), name);
        let status = entry.status();
        entries.remove(name);
        Ok(status)
    }

    /// Starts a stopped VM and waits until its control socket answers.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<VmStatus, VmError> {
        let (generation, api_sock) = {
            let mut entries = self.lock();
            let uid = free_uid(&entries)?;
            let entry = entries
                .get(name)
                .ok_or_else(|| VmError::NotFound(name.to_string()))?;
            if let Some(run) = &entry.run {
                return Err(VmError::State {
                    name: name.into(),
                    state: run.state,
                    op: "start it",
                });
            }
            if let Some(conflict) = disk_conflict(&entries, &entry.spec) {
                return Err(conflict);
            }
            let entry = entries
                .get_mut(name)
                .ok_or_else(|| VmError::NotFound(name.to_string()))?;
            entry.stopping = false;
            self.spawn(entry, uid)?
        };
        let deadline = Instant::now() + START_WAIT;
        while Instant::now() < deadline {
            let status = self.get(name)?;
            let current = self.lock().get(name).map(|e| e.generation);
            if status.state == VmState::Stopped || current != Some(generation) {
                let reason = status
                    .last_exit
                    .map_or_else(|| "unknown".into(), |e| e.reason);
                let log = tail(&self.dir(name).join("vmm.log"));
                return Err(VmError::StartFailed {
                    name: name.into(),
                    reason,
                    log,
                });
            }
            if launch::connect(&api_sock).is_ok() {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.get(name)
    }

    /// Launches keel-vmm for `entry` (locked by the caller) as jail uid `uid`; returns the run's
    /// generation and control socket.
    fn spawn(self: &Arc<Self>, entry: &mut Entry, uid: u32) -> Result<(u64, PathBuf), VmError> {
        let spec = &entry.spec;
        let kernel = self.store.path(ImageKind::Kernel, &spec.kernel)?;
        let initrd = match &spec.initrd {
            Some(name) => Some(self.store.path(ImageKind::Initrd, name)?),
            None => None,
        };
        let devices = vm_devices::vmm_config(&self.store, &self.store.vm_copies(), spec)?;
        let dir = self.dir(&spec.name);
        let run = VmRun {
            name: &spec.name,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: &kernel,
            initrd: initrd.as_deref(),
            cmdline: &spec.cmdline,
            devices: &devices,
            dir: &dir,
            uid,
        };
        let Launched {
            mut process,
            api_sock,
            console_sock,
            jail,
        } = launch::launch(self.paths.jail.as_ref(), &self.paths.vmm, &run)?;
        let pid = process.pid();
        let pid_path = dir.join("pid");
        if let Err(e) = fs::write(&pid_path, format!("{pid}\n")) {
            process.kill();
            if let Some(jailer) = &self.paths.jail {
                let taps = launch::tap_names(&spec.name, spec.nics.len());
                launch::finish(jailer, &spec.name, &taps);
            }
            return Err(VmError::Io("write", pid_path, e));
        }
        entry.generation += 1;
        let generation = entry.generation;
        entry.run = Some(Run {
            pid,
            state: VmState::Running,
        });
        entry.jail = jail;
        entry.console.attach(console_sock, START_WAIT);
        let name = spec.name.clone();
        let vms = Arc::clone(self);
        let _ = thread::Builder::new()
            .name("keel-vm-watch".into())
            .spawn(move || {
                let exit = match process.wait() {
                    Ok(status) => exit_reason(status),
                    Err(e) => (None, format!("cannot wait for keel-vmm: {e}"), true),
                };
                vms.exited(&name, generation, exit);
            });
        Ok((generation, api_sock))
    }

    /// Watches a keel-vmm that is not the agent's child (taken back after a restart): its exit
    /// status goes to PID 1, so only the fact that it ended is known here.
    fn watch_pid(self: &Arc<Self>, name: String, generation: u64, pid: u32) {
        let vms = Arc::clone(self);
        let _ = thread::Builder::new()
            .name("keel-vm-watch".into())
            .spawn(move || {
                wait_pid_gone(pid);
                let log = fs::read(vms.dir(&name).join("vmm.log")).unwrap_or_default();
                let exit = match launch::logged_exit(&String::from_utf8_lossy(&log)) {
                    (Some(code), _) => exit_reason(ExitStatus::from_raw(code << 8)),
                    (None, last) => (
                        None,
                        format!(
                            "ended while not the agent's child; status unknown{}",
                            last.map_or(String::new(), |l| format!(" (vmm.log ends: {l})"))
                        ),
                        false,
                    ),
                };
                vms.exited(&name, generation, exit);
            });
    }

    /// Records the end of a run (and removes its jail, keeping its final limit counters), and
    /// restarts the VM when its policy says so.
    fn exited(self: &Arc<Self>, name: &str, generation: u64, exit: (Option<i32>, String, bool)) {
        let (code, mut reason, crash) = exit;
        // Only the current run's jail (and taps) are this run's to remove.
        let taps = self.lock().get(name).and_then(|e| {
            (e.generation == generation).then(|| launch::tap_names(name, e.spec.nics.len()))
        });
        let events = self
            .paths
            .jail
            .as_ref()
            .zip(taps)
            .and_then(|(jailer, taps)| launch::finish(jailer, name, &taps));
        if events.is_some_and(|e| e.oom_kill > 0) {
            reason.push_str(" (OOM-killed at its cgroup memory limit)");
        }
        let restart_after = {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(name) else {
                return;
            };
            if entry.generation != generation {
                return;
            }
            if let (Some(jail), Some(events)) = (entry.jail.as_mut(), events) {
                if let Some(line) = launch::limit_report(name, &jail.events, &events) {
                    log::warn!("{line}");
                }
                jail.events = events;
            }
            entry.run = None;
            entry.console.close_followers();
            let _ = fs::remove_file(self.dir(name).join("pid"));
            log::info!("keel-agent: VM {name} stopped: {reason}");
            entry.last_exit = Some(VmExit {
                code,
                reason,
                at: now_unix(),
            });
            let reboot = code.and_then(ExitReason::from_code) == Some(ExitReason::GuestReboot);
            let wanted = reboot || (crash && entry.spec.on_crash == OnCrash::Restart);
            if entry.stopping || !wanted {
                None
            } else {
                let wait = if reboot {
                    Duration::ZERO
                } else {
                    entry.backoff
                };
                entry.backoff = (entry.backoff * 2).min(MAX_BACKOFF);
                Some(wait)
            }
        };
        if let Some(wait) = restart_after {
            thread::sleep(wait);
            let mut entries = self.lock();
            let uid = free_uid(&entries);
            if let Some(entry) = entries.get_mut(name) {
                if entry.run.is_none() && !entry.stopping && entry.generation == generation {
                    entry.restarts += 1;
                    if let Err(e) = uid.and_then(|uid| self.spawn(entry, uid)) {
                        log::error!("keel-agent: cannot restart VM {name}: {e}");
                    }
                }
            }
        }
    }

    /// Sends a control request to a running VM and records the state it leads to.
    pub fn control(&self, name: &str, op: Op) -> Result<VmStatus, VmError> {
        let (path, next, label) = match op {
            Op::Shutdown => ("/vm/shutdown", VmState::ShuttingDown, "shutdown"),
            Op::PowerOff => ("/vm/power-off", VmState::ShuttingDown, "power-off"),
            Op::Pause => ("/vm/pause", VmState::Paused, "pause"),
            Op::Resume => ("/vm/resume", VmState::Running, "resume"),
        };
        {
            let mut entries = self.lock();
            let entry = entries
                .get_mut(name)
                .ok_or_else(|| VmError::NotFound(name.to_string()))?;
            if entry.run.is_none() {
                return Err(VmError::State {
                    name: name.into(),
                    state: VmState::Stopped,
                    op: label,
                });
            }
            if matches!(op, Op::Shutdown | Op::PowerOff) {
                entry.stopping = true;
            }
        }
        let (sock, _) = launch::sockets(&self.dir(name));
        let response = vmm_call(&sock, "PUT", path).map_err(|e| VmError::Refused {
            name: name.into(),
            op: label,
            message: e.to_string(),
        })?;
        if !(200..300).contains(&response.status) {
            let message = response
                .json_body::<http::ErrorBody>()
                .map_or_else(|_| format!("status {}", response.status), |b| b.error);
            return Err(VmError::Refused {
                name: name.into(),
                op: label,
                message,
            });
        }
        let mut entries = self.lock();
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| VmError::NotFound(name.to_string()))?;
        if let Some(run) = entry.run.as_mut() {
            run.state = next;
        }
        Ok(entry.status())
    }
}

impl Vms {
    /// Stops every running VM for a host shutdown: presses each power button, waits up to
    /// `grace` for the guests to power off, then powers off the rest. Returns how many needed the
    /// power-off.
    pub fn stop_all(&self, grace: Duration) -> usize {
        let names =
            |vms: &Self| -> Vec<String> { vms.running().into_iter().map(|(n, _)| n).collect() };
        for name in names(self) {
            let _ = self.control(&name, Op::Shutdown);
        }
        let deadline = Instant::now() + grace;
        while !self.running().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let stragglers = names(self);
        for name in &stragglers {
            let _ = self.control(name, Op::PowerOff);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.running().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        stragglers.len()
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

/// The lowest jail uid no running VM holds.
fn free_uid(entries: &BTreeMap<String, Entry>) -> Result<u32, VmError> {
    launch::free_uid(entries.values().filter_map(Entry::uid)).ok_or(VmError::NoUid)
}

/// Reads every running jail's cgroup events and logs the limits a VM hit since the last look;
/// ends with the agent's VMs.
fn monitor_limits(vms: Weak<Vms>) {
    loop {
        thread::sleep(LIMITS_POLL);
        let Some(vms) = vms.upgrade() else {
            return;
        };
        let Some(jailer) = &vms.paths.jail else {
            return;
        };
        let mut entries = vms.lock();
        for (name, entry) in entries.iter_mut() {
            let Some(jail) = entry.jail.as_mut().filter(|_| entry.run.is_some()) else {
                continue;
            };
            let Ok(events) = jailer.cgroup_events(name) else {
                continue;
            };
            if let Some(line) = launch::limit_report(name, &jail.events, &events) {
                log::warn!("{line}");
            }
            jail.events = events;
        }
    }
}

/// One request to keel-vmm's control socket (never through a symlink in its place).
pub fn vmm_call(sock: &Path, method: &str, path: &str) -> Result<Response, http::HttpError> {
    let mut stream = launch::connect(sock)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    http::write_request(&mut stream, method, path, "localhost", None)?;
    http::read_response(&mut stream, &Limits::default())
}

/// Blocks until process `pid` is gone (pidfd where available, else polling /proc).
fn wait_pid_gone(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if let Ok(fd) = i32::try_from(fd) {
        if fd >= 0 {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd; fd is ours and closed below.
            while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {}
            // SAFETY: fd came from pidfd_open and is closed once.
            unsafe { libc::close(fd) };
            return;
        }
    }
    while Path::new(&format!("/proc/{pid}")).exists() {
        thread::sleep(Duration::from_millis(200));
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    let joined = lines.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if joined.is_empty() {
        "(empty)".into()
    } else {
        joined
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::api::StoreKind;
    use super::super::atomic::testdir::TestDir;
    use super::*;

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            vcpus: 1,
            memory_mib: 64,
            kernel: "k".into(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            on_crash: OnCrash::Stop,
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }

    fn open(dir: &TestDir, vmm: &str) -> Arc<Vms> {
        let store = Arc::new(Store::open(dir.path().join("data"), StoreKind::Ram).unwrap());
        let paths = VmPaths {
            vmm: vmm.into(),
            defs: dir.path().join("vms"),
            run: dir.path().join("run"),
            jail: None,
        };
        Vms::open(paths, store).unwrap()
    }

    /// A shared (not copied) disk.
    fn disk(image: &str, read_only: bool) -> super::super::api::VmDisk {
        super::super::api::VmDisk {
            image: image.into(),
            copy: DiskCopy::Shared,
            read_only,
            serial: None,
        }
    }

    #[test]
    fn a_writable_disk_belongs_to_one_running_vm() {
        let running = |name: &str, disks: Vec<super::super::api::VmDisk>| {
            let mut e = Vms::new_entry(
                VmSpec {
                    disks,
                    ..spec(name)
                },
                Console::default(),
            );
            e.run = Some(Run {
                pid: 1,
                state: VmState::Running,
            });
            (name.to_string(), e)
        };
        let entries: BTreeMap<String, Entry> = [
            running("a", vec![disk("shared", true), disk("own", false)]),
            running("b", vec![disk("base", true)]),
        ]
        .into_iter()
        .collect();
        let cases = [
            (vec![disk("shared", true), disk("base", true)], None),
            (
                vec![disk("shared", false)],
                Some("\"shared\" is in use by running VM \"a\""),
            ),
            (
                vec![disk("own", true)],
                Some("\"own\" is in use by running VM \"a\""),
            ),
            (
                vec![disk("base", false)],
                Some("\"base\" is in use by running VM \"b\""),
            ),
            (vec![disk("other", false)], None),
            // A private copy of an image another VM writes is the VM's own.
            (
                vec![super::super::api::VmDisk {
                    copy: DiskCopy::Copy,
                    ..disk("own", false)
                }],
                None,
            ),
        ];
        for (disks, want) in cases {
            let mine = VmSpec {
                disks: disks.clone(),
                ..spec("c")
            };
            let got = disk_conflict(&entries, &mine).map(|e| e.to_string());
            match want {
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{disks:?}: {got:?}"
                ),
                None => assert_eq!(got, None, "{disks:?}"),
            }
        }
        // A VM's own run is no conflict (a restart).
        let again = VmSpec {
            disks: vec![disk("own", false)],
            ..spec("a")
        };
        assert!(disk_conflict(&entries, &again).is_none());
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cases: Vec<(VmSpec, &str)> = vec![
            (
                VmSpec {
                    name: "Bad".into(),
                    ..spec("a")
                },
                "name \"Bad\"",
            ),
            (
                VmSpec {
                    vcpus: 0,
                    ..spec("a")
                },
                "vcpus 0",
            ),
            (
                VmSpec {
                    memory_mib: 8,
                    ..spec("a")
                },
                "memory_mib 8",
            ),
            (
                VmSpec {
                    cmdline: "a\nb".into(),
                    ..spec("a")
                },
                "cmdline",
            ),
            (
                VmSpec {
                    kernel: "../k".into(),
                    ..spec("a")
                },
                "\"../k\"",
            ),
        ];
        for (s, want) in cases {
            let err = validate(&s).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(want), "{err}");
        }
        assert!(validate(&spec("web-1")).is_ok());
    }

    #[test]
    fn definitions_persist_and_delete() {
        let dir = TestDir::new("vms-defs");
        let vms = open(&dir, "/bin/false");
        vms.define(spec("a")).unwrap();
        assert_eq!(vms.define(spec("a")).unwrap_err().status(), 409);
        drop(vms);
        let vms = open(&dir, "/bin/false");
        let list = vms.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, VmState::Stopped);
        assert_eq!(vms.control("a", Op::Pause).unwrap_err().status(), 409);
        assert_eq!(vms.get("b").unwrap_err().status(), 404);
        vms.delete("a").unwrap();
        assert!(open(&dir, "/bin/false").list().is_empty());
    }

    #[test]
    fn a_vm_being_defined_holds_its_name_and_images_but_not_the_table() {
        let dir = TestDir::new("vms-defining");
        let vms = open(&dir, "/bin/false");
        // As while "b"'s disk copies are made: the table is free, the name and kernel taken.
        vms.defining().insert("b".into(), spec("b"));
        assert!(vms.list().is_empty());
        assert_eq!(vms.define(spec("b")).unwrap_err().status(), 409);
        assert_eq!(vms.uses_image(ImageKind::Kernel, "k").as_deref(), Some("b"));
        vms.define(spec("a")).unwrap();
        vms.defining().clear();
        vms.define(spec("b")).unwrap();
        assert_eq!(vms.list().len(), 2);
        assert!(vms.defining().is_empty());
    }

    #[test]
    fn start_needs_its_images_and_reports_a_vmm_that_dies() {
        let dir = TestDir::new("vms-start");
        // `false` stands in for a keel-vmm that refuses its configuration at once.
        let vms = open(&dir, "/bin/false");
        vms.define(spec("a")).unwrap();
        let err = vms.start("a").unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        assert!(
            err.to_string().contains("No kernel image named \"k\""),
            "{err}"
        );
        let data = b"k";
        let digest = super::super::images::hex(&<sha2::Sha256 as sha2::Digest>::digest(data));
        vms.store
            .upload(ImageKind::Kernel, "k", &digest, 1, &mut &data[..])
            .unwrap();
        let err = vms.start("a").unwrap_err();
        assert_eq!(err.status(), 422, "{err}");
        assert!(err.to_string().contains("keel-vmm failed"), "{err}");
        let status = vms.get("a").unwrap();
        assert_eq!(status.state, VmState::Stopped);
        assert_eq!(status.last_exit.unwrap().code, Some(1));
    }

    #[test]
    fn a_crashing_vm_with_the_restart_policy_is_restarted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TestDir::new("vms-restart");
        // Stands in for a keel-vmm whose guest triple-faults at once (exit status 4).
        let vmm = dir.path().join("crashing-vmm");
        fs::write(&vmm, "#!/bin/sh\nexit 4\n").unwrap();
        fs::set_permissions(&vmm, fs::Permissions::from_mode(0o755)).unwrap();
        let vms = open(&dir, vmm.to_str().unwrap());
        let data = b"k";
        let digest = super::super::images::hex(&<sha2::Sha256 as sha2::Digest>::digest(data));
        vms.store
            .upload(ImageKind::Kernel, "k", &digest, 1, &mut &data[..])
            .unwrap();
        vms.define(VmSpec {
            on_crash: OnCrash::Restart,
            ..spec("a")
        })
        .unwrap();
        vms.define(spec("b")).unwrap();
        assert!(vms.start("a").is_err());
        assert!(vms.start("b").is_err());
        let deadline = Instant::now() + Duration::from_secs(10);
        while vms.get("a").unwrap().restarts < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        let a = vms.get("a").unwrap();
        assert!(a.restarts >= 2, "{a:?}");
        assert_eq!(a.last_exit.unwrap().code, Some(4));
        // Without the policy a crash stays down.
        assert_eq!(vms.get("b").unwrap().restarts, 0);
        // Powering off or deleting needs it stopped; stop the restarts by deleting after a crash.
        vms.lock().get_mut("a").unwrap().stopping = true;
    }

    #[test]
    fn exit_statuses_are_explained() {
        let cases = [
            (0, Some(0), false, "powered off"),
            (3 << 8, Some(3), false, "rebooted"),
            (4 << 8, Some(4), true, "triple"),
            (6 << 8, Some(6), false, "by the host"),
            (9, None, true, "signal 9"),
        ];
        for (raw, code, crash, text) in cases {
            let (c, reason, k) = exit_reason(ExitStatus::from_raw(raw));
            assert_eq!((c, k), (code, crash), "{raw}");
            assert!(reason.contains(text), "{reason}");
        }
    }
}
