//! The Manager screen's state and keys: the operator types the manager's URL (and a join token,
//! if the manager gave one), the agent fetches the CA fingerprint from the manager's TLS
//! handshake without sending anything, and only after the operator accepts that fingerprint is
//! the choice saved and the host registers. Pure, like `app`: keys and answers in, `Effect`s out.

use std::collections::BTreeMap;

use super::app::Effect;
use super::keys::Key;
use crate::agent::api::{RegistrationSource, RegistrationStatus};
use crate::agent::registration::ManagerChoice;
use crate::localapi::types::{ManagerCa, ManagerProbe};
use crate::localapi::ApiError;

/// Rows of the Manager screen; Accept and Reject only while a fingerprint waits for an answer,
/// Forget only while the manager in force was chosen on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    Url,
    JoinToken,
    Fetch,
    Accept,
    Reject,
    Forget,
}

impl Row {
    pub fn label(self) -> &'static str {
        match self {
            Row::Url => "Manager URL",
            Row::JoinToken => "Join token",
            Row::Fetch => "[ Fetch the manager's CA fingerprint ]",
            Row::Accept => "[ Accept: pin this CA and register ]",
            Row::Reject => "[ Reject: send nothing ]",
            Row::Forget => "[ Forget this choice: back to the kernel command line ]",
        }
    }

    /// The field name the agent uses in its `FieldError`s.
    pub fn wire_name(self) -> &'static str {
        match self {
            Row::Url => "manager",
            Row::JoinToken => "join_token",
            Row::Fetch | Row::Accept => "manager_ca",
            Row::Reject | Row::Forget => "",
        }
    }
}

/// Longest URL or token typed.
const MAX_TEXT: usize = 256;

/// The Manager screen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagerScreen {
    pub row: usize,
    pub url: String,
    pub join_token: String,
    /// The CA fingerprint fetched for `url`, waiting for Accept or Reject.
    pub probed: Option<String>,
    pub field_errors: BTreeMap<String, String>,
    /// The outcome of the last fetch, accept or reject.
    pub message: Vec<String>,
    /// The registration as the agent last reported it.
    pub status: Option<RegistrationStatus>,
    pub status_error: Option<String>,
    /// The URL field was filled from the registration in force.
    loaded: bool,
}

impl ManagerScreen {
    /// The rows shown now.
    pub fn rows(&self) -> &'static [Row] {
        let chosen_here = self
            .status
            .as_ref()
            .is_some_and(|s| s.source == Some(RegistrationSource::Console));
        match (self.probed.is_some(), chosen_here) {
            (true, _) => &[
                Row::Url,
                Row::JoinToken,
                Row::Fetch,
                Row::Accept,
                Row::Reject,
            ],
            (false, true) => &[Row::Url, Row::JoinToken, Row::Fetch, Row::Forget],
            (false, false) => &[Row::Url, Row::JoinToken, Row::Fetch],
        }
    }

    pub fn current(&self) -> Row {
        let rows = self.rows();
        rows[self.row.min(rows.len() - 1)]
    }

    /// Whether typing goes into a text field now.
    pub fn editing(&self) -> bool {
        matches!(self.current(), Row::Url | Row::JoinToken)
    }

    fn text(&mut self, row: Row) -> Option<&mut String> {
        match row {
            Row::Url => Some(&mut self.url),
            Row::JoinToken => Some(&mut self.join_token),
            _ => None,
        }
    }

    fn select(&mut self, row: Row) {
        self.row = self.rows().iter().position(|r| *r == row).unwrap_or(0);
    }

    /// A changed URL or token voids the fingerprint fetched for the old one.
    fn edited(&mut self) {
        if self.probed.take().is_some() {
            self.message = vec![String::from(
                "Changed: fetch the CA fingerprint again before accepting.",
            )];
        }
    }

    pub fn on_key(&mut self, key: Key) -> Vec<Effect> {
        let row = self.current();
        let n = self.rows().len();
        match key {
            Key::Up | Key::BackTab => self.row = (self.row.min(n - 1) + n - 1) % n,
            Key::Down | Key::Tab => self.row = (self.row.min(n - 1) + 1) % n,
            Key::Enter => return self.enter(row),
            Key::Char(c) if !c.is_control() && !c.is_whitespace() => {
                if let Some(text) = self.text(row) {
                    if text.len() < MAX_TEXT {
                        text.push(c);
                        self.edited();
                    }
                }
            }
            Key::Backspace if self.text(row).and_then(String::pop).is_some() => self.edited(),
            Key::Ctrl('u') => {
                if let Some(text) = self.text(row) {
                    text.clear();
                    self.edited();
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn enter(&mut self, row: Row) -> Vec<Effect> {
        match row {
            Row::Url | Row::JoinToken => {
                self.row = (self.row + 1) % self.rows().len();
                Vec::new()
            }
            Row::Fetch => {
                self.field_errors.clear();
                self.message = vec![format!(
                    "Asking {} for its CA certificate (nothing else is sent)...",
                    self.url
                )];
                vec![Effect::ProbeManager(ManagerProbe {
                    manager: self.url.clone(),
                })]
            }
            Row::Accept => match &self.probed {
                Some(ca) => {
                    let choice = ManagerChoice {
                        manager: self.url.clone(),
                        manager_ca: ca.clone(),
                        join_token: Some(self.join_token.clone()).filter(|t| !t.is_empty()),
                    };
                    vec![Effect::ChooseManager(choice)]
                }
                None => Vec::new(),
            },
            Row::Forget => {
                self.message = vec![String::from("Forgetting the console's choice...")];
                vec![Effect::ForgetManager]
            }
            Row::Reject => {
                self.probed = None;
                self.select(Row::Url);
                self.message = vec![format!(
                    "Rejected: nothing was sent to {}, and the host registers as before.",
                    self.url
                )];
                Vec::new()
            }
        }
    }

    fn on_error(&mut self, what: &str, e: ApiError) {
        self.field_errors.clear();
        if let ApiError::Invalid(errors) = &e {
            for fe in errors {
                self.field_errors
                    .insert(fe.field.clone(), fe.message.clone());
            }
            self.message = vec![format!("{what}: fix the fields marked '!'")];
        } else {
            self.message = vec![format!("{what} failed: {e}")];
        }
    }

    /// The answer to a fetch.
    pub fn on_probe(&mut self, answer: Result<ManagerCa, ApiError>) {
        match answer {
            Ok(ca) => {
                self.field_errors.clear();
                self.probed = Some(ca.manager_ca);
                self.select(Row::Accept);
                self.message = vec![
                    String::from("Compare it with the manager's own (keelctl ca fingerprint)."),
                    String::from("Accept pins it and registers; Reject sends nothing."),
                ];
            }
            Err(e) => {
                self.probed = None;
                self.on_error("Fetching the CA fingerprint", e);
            }
        }
    }

    /// The answer to Accept.
    pub fn on_chosen(&mut self, answer: Result<RegistrationStatus, ApiError>) {
        match answer {
            Ok(status) => {
                self.field_errors.clear();
                self.probed = None;
                self.select(Row::Url);
                self.message = vec![format!(
                    "Saved: this host registers with {} from now on.",
                    self.url
                )];
                self.status = Some(status);
            }
            Err(e) => self.on_error("Saving the manager", e),
        }
    }

    /// The answer to Forget.
    pub fn on_forgotten(&mut self, answer: Result<RegistrationStatus, ApiError>) {
        match answer {
            Ok(status) => {
                self.message = vec![match &status.manager {
                    Some(m) => format!("Forgotten: the kernel command line's manager {m} is back."),
                    None => String::from("Forgotten: this host registers with no manager now."),
                }];
                self.url = status.manager.clone().unwrap_or_default();
                self.status = Some(status);
                self.select(Row::Url);
            }
            Err(e) => self.on_error("Forgetting the manager", e),
        }
    }

    /// The registration as the agent reports it; the first one fills in the URL field.
    pub fn on_registration(&mut self, answer: Result<RegistrationStatus, ApiError>) {
        match answer {
            Ok(status) => {
                if !self.loaded && self.url.is_empty() {
                    self.url = status.manager.clone().unwrap_or_default();
                }
                self.loaded = true;
                self.status = Some(status);
                self.status_error = None;
            }
            Err(e) => {
                self.status = None;
                self.status_error = Some(format!("Cannot read the registration: {e}"));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::api::RegistrationState;
    use crate::localapi::types::FieldError;
    use Key::*;

    const FP: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn typed(screen: &mut ManagerScreen, text: &str) {
        for c in text.chars() {
            screen.on_key(Char(c));
        }
    }

    fn probe(url: &str) -> Effect {
        Effect::ProbeManager(ManagerProbe {
            manager: url.into(),
        })
    }

    #[test]
    fn nothing_is_chosen_before_the_fingerprint_is_accepted() {
        let mut m = ManagerScreen::default();
        typed(&mut m, "https://10.0.2.2:8444");
        m.on_key(Down);
        typed(&mut m, "tok en");
        assert_eq!(m.join_token, "token", "no spaces in a token");
        assert_eq!(m.rows().len(), 3, "no Accept before a fetch");
        m.on_key(Down);
        assert_eq!(m.on_key(Enter), [probe("https://10.0.2.2:8444")]);
        m.on_probe(Ok(ManagerCa {
            manager_ca: FP.into(),
        }));
        assert_eq!(m.current(), Row::Accept);
        let choice = ManagerChoice {
            manager: "https://10.0.2.2:8444".into(),
            manager_ca: FP.into(),
            join_token: Some("token".into()),
        };
        assert_eq!(m.on_key(Enter), [Effect::ChooseManager(choice)]);
        let status = RegistrationStatus {
            state: RegistrationState::Pending,
            ..RegistrationStatus::default()
        };
        m.on_chosen(Ok(status));
        assert_eq!((m.probed.as_deref(), m.current()), (None, Row::Url));
        assert!(m.message[0].starts_with("Saved: "), "{:?}", m.message);
    }

    #[test]
    fn reject_and_edits_drop_the_fingerprint() {
        let cases: &[(&[Key], Row, &str)] = &[
            // Reject: nothing saved, back to the URL.
            (&[Down, Enter], Row::Url, "Rejected: nothing was sent"),
            // Editing the URL or the token voids the fingerprint.
            (
                &[Up, Up, Up, Char('x')],
                Row::Url,
                "fetch the CA fingerprint again",
            ),
            (
                &[Up, Up, Backspace],
                Row::JoinToken,
                "fetch the CA fingerprint again",
            ),
            (
                &[Up, Up, Up, Ctrl('u')],
                Row::Url,
                "fetch the CA fingerprint again",
            ),
        ];
        for (keys, row, said) in cases {
            let mut m = ManagerScreen {
                url: "https://m.example".into(),
                join_token: "t".into(),
                ..ManagerScreen::default()
            };
            m.on_probe(Ok(ManagerCa {
                manager_ca: FP.into(),
            }));
            let effects: Vec<Effect> = keys.iter().flat_map(|k| m.on_key(*k)).collect();
            assert!(effects.is_empty(), "{keys:?}: {effects:?}");
            assert_eq!((m.probed.as_deref(), m.current()), (None, *row), "{keys:?}");
            assert!(m.message[0].contains(said), "{keys:?}: {:?}", m.message);
            // Accept is gone: Enter on the third row fetches again.
            m.select(Row::Fetch);
            assert_eq!(m.on_key(Enter).len(), 1);
        }
    }

    #[test]
    fn a_choice_made_here_can_be_forgotten() {
        let mut m = ManagerScreen::default();
        let mut status = RegistrationStatus {
            manager: Some("https://a.example".into()),
            source: Some(RegistrationSource::CommandLine),
            ..RegistrationStatus::default()
        };
        m.on_registration(Ok(status.clone()));
        assert!(!m.rows().contains(&Row::Forget), "nothing to forget");
        status.source = Some(RegistrationSource::Console);
        m.on_registration(Ok(status));
        assert_eq!(m.rows().last(), Some(&Row::Forget));
        m.select(Row::Forget);
        assert_eq!(m.on_key(Enter), [Effect::ForgetManager]);
        m.on_forgotten(Ok(RegistrationStatus::default()));
        assert_eq!(
            m.message,
            ["Forgotten: this host registers with no manager now."]
        );
        assert_eq!((m.url.as_str(), m.current()), ("", Row::Url));
        assert!(!m.rows().contains(&Row::Forget));
    }

    #[test]
    fn failures_are_shown_and_the_url_comes_from_the_registration() {
        let mut m = ManagerScreen::default();
        m.on_registration(Ok(RegistrationStatus {
            manager: Some("https://a.example".into()),
            ..RegistrationStatus::default()
        }));
        assert_eq!(m.url, "https://a.example");
        m.url.clear();
        m.on_registration(Ok(RegistrationStatus::default()));
        assert_eq!(m.url, "", "filled in once only");
        m.on_probe(Err(ApiError::Invalid(vec![FieldError {
            field: "manager".into(),
            message: "not a URL".into(),
        }])));
        assert_eq!(m.field_errors.get("manager").unwrap(), "not a URL");
        m.on_probe(Err(ApiError::Failed("manager unreachable: refused".into())));
        assert_eq!(
            m.message,
            ["Fetching the CA fingerprint failed: manager unreachable: refused"]
        );
        m.on_registration(Err(ApiError::Unavailable("starting".into())));
        assert!(m.status.is_none());
        assert_eq!(
            m.status_error.as_deref(),
            Some("Cannot read the registration: starting")
        );
    }
}
