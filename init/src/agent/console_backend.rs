//! The agent's side of the console's local API (`localapi::ConsoleBackend`): the status from the
//! agent's identity, adoption and VMs; the management network through PID 1's network service
//! (`net::status/preview/apply/confirm`), the form mapped by `netform`; the manager to register
//! with through `registration` (its CA found by `register::probe_ca`); the logs and network
//! tests from `localapi::Local`.

use std::sync::{Arc, OnceLock};

use super::api::{CreateStateRequest, RegistrationStatus};
use super::netform::{change_of, form_of};
use super::register::{self, ManagerUrl, SettingsError};
use super::registration::{ManagerChoice, Registration, SavedError};
use super::server::Agent;
use crate::localapi::types::{
    Adoption, Applied, FieldError, LogPage, ManagerCa, ManagerProbe, NetworkForm, NetworkState,
    Pending, Preview, StateView, Status, TestKind, TestRequest, TestResult, VmSummary,
};
use crate::localapi::{ApiError, ConsoleBackend, Local};
use crate::net::{self, ApplyOptions, NetError, Refusal};
use crate::state::Status as StateStatus;

/// The console backend of the agent. It serves from the agent's start, before the host has an
/// address and the agent opens (`attach`), so that the operator can set up the network that
/// the agent waits for.
pub struct AgentConsole {
    agent: OnceLock<Arc<Agent>>,
    /// The manager the host registers with; the network test connects to it and, once it
    /// adopted the host, a network change that loses it is rolled back.
    registration: OnceLock<Arc<Registration>>,
    local: Local,
}

/// The field of a manager choice a settings error is about.
fn choice_field(e: &SettingsError) -> &'static str {
    match e {
        SettingsError::Pin(_) | SettingsError::NoPin => "manager_ca",
        SettingsError::Url(_) | SettingsError::NoManager => "manager",
    }
}

/// How a network service error reaches the console.
fn net_error(e: NetError) -> ApiError {
    match e {
        NetError::NotRunning(_) => ApiError::Unavailable(e.to_string()),
        _ if e.refusal() == Refusal::Conflict => ApiError::Conflict(e.to_string()),
        other => ApiError::Failed(other.to_string()),
    }
}

impl Default for AgentConsole {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentConsole {
    pub fn new() -> Self {
        Self {
            agent: OnceLock::new(),
            registration: OnceLock::new(),
            local: Local::new(),
        }
    }

    /// The agent, once it has opened, and its registration; the status, the adoption and the
    /// Manager screen need them.
    pub fn attach(&self, agent: Arc<Agent>, registration: Option<Arc<Registration>>) {
        let _ = self.agent.set(agent);
        if let Some(registration) = registration {
            let _ = self.registration.set(registration);
        }
    }

    /// The manager's `host:port`, when one is named.
    fn manager_addr(&self) -> Option<String> {
        let (settings, _) = self.registration.get()?.settings()?;
        Some(settings.manager.endpoint())
    }

    fn registration_service(&self) -> Result<&Registration, ApiError> {
        self.agent()?;
        self.registration.get().map(AsRef::as_ref).ok_or_else(|| {
            ApiError::Unavailable(String::from(
                "Registration is not running (see the log for why)",
            ))
        })
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
                let manager = match self.manager_addr() {
                    Some(addr) => format!("{addr} (CA {ca})"),
                    None => format!("CA {ca}"),
                };
                Adoption::Adopted { manager }
            }
        }
    }

    /// The manager to keep reachable through a network change: only once adopted.
    fn adopted_manager(&self) -> Option<String> {
        self.manager_addr().filter(|_| self.adopted())
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
        // A change still pending is refused by the network service as a conflict.
        let change = self.change(form)?;
        let options = ApplyOptions {
            manager: self.adopted_manager(),
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
        let manager = self.manager_addr();
        if request.kind == TestKind::ConnectManager && self.adopted() && manager.is_none() {
            return Ok(TestResult {
                ok: false,
                detail: String::from(
                    "the manager's address is not known (name it on the Manager screen)",
                ),
            });
        }
        Ok(self.local.test(request, manager.as_deref()))
    }

    fn logs(&self, after: Option<u64>) -> Result<LogPage, ApiError> {
        self.local.logs(after)
    }

    fn registration(&self) -> Result<RegistrationStatus, ApiError> {
        Ok(self.agent()?.registration())
    }

    fn probe_manager(&self, probe: &ManagerProbe) -> Result<ManagerCa, ApiError> {
        let url: ManagerUrl = probe.manager.parse().map_err(|e: SettingsError| {
            ApiError::Invalid(vec![FieldError {
                field: "manager".into(),
                message: e.to_string(),
            }])
        })?;
        let ca = register::probe_ca(&url).map_err(ApiError::Failed)?;
        Ok(ManagerCa {
            manager_ca: ca.to_string(),
        })
    }

    fn choose_manager(&self, choice: &ManagerChoice) -> Result<RegistrationStatus, ApiError> {
        let registration = self.registration_service()?;
        registration.choose(choice).map_err(|e| match e {
            SavedError::Invalid(e) => ApiError::Invalid(vec![FieldError {
                field: choice_field(&e).into(),
                message: e.to_string(),
            }]),
            other => ApiError::Failed(other.to_string()),
        })?;
        Ok(self.agent()?.registration())
    }

    fn forget_manager(&self) -> Result<RegistrationStatus, ApiError> {
        self.registration_service()?
            .forget()
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        Ok(self.agent()?.registration())
    }

    fn state(&self) -> Result<StateView, ApiError> {
        Ok(StateView {
            status: crate::state::status(),
            disks: crate::state::disk_offers(),
        })
    }

    fn create_state(&self, request: &CreateStateRequest) -> Result<StateStatus, ApiError> {
        self.agent()?
            .create_state(request)
            .map_err(|e| match e.status() {
                409 => ApiError::Conflict(e.to_string()),
                400 | 404 => ApiError::Invalid(vec![FieldError {
                    field: "disk".into(),
                    message: e.to_string(),
                }]),
                _ => ApiError::Failed(e.to_string()),
            })
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
