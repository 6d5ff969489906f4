//! The limit watcher: reads each running jail's cgroup events, logs the limits a VM hits and
//! keeps the counters its status shows.

use super::Vms;
use crate::agent::api::VmStatus;
use crate::agent::launch;
use std::sync::Weak;
use std::thread;
use std::time::Duration;

/// How often the monitor reads the jails' cgroup events.
const LIMITS_POLL: Duration = Duration::from_secs(2);

impl Vms {
    /// A VM's status (taken under the table's lock), with its jail's limit counters read now,
    /// after the lock, while it runs.
    pub(super) fn with_events(&self, mut status: VmStatus) -> VmStatus {
        if let (Some(jail), Some(jailer), Some(_)) =
            (status.jail.as_mut(), &self.paths.jail, status.pid)
        {
            if let Ok(events) = jailer.cgroup_events(&status.spec.name) {
                jail.events = events;
            }
        }
        status
    }
}

/// Reads every running jail's cgroup events and logs the limits a VM hit since the last look;
/// ends with the agent's VMs.
pub(super) fn monitor_limits(vms: Weak<Vms>) {
    loop {
        thread::sleep(LIMITS_POLL);
        let Some(vms) = vms.upgrade() else {
            return;
        };
        let Some(jailer) = &vms.paths.jail else {
            return;
        };
        // The cgroup files are read without the table's lock; the counters are kept with it.
        let jailed: Vec<(String, u64)> = vms
            .lock()
            .iter()
            .filter(|(_, e)| e.jail.is_some() && e.run.as_ref().is_some_and(|r| r.pid.is_some()))
            .map(|(name, e)| (name.clone(), e.generation))
            .collect();
        for (name, generation) in jailed {
            let Ok(events) = jailer.cgroup_events(&name) else {
                continue;
            };
            let mut entries = vms.lock();
            let current = entries
                .get_mut(&name)
                .filter(|e| e.generation == generation && e.run.is_some());
            let Some(jail) = current.and_then(|e| e.jail.as_mut()) else {
                continue;
            };
            if let Some(line) = launch::limit_report(&name, &jail.events, &events) {
                log::warn!("{line}");
            }
            jail.events = events;
        }
    }
}
