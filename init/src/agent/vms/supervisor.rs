//! The supervisor: a start on a thread of its own, the watch over each keel-vmm, what its exit
//! means, restarts by policy with back-off, and taking back the VMs still running after an
//! agent restart.

use super::{stopped_entry, vmm_call, Entry, Run, VmError, Vms, START_WAIT};
use crate::agent::api::{DiskCopy, ImageKind, OnCrash, VmExit, VmSpec, VmState, VmStatus};
use crate::agent::launch::{self, Launched, Process, VmRun};
use crate::agent::vm_devices::{self, VmDevices};
use crate::jail::CgroupLimits;
use keel_api::vmm::{self, ExitReason};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a start looks for keel-vmm's control socket (and for an early exit).
const START_POLL: Duration = Duration::from_millis(50);
/// Restarts after crashes back off from 1 s, doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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

/// A start accepted under the table's lock, for the start thread to carry out without it.
struct Pending {
    spec: VmSpec,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    devices: VmDevices,
    uid: u32,
    generation: u64,
    /// When the start was accepted, for the log's timings.
    accepted: Instant,
}

impl Vms {
    /// A stored definition, and its keel-vmm if one still runs.
    pub(super) fn adopt_definition(self: &Arc<Self>, spec: VmSpec) {
        let name = spec.name.clone();
        let console = self.console_of(&spec.name);
        let mut entry = Self::new_entry(spec, console);
        if let Some((pid, state)) = self.find_running(&name) {
            entry.generation = 1;
            if let Some(jailer) = &self.paths.jail {
                let limits = CgroupLimits::for_vm(entry.spec.memory_mib, entry.spec.vcpus.into());
                entry.jail = launch::process_uid(pid)
                    .filter(|uid| launch::is_vm_uid(*uid))
                    .map(|uid| launch::jail_info(jailer, &name, uid, &limits));
            }
            entry.run = Some(Run {
                pid: Some(pid),
                state,
                uid: entry.jail.as_ref().map(|j| j.uid),
            });
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

    /// Accepts the start of a stopped VM and answers at once with it `starting`: a thread of its
    /// own launches keel-vmm and waits for its control socket (see [`Vms::run_start`]). What
    /// can be checked at once (the VM, its state, its images, a disk in use, a free jail uid) is
    /// an error here; what fails later is in the VM's status (`error`).
    pub fn start(self: &Arc<Self>, name: &str) -> Result<VmStatus, VmError> {
        let (pending, status) = {
            let mut entries = self.lock();
            let pending = self.accept_start(&mut entries, name)?;
            let status = entries.get(name).map(Entry::status);
            (pending, status)
        };
        let status = status.ok_or_else(|| VmError::NotFound(name.to_string()))?;
        self.spawn_start(pending)?;
        Ok(status)
    }

    /// Runs an accepted start on a thread of its own.
    fn spawn_start(self: &Arc<Self>, pending: Pending) -> Result<(), VmError> {
        let (name, generation) = (pending.spec.name.clone(), pending.generation);
        let vms = Arc::clone(self);
        let started = thread::Builder::new()
            .name("keel-vm-start".into())
            .spawn(move || vms.run_start(pending));
        started.map(drop).map_err(|e| {
            let error = VmError::Thread(name.clone(), e);
            self.start_failed(&name, generation, &error);
            error
        })
    }

    /// Checks VM `name` can start and marks it `starting` (under the table's lock, held by the
    /// caller): a new generation, a jail uid taken, its images resolved.
    fn accept_start(
        &self,
        entries: &mut BTreeMap<String, Entry>,
        name: &str,
    ) -> Result<Pending, VmError> {
        let uid = free_uid(entries)?;
        let entry = stopped_entry(entries, name, "start it")?;
        if let Some(conflict) = disk_conflict(entries, &entry.spec) {
            return Err(conflict);
        }
        let spec = entry.spec.clone();
        let kernel = self.store.path(ImageKind::Kernel, &spec.kernel)?;
        let initrd = match &spec.initrd {
            Some(name) => Some(self.store.path(ImageKind::Initrd, name)?),
            None => None,
        };
        let devices = vm_devices::vmm_config(&self.store, &self.store.vm_copies(), &spec)?;
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| VmError::NotFound(name.to_string()))?;
        entry.generation += 1;
        entry.stopping = false;
        entry.error = None;
        entry.run = Some(Run {
            pid: None,
            state: VmState::Starting,
            uid: Some(uid),
        });
        Ok(Pending {
            spec,
            kernel,
            initrd,
            devices,
            uid,
            generation: entry.generation,
            accepted: Instant::now(),
        })
    }

    /// Carries out an accepted start, without the table's lock: launches keel-vmm (jail, taps,
    /// cgroup), then waits for its control socket while watching for an early exit, a
    /// power-off and the deadline. Ends with the VM `running`, or stopped with `error` set.
    fn run_start(self: &Arc<Self>, pending: Pending) {
        let Pending {
            spec,
            kernel,
            initrd,
            devices,
            uid,
            generation,
            accepted,
        } = pending;
        let name = spec.name.as_str();
        let dir = self.dir(name);
        let run = VmRun {
            name,
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
        } = match (self.starter.launch)(self.paths.jail.as_ref(), &self.paths.vmm, &run) {
            Ok(launched) => launched,
            Err(e) => return self.start_failed(name, generation, &e),
        };
        let pid = process.pid();
        let launched = accepted.elapsed();
        let console = {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(name).filter(|e| e.starting(generation)) else {
                // Nothing else ends a start; should it happen, the process is nobody's.
                drop(entries);
                process.kill();
                return;
            };
            if let Some(run) = entry.run.as_mut() {
                run.pid = Some(pid);
            }
            entry.jail = jail;
            Arc::clone(&entry.console)
        };
        let pid_path = dir.join("pid");
        if let Err(e) = fs::write(&pid_path, format!("{pid}\n")) {
            let error = VmError::Io("write", pid_path, e);
            return self.abort_start(name, generation, &mut process, &error);
        }
        console.attach(console_sock, self.starter.wait);
        let deadline = Instant::now() + self.starter.wait;
        loop {
            match process.try_wait() {
                Ok(Some(status)) => return self.exited(name, generation, exit_reason(status)),
                Ok(None) => {}
                Err(e) => {
                    let exit = (None, format!("cannot wait for keel-vmm: {e}"), true);
                    return self.exited(name, generation, exit);
                }
            }
            let stopping = self.lock().get(name).is_none_or(|e| e.stopping);
            if stopping {
                let error = VmError::StartAborted(name.into());
                return self.abort_start(name, generation, &mut process, &error);
            }
            if Instant::now() >= deadline {
                let error = VmError::StartTimeout {
                    name: name.into(),
                    secs: self.starter.wait.as_secs(),
                    log: tail(&dir.join("vmm.log")),
                };
                return self.abort_start(name, generation, &mut process, &error);
            }
            if launch::connect(&api_sock).is_ok() {
                break;
            }
            thread::sleep(START_POLL);
        }
        {
            let mut entries = self.lock();
            if let Some(run) = entries
                .get_mut(name)
                .filter(|e| e.generation == generation)
                .and_then(|e| e.run.as_mut())
            {
                run.state = VmState::Running;
            }
        }
        log::info!(
            "keel-agent: VM {name} running (keel-vmm pid {pid}): launched {:.1} s and answering {:.1} s after its start",
            launched.as_secs_f32(),
            accepted.elapsed().as_secs_f32()
        );
        self.watch(name.to_string(), generation, process);
    }

    /// Ends a start whose keel-vmm runs but must not go on: records `error`, kills and reaps the
    /// process (still the start thread's own, so no other process can be hit), then its end.
    fn abort_start(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        process: &mut Process,
        error: &VmError,
    ) {
        if let Some(entry) = self
            .lock()
            .get_mut(name)
            .filter(|e| e.generation == generation)
        {
            entry.stopping = true;
            entry.error.get_or_insert_with(|| error.to_string());
        }
        process.kill();
        let exit = (None, format!("killed at start: {error}"), false);
        self.exited(name, generation, exit);
    }

    /// Records a start that failed before keel-vmm ran (nothing of it is left to clean up).
    fn start_failed(&self, name: &str, generation: u64, error: &VmError) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(name).filter(|e| e.generation == generation) else {
            return;
        };
        if entry.run.as_ref().is_some_and(|r| r.pid.is_none()) {
            entry.run = None;
        }
        let message = error.to_string();
        log::error!("keel-agent: VM {name} did not start: {message}");
        entry.error.get_or_insert(message);
    }

    /// Waits for a running keel-vmm (the agent's child) on a thread and records its end.
    fn watch(self: &Arc<Self>, name: String, generation: u64, mut process: Process) {
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
        let (taps, starting) = {
            let entries = self.lock();
            let current = entries.get(name).filter(|e| e.generation == generation);
            (
                current.map(|e| launch::tap_names(name, e.spec.nics.len())),
                current.is_some_and(|e| e.starting(generation)),
            )
        };
        // A run that ends before it answered is a failed start: its log says why.
        let log = starting.then(|| tail(&self.dir(name).join("vmm.log")));
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
            if let Some(log) = log.filter(|_| entry.starting(generation)) {
                let failed = VmError::StartFailed {
                    name: name.into(),
                    reason: reason.clone(),
                    log,
                };
                entry.error.get_or_insert_with(|| failed.to_string());
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
            let pending = {
                let mut entries = self.lock();
                let again = entries
                    .get_mut(name)
                    .filter(|e| e.run.is_none() && !e.stopping && e.generation == generation);
                let Some(entry) = again else {
                    return;
                };
                entry.restarts += 1;
                self.accept_start(&mut entries, name).inspect_err(|e| {
                    if let Some(entry) = entries.get_mut(name) {
                        entry.error = Some(e.to_string());
                    }
                })
            };
            // On a thread of its own: a VM that keeps crashing is no deeper a call each time.
            if let Err(e) = pending.and_then(|p| self.spawn_start(p)) {
                log::error!("keel-agent: cannot restart VM {name}: {e}");
            }
        }
    }
}

/// The lowest jail uid no running VM holds.
fn free_uid(entries: &BTreeMap<String, Entry>) -> Result<u32, VmError> {
    launch::free_uid(entries.values().filter_map(Entry::uid)).ok_or(VmError::NoUid)
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
    use super::*;
    use crate::agent::vm_console::VmConsole;
    use crate::agent::vms::test_support::*;
    use crate::agent::vms::{Op, Starter};
    use crate::jail::Jailer;
    use crate::sys::atomic::testdir::TestDir;

    #[test]
    fn a_writable_disk_belongs_to_one_running_vm() {
        let running = |name: &str, disks: Vec<crate::agent::api::VmDisk>| {
            let mut e = Vms::new_entry(
                VmSpec {
                    disks,
                    ..spec(name)
                },
                VmConsole::default(),
            );
            e.run = Some(Run {
                pid: Some(1),
                state: VmState::Running,
                uid: None,
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
                vec![crate::agent::api::VmDisk {
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
        kernel(&vms);
        // Accepted at once; the VMM's end before it answered is a failed start in the status.
        assert_eq!(vms.start("a").unwrap().state, VmState::Starting);
        let status = wait_for(&vms, "a", |s| s.state == VmState::Stopped);
        assert_eq!(status.state, VmState::Stopped, "{status:?}");
        let error = status.error.unwrap_or_default();
        assert!(
            error.contains("exited at start: keel-vmm failed"),
            "{error}"
        );
        assert!(
            error.contains("its log: keel-agent: keel-vmm starting"),
            "{error}"
        );
        assert_eq!(status.last_exit.unwrap().code, Some(1));
    }

    #[test]
    fn a_crashing_vm_with_the_restart_policy_is_restarted() {
        let dir = TestDir::new("vms-restart");
        // Stands in for a keel-vmm whose guest triple-faults at once (exit status 4).
        let vms = open(&dir, &script(&dir, "exit 4"));
        kernel(&vms);
        vms.define(VmSpec {
            on_crash: OnCrash::Restart,
            ..spec("a")
        })
        .unwrap();
        vms.define(spec("b")).unwrap();
        vms.start("a").unwrap();
        vms.start("b").unwrap();
        let a = wait_for(&vms, "a", |s| s.restarts >= 2);
        assert!(a.restarts >= 2, "{a:?}");
        assert_eq!(a.last_exit.unwrap().code, Some(4));
        // Without the policy a crash stays down.
        let b = wait_for(&vms, "b", |s| s.state == VmState::Stopped);
        assert_eq!((b.state, b.restarts), (VmState::Stopped, 0), "{b:?}");
        assert!(b.error.unwrap_or_default().contains("triple-faulted"));
        // Powering off or deleting needs it stopped; stop the restarts by deleting after a crash.
        vms.lock().get_mut("a").unwrap().stopping = true;
    }

    #[test]
    fn a_start_answers_at_once_and_runs_once_the_vmm_answers() {
        let dir = TestDir::new("vms-starting");
        // A keel-vmm that never opens its control socket: the test opens it in its place.
        let vms = open(&dir, &script(&dir, "exec sleep 30"));
        kernel(&vms);
        vms.define(spec("a")).unwrap();
        let accepted = vms.start("a").unwrap();
        assert_eq!((accepted.state, accepted.error), (VmState::Starting, None));
        let starting = wait_for(&vms, "a", |s| s.pid.is_some());
        assert_eq!(starting.state, VmState::Starting);
        // While it starts: another start, a delete, a pause or a shutdown are refused.
        let refused = vms.start("a").unwrap_err();
        assert_eq!(refused.status(), 409);
        assert!(refused.to_string().contains("Starting"), "{refused}");
        assert_eq!(vms.delete("a").unwrap_err().status(), 409);
        assert_eq!(vms.control("a", Op::Pause).unwrap_err().status(), 409);
        assert_eq!(vms.control("a", Op::Shutdown).unwrap_err().status(), 409);
        let (api_sock, _) = launch::sockets(&vms.dir("a"));
        let _listener = std::os::unix::net::UnixListener::bind(&api_sock).unwrap();
        let running = wait_for(&vms, "a", |s| s.state == VmState::Running);
        assert_eq!(running.state, VmState::Running, "{running:?}");
        assert_eq!(running.pid, starting.pid);
        // Its end once running is no failed start.
        // SAFETY: kill has no memory effects; the pid is the stand-in's, not yet reaped.
        unsafe { libc::kill(running.pid.unwrap() as libc::pid_t, libc::SIGKILL) };
        let ended = wait_for(&vms, "a", |s| s.state == VmState::Stopped);
        assert_eq!((ended.state, ended.error), (VmState::Stopped, None));
        assert!(ended.last_exit.unwrap().reason.contains("signal 9"));
    }

    /// Holds every launch of `slow_launch` until cleared.
    static HOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

    fn slow_launch(jail: Option<&Jailer>, vmm: &Path, run: &VmRun) -> Result<Launched, VmError> {
        while HOLD.load(std::sync::atomic::Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
        launch::launch(jail, vmm, run)
    }

    #[test]
    fn a_slow_launch_holds_up_no_other_call_and_can_be_powered_off() {
        let dir = TestDir::new("vms-slow-launch");
        let starter = Starter {
            launch: slow_launch,
            ..Starter::default()
        };
        let vms = open_with(&dir, &script(&dir, "exec sleep 30"), starter);
        kernel(&vms);
        vms.define(spec("a")).unwrap();
        let quick = Duration::from_secs(2);
        let t = Instant::now();
        assert_eq!(vms.start("a").unwrap().state, VmState::Starting);
        // The launch is held: every other call answers at once.
        for _ in 0..5 {
            assert_eq!(vms.get("a").unwrap().state, VmState::Starting);
            assert_eq!(vms.list().len(), 1);
            thread::sleep(Duration::from_millis(20));
        }
        vms.define(spec("b")).unwrap();
        vms.delete("b").unwrap();
        assert!(vms.running().is_empty(), "no keel-vmm yet");
        assert!(t.elapsed() < quick, "{:?}", t.elapsed());
        // A power-off while starting is accepted; the start thread stops it.
        let off = vms.control("a", Op::PowerOff).unwrap();
        assert_eq!(off.state, VmState::Starting);
        HOLD.store(false, std::sync::atomic::Ordering::SeqCst);
        let a = wait_for(&vms, "a", |s| s.state == VmState::Stopped);
        assert_eq!(a.state, VmState::Stopped, "{a:?}");
        let error = a.error.unwrap_or_default();
        assert!(error.contains("powered off while starting"), "{error}");
        assert!(a.last_exit.unwrap().reason.contains("killed at start"));
        // It can start again: the error goes with the new start.
        assert_eq!(vms.start("a").unwrap().error, None);
        vms.control("a", Op::PowerOff).unwrap();
        wait_for(&vms, "a", |s| s.state == VmState::Stopped);
    }

    #[test]
    fn a_start_that_fails_after_the_answer_says_why_in_the_status() {
        let dir = TestDir::new("vms-start-fails");
        // Launching fails: no keel-vmm binary.
        let vms = open(&dir, "/nonexistent/keel-vmm");
        kernel(&vms);
        vms.define(spec("a")).unwrap();
        assert_eq!(vms.start("a").unwrap().state, VmState::Starting);
        let a = wait_for(&vms, "a", |s| s.state == VmState::Stopped);
        let error = a.error.unwrap_or_default();
        assert!(
            error.contains("Cannot start /nonexistent/keel-vmm"),
            "{error}"
        );
        assert_eq!(a.last_exit, None);
        // keel-vmm runs but never opens its control socket: killed at the deadline.
        let dir = TestDir::new("vms-start-late");
        let starter = Starter {
            wait: Duration::from_secs(1),
            ..Starter::default()
        };
        let vms = open_with(&dir, &script(&dir, "echo opening; exec sleep 30"), starter);
        kernel(&vms);
        vms.define(VmSpec {
            on_crash: OnCrash::Restart,
            ..spec("a")
        })
        .unwrap();
        vms.start("a").unwrap();
        let a = wait_for(&vms, "a", |s| s.state == VmState::Stopped);
        let error = a.error.unwrap_or_default();
        assert!(
            error.contains("did not open its control socket within 1 s"),
            "{error}"
        );
        assert!(error.contains("opening"), "{error}");
        // Not restarted by the policy: it is no crash.
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(vms.get("a").unwrap().restarts, 0);
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
