//! The agent's side of the console's local API (`localapi::ConsoleBackend`): the status from the
//! agent's identity, adoption and VMs; the management network through PID 1's network manager
//! (`net::status/preview/apply/confirm`), the form mapped by `netform`; the logs and network
//! tests from `localapi::Local`.

use std::sync::{Arc, OnceLock};

use super::netform::{change_of, form_of};
use super::server::Agent;
use crate::localapi::types::{
    Adoption, Applied, LogPage, NetworkForm, NetworkState, Pending, Preview, Status, TestKind,
    TestRequest, TestResult, VmSummary,
};
use crate::localapi::{ApiError, ConsoleBackend, Local};
use crate::net::{self, ApplyOptions, NetError, Refusal};

/// The console backend of the agent. It serves from the agent's start, before the host has an
/// address and the agent opens (`attach`), so that the operator can set up the network that
/// the agent waits for.
pub struct AgentConsole {
    agent: OnceLock<Arc<Agent>>,
    local: Local,
    /// The manager's `host:port` when known (`keel.manager=`): the network test connects to it
    /// and a network change is rolled back when it cannot be reached.
    manager_addr: Option<String>,
}

/// How a network manager error reaches the console.
fn net_error(e: NetError) -> ApiError {
    match e {
        NetError::NotRunning(_) => ApiError::Unavailable(e.to_string()),
        _ if e.refusal() == Refusal::Conflict => ApiError::Conflict(e.to_string()),
        other => ApiError::Failed(other.to_string()),
    }
}

impl AgentConsole {
    pub fn new(manager_addr: Option<String>) -> Self {
        Self {
            agent: OnceLock::new(),
            local: Local::new(),
            manager_addr,
        }
    }

    /// The agent, once it has opened; the status and the adoption need it.
    pub fn attach(&self, agent: Arc<Agent>) {
        let _ = self.agent.set(agent);
    }

    fn agent(&self) -> Result<&Agent, ApiError> {
        self.agent.get().map(AsRef::as_ref).ok_or_else(|| {
            ApiError::Unavailable(String::from(
                "The agent is waiting for an IPv4 address: set the network up on screen 2",
            ))
        })
    }

    /// Whether a manager owns the host (false before the agent opens).
    fn adopted(&self) -> bool {
        self.agent.get().is_some_and(|a| a.token().is_none())
    }

    fn adoption(&self, agent: &Agent) -> Adoption {
        match agent.token() {
            Some(token) => Adoption::NotAdopted { token },
            None => {
                let ca = agent
                    .manager_ca()
                    .map_or_else(|| String::from("unknown"), |f| f.to_string());
                let manager = match &self.manager_addr {
                    Some(addr) => format!("{addr} (CA {ca})"),
                    None => format!("CA {ca}"),
                };
                Adoption::Adopted { manager }
            }
        }
    }

    /// The manager to keep reachable through a network change: only once adopted.
    fn adopted_manager(&self) -> Option<&str> {
        self.manager_addr.as_deref().filter(|_| self.adopted())
    }

    /// The change a form asks for over the running configuration.
    fn change(&self, form: &NetworkForm) -> Result<net::NetConfig, ApiError> {
        let running = net::status().map_err(net_error)?;
        let nics: Vec<String> = self
            .local
            .facts()
            .nics
            .into_iter()
            .filter(|n| n.physical)
            .map(|n| n.name)
            .collect();
        change_of(form, &running.config, &nics).map_err(ApiError::Invalid)
    }
}

impl ConsoleBackend for AgentConsole {
    fn status(&self) -> Result<Status, ApiError> {
        let agent = self.agent()?;
        let vms = agent
            .vm_statuses()
            .into_iter()
            .map(|vm| VmSummary {
                state: serde_json::to_value(vm.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                name: vm.spec.name,
            })
            .collect();
        Ok(Status {
            facts: self.local.facts(),
            fingerprint: agent.fingerprint().to_string(),
            adoption: self.adoption(agent),
            vms,
        })
    }

    fn network(&self) -> Result<NetworkState, ApiError> {
        let status = net::status().map_err(net_error)?;
        let running = form_of(&status.config);
        Ok(NetworkState {
            pending: status.pending.map(|p| Pending {
                form: running.clone(),
                rollback_in_secs: u32::try_from(p.seconds_left).unwrap_or(u32::MAX),
            }),
            running,
            persistent: crate::state::status().dir().is_some(),
            nics: self.local.facts().nics,
        })
    }

    fn preview(&self, form: &NetworkForm) -> Result<Preview, ApiError> {
        let change = self.change(form)?;
        let changes = net::preview(&change).map_err(net_error)?;
        Ok(Preview { changes })
    }

    fn apply(&self, form: &NetworkForm) -> Result<Applied, ApiError> {
        // A change still pending is refused by the network manager as a conflict.
        let change = self.change(form)?;
        let options = ApplyOptions {
            manager: self.adopted_manager().map(String::from),
            ..ApplyOptions::default()
        };
        let applied = net::apply(&change, &options).map_err(net_error)?;
        Ok(Applied {
            rollback_in_secs: u32::try_from(applied.confirm_within_secs).unwrap_or(u32::MAX),
        })
    }

    fn confirm(&self) -> Result<(), ApiError> {
        // "Nothing pending" comes back over the control socket as a conflict refusal.
        net::confirm().map_err(net_error)
    }

    fn test(&self, request: &TestRequest) -> Result<TestResult, ApiError> {
        let unknown = self.adopted() && self.manager_addr.is_none();
        if request.kind == TestKind::ConnectManager && unknown {
            return Ok(TestResult {
                ok: false,
                detail: String::from(
                    "the manager's address is not known (keel.manager= is not set)",
                ),
            });
        }
        Ok(self.local.test(request, self.adopted_manager()))
    }

    fn logs(&self, after: Option<u64>) -> Result<LogPage, ApiError> {
        self.local.logs(after)
    }

    fn reset_adoption(&self) -> Result<Adoption, ApiError> {
        let agent = self.agent()?;
        agent
            .reset()
            .map_err(|e| ApiError::Failed(format!("Cannot reset the adoption: {e}")))?;
        Ok(self.adoption(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_errors_keep_their_meaning() {
        let cases = [
            (NetError::NotRunning("x".into()), "Unavailable"),
            (NetError::Pending(5), "Conflict"),
            (NetError::NothingPending, "Conflict"),
            (NetError::Refused(Refusal::Conflict, "x".into()), "Conflict"),
            (NetError::Remote("boom".into()), "Failed"),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            let got = net_error(e);
            assert!(format!("{got:?}").starts_with(want), "{text}: {got:?}");
            assert!(got.to_string().contains(&text), "{got}");
        }
    }
}
