//! Which manager the host registers with, and the thread that keeps the registration current.
//!
//! Layers, as in Talos: the kernel command line (`keel.manager=`, `keel.manager_ca=`,
//! `keel.join_token=`) < the choice made on the console's Manager screen, saved in the agent's
//! state directory (`manager.json`, so it lasts across reboots on a state partition). A change
//! made on the console restarts registration at once: no reboot, and the old registrar's
//! back-off does not delay the new manager.

use super::api::{RegistrationSource, RegistrationState, RegistrationStatus};
use super::register::{self, Registrar, Settings, SettingsError};
use super::server::Agent;
use crate::sys::atomic::{remove_durable, write_atomic, AtomicError};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The console's choice, in the agent's state directory (mode 0600: it holds the join token).
pub const SAVED_FILE: &str = "manager.json";

/// A manager chosen on the console, as saved and as the console sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerChoice {
    /// `https://host[:port][/path]`.
    pub manager: String,
    /// `sha256:<hex>` of the manager's CA certificate, as the operator accepted it.
    pub manager_ca: String,
    /// Lets the manager adopt the host without an operator's approval.
    #[serde(default)]
    pub join_token: Option<String>,
}

/// The registration parameters of the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLine {
    pub manager: Option<String>,
    pub manager_ca: Option<String>,
    pub join_token: Option<String>,
}

/// The settings in force and where they come from.
pub type Layered = Option<(Settings, RegistrationSource)>;

/// Why the settings in force cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    /// The manager saved from the console ({0}) is unusable: {1}; choose it again on the console
    #[error(
        "The manager saved from the console ({0}) is unusable: {1}; choose it again on the console"
    )]
    Saved(String, SettingsError),
    #[error(transparent)]
    CommandLine(SettingsError),
}

/// The settings in force: the console's saved choice over the kernel command line.
pub fn layered(
    cmdline: &CommandLine,
    saved: Option<&ManagerChoice>,
) -> Result<Layered, LayerError> {
    if let Some(choice) = saved {
        let settings = settings_of(choice)
            .map_err(|e| LayerError::Saved(choice.manager.clone(), e))?
            .map(|s| (s, RegistrationSource::Console));
        return Ok(settings);
    }
    Settings::from_params(
        cmdline.manager.as_deref(),
        cmdline.manager_ca.as_deref(),
        cmdline.join_token.as_deref(),
    )
    .map(|s| s.map(|s| (s, RegistrationSource::CommandLine)))
    .map_err(LayerError::CommandLine)
}

/// A choice checked as the command line's parameters are; an empty join token is none.
pub fn settings_of(choice: &ManagerChoice) -> Result<Option<Settings>, SettingsError> {
    let token = choice.join_token.as_deref().filter(|t| !t.is_empty());
    Settings::from_params(Some(&choice.manager), Some(&choice.manager_ca), token)
}

/// Why a saved choice cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// Cannot read {0}: {1}
    #[error("Cannot read {0}: {1}")]
    Read(PathBuf, io::Error),
    /// {0} is not a saved manager: {1}
    #[error("{0} is not a saved manager: {1}")]
    Parse(PathBuf, serde_json::Error),
    #[error(transparent)]
    Write(#[from] AtomicError),
    #[error(transparent)]
    Invalid(#[from] SettingsError),
}

/// The choice saved in `dir`, if any.
pub fn load_saved(dir: &Path) -> Result<Option<ManagerChoice>, SavedError> {
    let path = dir.join(SAVED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SavedError::Parse(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SavedError::Read(path, e)),
    }
}

/// The settings in force now, and a counter bumped by every change.
struct Current {
    generation: u64,
    settings: Layered,
    /// Without settings: why not (unusable ones), for the API and the console.
    refusal: Option<RegistrationStatus>,
}

/// The registration of this host: what it is set to, and the thread acting on it.
pub struct Registration {
    agent: Arc<Agent>,
    state_dir: PathBuf,
    /// The kernel command line's layer, in force again when the console's choice is forgotten.
    cmdline: CommandLine,
    hostname: Option<String>,
    api_port: u16,
    addresses: fn() -> Vec<IpAddr>,
    current: Mutex<Current>,
    changed: Condvar,
}

impl Registration {
    /// Works out the settings in force and starts the registration thread. Unusable settings
    /// are reported on the console and in the API; the thread then waits for the console.
    pub fn start(
        agent: Arc<Agent>,
        state_dir: PathBuf,
        cmdline: &CommandLine,
        hostname: Option<String>,
        api_port: u16,
        addresses: fn() -> Vec<IpAddr>,
    ) -> Result<Arc<Self>, io::Error> {
        let saved = load_saved(&state_dir);
        let settings = match saved {
            Ok(saved) => layered(cmdline, saved.as_ref()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let registration = Arc::new(Self {
            agent,
            state_dir,
            cmdline: cmdline.clone(),
            hostname,
            api_port,
            addresses,
            current: Mutex::new(Current {
                generation: 0,
                settings: None,
                refusal: None,
            }),
            changed: Condvar::new(),
        });
        match settings {
            Ok(settings) => registration.lock().settings = settings,
            Err(reason) => {
                registration.lock().refusal = Some(registration.refuse(&cmdline.manager, reason));
            }
        }
        let worker = Arc::clone(&registration);
        std::thread::Builder::new()
            .name("keel-register".into())
            .spawn(move || worker.work())?;
        Ok(registration)
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says on the console why the host does not register; the status to show in the API.
    fn refuse(&self, manager: &Option<String>, reason: String) -> RegistrationStatus {
        log::warn!("keel-agent: not registering: {reason}");
        RegistrationStatus {
            state: RegistrationState::Error,
            manager: manager.clone(),
            reason: Some(reason),
            ..RegistrationStatus::default()
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Layered {
        self.lock().settings.clone()
    }

    /// Saves the console's choice and registers with it from now on.
    pub fn choose(&self, choice: &ManagerChoice) -> Result<(), SavedError> {
        let settings = settings_of(choice)?;
        let text = serde_json::to_vec_pretty(choice)
            .map_err(|e| SavedError::Parse(self.state_dir.join(SAVED_FILE), e))?;
        write_atomic(&self.state_dir.join(SAVED_FILE), &text, 0o600)?;
        self.switch(settings.map(|s| (s, RegistrationSource::Console)), None);
        Ok(())
    }

    /// Forgets the console's choice: the kernel command line's manager, if any, is in force
    /// again (none: the host stops registering).
    pub fn forget(&self) -> Result<(), SavedError> {
        remove_durable(&self.state_dir.join(SAVED_FILE))?;
        match layered(&self.cmdline, None) {
            Ok(settings) => self.switch(settings, None),
            Err(e) => {
                let refusal = self.refuse(&self.cmdline.manager, e.to_string());
                self.switch(None, Some(refusal));
            }
        }
        Ok(())
    }

    /// Puts `settings` in force and wakes the registration thread to start over with them.
    fn switch(&self, settings: Layered, refusal: Option<RegistrationStatus>) {
        let mut current = self.lock();
        current.generation = current.generation.wrapping_add(1);
        current.settings = settings;
        current.refusal = refusal;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` unless the settings change first; whether they did.
    fn changed_within(&self, generation: u64, timeout: Option<Duration>) -> bool {
        let guard = self.lock();
        let still = |c: &mut Current| c.generation == generation;
        let guard = match timeout {
            Some(t) => {
                self.changed
                    .wait_timeout_while(guard, t, still)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self
                .changed
                .wait_while(guard, still)
                .unwrap_or_else(|p| p.into_inner()),
        };
        guard.generation != generation
    }

    /// The thread: registers with the settings in force, starting over whenever they change.
    fn work(&self) {
        loop {
            let (generation, settings, refusal) = {
                let current = self.lock();
                let refusal = current.refusal.clone();
                (current.generation, current.settings.clone(), refusal)
            };
            if let Some((settings, source)) = settings {
                self.register(settings, source, generation);
            } else {
                // Published by this thread, so that a registrar round still running when the
                // settings changed cannot overwrite it.
                self.agent.set_registration(refusal.unwrap_or_default());
                self.changed_within(generation, None);
            }
        }
    }

    /// Registers with `settings` until they change.
    fn register(&self, settings: Settings, source: RegistrationSource, generation: u64) {
        let host_id = match register::load_or_create_host_id(&self.state_dir) {
            Ok(id) => id,
            Err(e) => {
                let manager = Some(settings.manager.as_str().to_string());
                self.agent
                    .set_registration(self.refuse(&manager, e.to_string()));
                self.changed_within(generation, None);
                return;
            }
        };
        log::info!(
            "keel-agent: registering with {} as {host_id} (manager CA {}, from the {})",
            settings.manager.as_str(),
            settings.manager_ca,
            source.describe()
        );
        let registrar = Registrar {
            settings,
            source,
            host_id,
            hostname: self.hostname.clone(),
            api_port: self.api_port,
            agent: Arc::clone(&self.agent),
            addresses: self.addresses,
            reannounce: register::REANNOUNCE_EVERY,
        };
        registrar.run(|delay| !self.changed_within(generation, Some(delay)));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::atomic::testdir::TestDir;

    const FP: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const FP2: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn cmdline(manager: Option<&str>, ca: Option<&str>) -> CommandLine {
        CommandLine {
            manager: manager.map(String::from),
            manager_ca: ca.map(String::from),
            join_token: None,
        }
    }

    fn choice(manager: &str, ca: &str, token: Option<&str>) -> ManagerChoice {
        ManagerChoice {
            manager: manager.into(),
            manager_ca: ca.into(),
            join_token: token.map(String::from),
        }
    }

    #[test]
    fn the_console_choice_wins_over_the_command_line() {
        let a = "https://10.0.2.2:8444";
        let b = "https://m.example";
        // (command line, saved, manager in force, source, or the error's start)
        type Case = (
            CommandLine,
            Option<ManagerChoice>,
            Result<Option<(&'static str, RegistrationSource)>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (CommandLine::default(), None, Ok(None)),
            (
                cmdline(Some(a), Some(FP)),
                None,
                Ok(Some((a, RegistrationSource::CommandLine))),
            ),
            (
                CommandLine::default(),
                Some(choice(b, FP2, Some("j"))),
                Ok(Some((b, RegistrationSource::Console))),
            ),
            (
                cmdline(Some(a), Some(FP)),
                Some(choice(b, FP2, None)),
                Ok(Some((b, RegistrationSource::Console))),
            ),
            // A bad command line does not matter once the console chose.
            (
                cmdline(Some("http://x"), None),
                Some(choice(b, FP2, None)),
                Ok(Some((b, RegistrationSource::Console))),
            ),
            (cmdline(Some(a), None), None, Err("keel.manager= is given")),
            (
                cmdline(Some(a), Some(FP)),
                Some(choice("ftp://x", FP, None)),
                Err("The manager saved from the console (ftp://x)"),
            ),
        ];
        for (cmdline, saved, want) in cases {
            let got = layered(&cmdline, saved.as_ref());
            match (&got, &want) {
                (Ok(got), Ok(want)) => {
                    let got = got.as_ref().map(|(s, src)| (s.manager.as_str(), *src));
                    assert_eq!(got, *want, "{cmdline:?} {saved:?}");
                }
                (Err(e), Err(start)) => {
                    assert!(e.to_string().starts_with(start), "{e}");
                }
                _ => panic!("{cmdline:?} {saved:?}: {got:?}, want {want:?}"),
            }
        }
        let settings = settings_of(&choice(b, FP, Some(""))).unwrap().unwrap();
        assert_eq!(settings.join_token, None, "an empty token is none");
    }

    #[test]
    fn saved_choices_round_trip_and_bad_files_are_named() {
        let dir = TestDir::new("registration-saved");
        assert!(load_saved(dir.path()).unwrap().is_none());
        let c = choice("https://m.example", FP, Some("j"));
        let text = serde_json::to_vec(&c).unwrap();
        std::fs::write(dir.path().join(SAVED_FILE), text).unwrap();
        assert_eq!(load_saved(dir.path()).unwrap(), Some(c));
        std::fs::write(dir.path().join(SAVED_FILE), "{").unwrap();
        let err = load_saved(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manager.json is not a saved manager"), "{err}");
    }
}
