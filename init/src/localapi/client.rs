//! The console's end of the local API: one connection per request, each answer mapped back to
//! the `ApiError` the server started from.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{
    Adoption, Applied, Invalid, LogPage, ManagerCa, ManagerProbe, NetworkForm, NetworkState,
    Preview, ResetRequest, StateView, Status, TestRequest, TestResult,
};
use super::{ApiError, ConsoleBackend};
use crate::agent::api::{CreateStateRequest, RegistrationStatus};
use crate::agent::http::{self, ErrorBody, Limits};
use crate::agent::registration::ManagerChoice;
use crate::state::Status as StateStatus;

/// Longer than the slowest request: a network test (2 s) or an apply.
const TIMEOUT: Duration = Duration::from_secs(15);

/// A client of the console socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiError> {
        let place = self.path.display().to_string();
        let unreachable =
            |e: &dyn std::fmt::Display| ApiError::Unreachable(place.clone(), e.to_string());
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ApiError::Failed(format!("Cannot encode the request: {e}")))?;
        let mut stream = UnixStream::connect(&self.path).map_err(|e| unreachable(&e))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| unreachable(&e))?;
        http::write_request(&mut stream, method, target, "localhost", body.as_deref())
            .map_err(|e| unreachable(&e))?;
        let limits = Limits {
            max_body: 1024 * 1024,
            ..Limits::default()
        };
        let response = http::read_response(&mut stream, &limits).map_err(|e| unreachable(&e))?;
        let bad = |e: serde_json::Error| {
            ApiError::Failed(format!(
                "The agent sent an answer the console cannot read: {e}"
            ))
        };
        match response.status {
            200 => response.json_body().map_err(bad),
            422 => Err(ApiError::Invalid(
                response.json_body::<Invalid>().map_err(bad)?.errors,
            )),
            status => {
                let message = response
                    .json_body::<ErrorBody>()
                    .map(|b| b.error)
                    .unwrap_or_else(|_| format!("HTTP status {status}"));
                Err(match status {
                    409 => ApiError::Conflict(message),
                    503 => ApiError::Unavailable(message),
                    _ => ApiError::Failed(message),
                })
            }
        }
    }
}

const NO_BODY: Option<&()> = None;

impl ConsoleBackend for Client {
    fn status(&self) -> Result<Status, ApiError> {
        self.call("GET", "/status", NO_BODY)
    }
    fn network(&self) -> Result<NetworkState, ApiError> {
        self.call("GET", "/network", NO_BODY)
    }
    fn preview(&self, form: &NetworkForm) -> Result<Preview, ApiError> {
        self.call("POST", "/network/preview", Some(form))
    }
    fn apply(&self, form: &NetworkForm) -> Result<Applied, ApiError> {
        self.call("POST", "/network/apply", Some(form))
    }
    fn confirm(&self) -> Result<(), ApiError> {
        self.call::<serde_json::Value>("POST", "/network/confirm", NO_BODY)
            .map(drop)
    }
    fn test(&self, request: &TestRequest) -> Result<TestResult, ApiError> {
        self.call("POST", "/network/test", Some(request))
    }
    fn logs(&self, after: Option<u64>) -> Result<LogPage, ApiError> {
        match after {
            Some(seq) => self.call("GET", &format!("/logs?after={seq}"), NO_BODY),
            None => self.call("GET", "/logs", NO_BODY),
        }
    }
    fn reset_adoption(&self) -> Result<Adoption, ApiError> {
        self.call(
            "POST",
            "/adoption/reset",
            Some(&ResetRequest { confirm: true }),
        )
    }
    fn registration(&self) -> Result<RegistrationStatus, ApiError> {
        self.call("GET", "/manager", NO_BODY)
    }
    fn probe_manager(&self, probe: &ManagerProbe) -> Result<ManagerCa, ApiError> {
        self.call("POST", "/manager/probe", Some(probe))
    }
    fn choose_manager(&self, choice: &ManagerChoice) -> Result<RegistrationStatus, ApiError> {
        self.call("PUT", "/manager", Some(choice))
    }
    fn forget_manager(&self) -> Result<RegistrationStatus, ApiError> {
        self.call("DELETE", "/manager", NO_BODY)
    }
    fn state(&self) -> Result<StateView, ApiError> {
        self.call("GET", "/state", NO_BODY)
    }
    fn create_state(&self, request: &CreateStateRequest) -> Result<StateStatus, ApiError> {
        self.call("POST", "/state/create", Some(request))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::localapi::types::{BondMode, FieldError, Ipv4Mode, Pending, TestKind};
    use crate::localapi::{serve, Local};
    use std::sync::{Arc, Mutex};

    pub fn form() -> NetworkForm {
        NetworkForm {
            interface: "eth0".into(),
            bond_members: vec![],
            bond_mode: BondMode::ActiveBackup,
            vlan: String::new(),
            mode: Ipv4Mode::Dhcp,
            address: String::new(),
            gateway: String::new(),
            dns: String::new(),
            hostname: "keel".into(),
            ntp: String::new(),
        }
    }

    /// What the agent's backend does, with the network module and adoption state reduced to
    /// memory: real facts, logs and tests through `Local`.
    pub struct TestBackend {
        pub local: Local,
        pub pending: Mutex<Option<NetworkForm>>,
        pub adopted: Mutex<bool>,
        pub manager: Mutex<Option<ManagerChoice>>,
    }

    impl TestBackend {
        pub fn new() -> Self {
            Self {
                local: Local::new(),
                pending: Mutex::new(None),
                adopted: Mutex::new(true),
                manager: Mutex::new(None),
            }
        }
    }

    impl ConsoleBackend for TestBackend {
        fn status(&self) -> Result<Status, ApiError> {
            let adoption = if *self.adopted.lock().unwrap() {
                Adoption::Adopted {
                    manager: "10.0.0.1:8443".into(),
                }
            } else {
                Adoption::NotAdopted {
                    token: "tok-123".into(),
                }
            };
            Ok(Status {
                facts: self.local.facts(),
                fingerprint: format!("sha256:{}", "ab".repeat(32)),
                adoption,
                vms: vec![],
            })
        }
        fn network(&self) -> Result<NetworkState, ApiError> {
            let pending = self.pending.lock().unwrap().clone();
            Ok(NetworkState {
                running: form(),
                pending: pending.map(|form| Pending {
                    form,
                    rollback_in_secs: 60,
                }),
                persistent: false,
                nics: self.local.facts().nics,
            })
        }
        fn preview(&self, form: &NetworkForm) -> Result<Preview, ApiError> {
            if form.mode == Ipv4Mode::Static && form.address.parse::<std::net::Ipv4Addr>().is_err()
            {
                return Err(ApiError::Invalid(vec![FieldError {
                    field: "address".into(),
                    message: format!("{:?} is not an IPv4 address with a prefix", form.address),
                }]));
            }
            Ok(Preview {
                changes: vec![format!("{}: {:?}", form.interface, form.mode)],
            })
        }
        fn apply(&self, form: &NetworkForm) -> Result<Applied, ApiError> {
            self.preview(form)?;
            *self.pending.lock().unwrap() = Some(form.clone());
            Ok(Applied {
                rollback_in_secs: 60,
            })
        }
        fn confirm(&self) -> Result<(), ApiError> {
            match self.pending.lock().unwrap().take() {
                Some(_) => Ok(()),
                None => Err(ApiError::Conflict(
                    "No change is waiting for confirmation".into(),
                )),
            }
        }
        fn test(&self, request: &TestRequest) -> Result<TestResult, ApiError> {
            Ok(self.local.test(request, None))
        }
        fn logs(&self, after: Option<u64>) -> Result<LogPage, ApiError> {
            self.local.logs(after)
        }
        fn reset_adoption(&self) -> Result<Adoption, ApiError> {
            *self.adopted.lock().unwrap() = false;
            self.status().map(|s| s.adoption)
        }
        fn registration(&self) -> Result<RegistrationStatus, ApiError> {
            let choice = self.manager.lock().unwrap().clone();
            Ok(RegistrationStatus {
                manager: choice.as_ref().map(|c| c.manager.clone()),
                manager_ca: choice.map(|c| c.manager_ca),
                ..RegistrationStatus::default()
            })
        }
        fn probe_manager(&self, probe: &ManagerProbe) -> Result<ManagerCa, ApiError> {
            match probe.manager.strip_prefix("https://") {
                Some(_) => Ok(ManagerCa {
                    manager_ca: format!("sha256:{}", "cd".repeat(32)),
                }),
                None => Err(ApiError::Invalid(vec![FieldError {
                    field: "manager".into(),
                    message: "not an https:// URL".into(),
                }])),
            }
        }
        fn choose_manager(&self, choice: &ManagerChoice) -> Result<RegistrationStatus, ApiError> {
            *self.manager.lock().unwrap() = Some(choice.clone());
            self.registration()
        }
        fn forget_manager(&self) -> Result<RegistrationStatus, ApiError> {
            *self.manager.lock().unwrap() = None;
            self.registration()
        }
        fn state(&self) -> Result<StateView, ApiError> {
            Ok(StateView {
                status: StateStatus::None,
                disks: vec![],
            })
        }
        fn create_state(&self, request: &CreateStateRequest) -> Result<StateStatus, ApiError> {
            if request.confirm != request.disk {
                return Err(ApiError::Invalid(vec![FieldError {
                    field: "confirm".into(),
                    message: "does not name the disk".into(),
                }]));
            }
            Err(ApiError::Conflict(format!("{} is in use", request.disk)))
        }
    }

    fn socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("keel-console-{tag}-{}.sock", std::process::id()))
    }

    #[test]
    fn every_route_round_trips_over_the_socket() {
        let path = socket_path("api");
        let listener = crate::localapi::server::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let backend = Arc::new(TestBackend::new());
        let served: Arc<dyn ConsoleBackend> = backend.clone();
        std::thread::spawn(move || crate::localapi::server::serve_on(listener, served));
        let client = Client::new(&path);

        let (status, direct) = (client.status().unwrap(), backend.status().unwrap());
        assert_eq!(status.fingerprint, direct.fingerprint);
        assert_eq!(status.adoption, direct.adoption);
        assert_eq!(status.facts.hostname, direct.facts.hostname);
        assert_eq!(client.network().unwrap().pending, None);

        let mut bad = form();
        bad.mode = Ipv4Mode::Static;
        bad.address = "10.0.0.300".into();
        let err = client.preview(&bad).unwrap_err();
        match &err {
            ApiError::Invalid(errors) => assert_eq!(errors[0].field, "address"),
            other => panic!("{other:?}"),
        }
        assert!(client.apply(&bad).is_err());
        assert_eq!(client.preview(&form()).unwrap().changes, ["eth0: Dhcp"]);
        assert_eq!(client.apply(&form()).unwrap().rollback_in_secs, 60);
        assert!(client.network().unwrap().pending.is_some());
        client.confirm().unwrap();
        assert!(matches!(client.confirm(), Err(ApiError::Conflict(_))));

        let r = client
            .test(&TestRequest {
                kind: TestKind::ConnectManager,
                name: None,
            })
            .unwrap();
        assert_eq!(
            (r.ok, r.detail.as_str()),
            (false, "this host has no manager")
        );
        let logs = client.logs(None).unwrap();
        assert!(logs.entries.len() <= crate::localapi::server::MAX_LOG_PAGE);
        if let Some(last) = logs.entries.last() {
            assert!(client
                .logs(Some(last.seq))
                .unwrap()
                .entries
                .iter()
                .all(|e| e.seq > last.seq));
        }
        assert_eq!(
            client.reset_adoption().unwrap(),
            Adoption::NotAdopted {
                token: "tok-123".into()
            }
        );

        assert_eq!(client.registration().unwrap().manager, None);
        let probe = |url: &str| {
            client.probe_manager(&ManagerProbe {
                manager: url.into(),
            })
        };
        let ca = probe("https://m.example").unwrap().manager_ca;
        assert!(matches!(probe("m.example"), Err(ApiError::Invalid(e)) if e[0].field == "manager"));
        let choice = ManagerChoice {
            manager: "https://m.example".into(),
            manager_ca: ca.clone(),
            join_token: Some("j".into()),
        };
        let status = client.choose_manager(&choice).unwrap();
        assert_eq!(status.manager_ca, Some(ca));
        assert_eq!(*backend.manager.lock().unwrap(), Some(choice));
        assert_eq!(client.forget_manager().unwrap().manager, None);
        assert_eq!(client.state().unwrap().status, StateStatus::None);
        let create = |confirm: &str| CreateStateRequest {
            disk: "/dev/vdb".into(),
            confirm: confirm.into(),
            size_mib: None,
        };
        assert!(matches!(
            client.create_state(&create("/dev/vda")),
            Err(ApiError::Invalid(_))
        ));
        assert_eq!(
            client.create_state(&create("/dev/vdb")),
            Err(ApiError::Conflict("/dev/vdb is in use".into()))
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_missing_agent_is_unreachable() {
        let err = Client::new("/nonexistent/console.sock")
            .status()
            .unwrap_err();
        assert!(
            matches!(&err, ApiError::Unreachable(p, _) if p == "/nonexistent/console.sock"),
            "{err:?}"
        );
    }

    #[test]
    fn bad_requests_are_refused_by_the_server() {
        use crate::agent::http::Request;
        use crate::localapi::server::{handle, parse_after};
        let backend = TestBackend::new();
        let req = |method: &str, path: &str, query: Option<&str>, body: &str| Request {
            method: method.into(),
            path: path.into(),
            query: query.map(String::from),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        };
        let cases = [
            (req("GET", "/nope", None, ""), 404),
            (req("DELETE", "/status", None, ""), 405),
            (
                req("POST", "/network/apply", None, "{\"interface\":1}"),
                400,
            ),
            (
                req(
                    "POST",
                    "/network/test",
                    None,
                    "{\"kind\":\"ping-gateway\",\"x\":1}",
                ),
                400,
            ),
            (req("GET", "/logs", Some("after=x"), ""), 400),
            (
                req("POST", "/adoption/reset", None, "{\"confirm\":false}"),
                400,
            ),
            (req("POST", "/adoption/reset", None, "{}"), 400),
            (req("GET", "/logs", Some("after=5"), ""), 200),
        ];
        for (request, want) in cases {
            let got = handle(&backend, &request).status;
            assert_eq!(
                got, want,
                "{} {} {:?}",
                request.method, request.path, request.query
            );
        }
        assert!(
            *backend.adopted.lock().unwrap(),
            "an unconfirmed reset changes nothing"
        );
        assert_eq!(parse_after(Some("a=1&after=42")), Ok(Some(42)));
        assert_eq!(parse_after(Some("a=1")), Ok(None));
        assert_eq!(parse_after(None), Ok(None));
    }

    #[test]
    fn serve_refuses_an_unusable_path() {
        let err = serve(
            std::path::Path::new("/proc/keel/console.sock"),
            Arc::new(TestBackend::new()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/proc/keel/console.sock"), "{err}");
    }
}
