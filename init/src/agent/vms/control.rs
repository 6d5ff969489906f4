//! The control calls to keel-vmm: shutdown, power-off, pause and resume of a running VM, and
//! stopping every VM for a host shutdown.

use super::{Op, VmError, Vms, VMM_CALL_TIMEOUT};
use crate::agent::api::{VmState, VmStatus};
use crate::agent::http::{self, Limits, Response};
use crate::agent::launch;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

impl Vms {
    /// Sends a control request to a running VM and records the state it leads to. The table's
    /// lock is not held while keel-vmm answers. A VM still starting can only be powered off: its
    /// start thread stops it (the status says `starting` until it has).
    pub fn control(&self, name: &str, op: Op) -> Result<VmStatus, VmError> {
        let (path, next, label) = match op {
            Op::Shutdown => ("/vm/shutdown", VmState::ShuttingDown, "shutdown"),
            Op::PowerOff => ("/vm/power-off", VmState::ShuttingDown, "power-off"),
            Op::Pause => ("/vm/pause", VmState::Paused, "pause"),
            Op::Resume => ("/vm/resume", VmState::Running, "resume"),
        };
        let generation = {
            let mut entries = self.lock();
            let entry = entries
                .get_mut(name)
                .ok_or_else(|| VmError::NotFound(name.to_string()))?;
            let state = entry.run.as_ref().map_or(VmState::Stopped, |r| r.state);
            if state == VmState::Starting && op == Op::PowerOff {
                entry.stopping = true;
                return Ok(entry.status());
            }
            if matches!(state, VmState::Stopped | VmState::Starting) {
                return Err(VmError::State {
                    name: name.into(),
                    state,
                    op: label,
                });
            }
            if matches!(op, Op::Shutdown | Op::PowerOff) {
                entry.stopping = true;
            }
            entry.generation
        };
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
        if let Some(run) = entry
            .run
            .as_mut()
            .filter(|_| entry.generation == generation)
        {
            run.state = next;
        }
        Ok(entry.status())
    }

    /// Stops every VM for a host shutdown: presses each power button (a VM still starting gets
    /// it once it runs), waits up to `grace` for the guests to power off, then powers off the
    /// rest (a start still under way is abandoned). Returns how many needed the power-off.
    pub fn stop_all(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut pressed = std::collections::BTreeSet::new();
        loop {
            let runs = self.runs();
            if runs.is_empty() || Instant::now() >= deadline {
                break;
            }
            for (name, state) in runs {
                let up = matches!(state, VmState::Running | VmState::Paused);
                if up && !pressed.contains(&name) {
                    let _ = self.control(&name, Op::Shutdown);
                    pressed.insert(name);
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        let stragglers: Vec<String> = self.runs().into_iter().map(|(n, _)| n).collect();
        for name in &stragglers {
            let _ = self.control(name, Op::PowerOff);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.runs().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        stragglers.len()
    }
}

/// One request to keel-vmm's control socket (never through a symlink in its place).
pub fn vmm_call(sock: &Path, method: &str, path: &str) -> Result<Response, http::HttpError> {
    let mut stream = launch::connect(sock)?;
    stream.set_read_timeout(Some(VMM_CALL_TIMEOUT))?;
    stream.set_write_timeout(Some(VMM_CALL_TIMEOUT))?;
    http::write_request(&mut stream, method, path, "localhost", None)?;
    http::read_response(&mut stream, &Limits::default())
}
