//! The console's state and what each key does to it: a pure state machine. Keys and answers
//! from the agent go in; the state and the requests to make (`Effect`s) come out. The runner
//! (`super::run`) does the I/O, and `super::view` draws the state.

use std::collections::BTreeMap;

use crate::agent::registration::ManagerChoice;
use crate::localapi::facts::cpu_percent;
use crate::localapi::types::ManagerProbe;
use crate::localapi::types::{
    Adoption, Applied, BondMode, CpuTimes, HostFacts, Ipv4Mode, LogEntry, NetworkForm,
    NetworkState, Preview, Status, TestKind, TestRequest, TestResult,
};
use crate::localapi::ApiError;

use super::keys::Key;
use super::manager::ManagerScreen;
use super::state::StateScreen;
use crate::agent::api::CreateStateRequest;

/// The screens, in menu order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Status,
    Network,
    Manager,
    Test,
    Logs,
    System,
}

impl Screen {
    pub const ALL: [Screen; 6] = [
        Screen::Status,
        Screen::Network,
        Screen::Manager,
        Screen::Test,
        Screen::Logs,
        Screen::System,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Status => "Status",
            Screen::Network => "Network",
            Screen::Manager => "Manager",
            Screen::Test => "Test network",
            Screen::Logs => "Logs",
            Screen::System => "System",
        }
    }
}

/// Rows of the network form, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Interface,
    BondMembers,
    BondMode,
    Vlan,
    Mode,
    Address,
    Gateway,
    Dns,
    Hostname,
    Ntp,
    Preview,
    Apply,
    Confirm,
}

impl Field {
    pub const ALL: [Field; 13] = [
        Field::Interface,
        Field::BondMembers,
        Field::BondMode,
        Field::Vlan,
        Field::Mode,
        Field::Address,
        Field::Gateway,
        Field::Dns,
        Field::Hostname,
        Field::Ntp,
        Field::Preview,
        Field::Apply,
        Field::Confirm,
    ];

    /// The `NetworkForm` field name the network module uses in its `FieldError`s.
    pub fn wire_name(self) -> &'static str {
        match self {
            Field::Interface => "interface",
            Field::BondMembers => "bond_members",
            Field::BondMode => "bond_mode",
            Field::Vlan => "vlan",
            Field::Mode => "mode",
            Field::Address => "address",
            Field::Gateway => "gateway",
            Field::Dns => "dns",
            Field::Hostname => "hostname",
            Field::Ntp => "ntp",
            Field::Preview => "preview",
            Field::Apply => "apply",
            Field::Confirm => "confirm",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Field::Interface => "Interface",
            Field::BondMembers => "Bond members",
            Field::BondMode => "Bond mode",
            Field::Vlan => "VLAN ID",
            Field::Mode => "IPv4",
            Field::Address => "Address/prefix",
            Field::Gateway => "Gateway",
            Field::Dns => "DNS servers",
            Field::Hostname => "Host name",
            Field::Ntp => "NTP servers",
            Field::Preview => "[ Preview ]",
            Field::Apply => "[ Apply ]",
            Field::Confirm => "[ Confirm ]",
        }
    }
}

/// Rows of the test screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestRow {
    Ping,
    Name,
    Resolve,
    Manager,
}

impl TestRow {
    pub const ALL: [TestRow; 4] = [
        TestRow::Ping,
        TestRow::Name,
        TestRow::Resolve,
        TestRow::Manager,
    ];
}

/// What the System screen can do, each after a y/n question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ResetAdoption,
    /// Asks its own questions (`super::state`) instead of y/n.
    CreateState,
    Reboot,
    PowerOff,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::ResetAdoption,
        Action::CreateState,
        Action::Reboot,
        Action::PowerOff,
    ];

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::ResetAdoption => "Reset adoption",
            Action::CreateState => "Create state partition",
            Action::Reboot => "Reboot",
            Action::PowerOff => "Power off",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Action::ResetAdoption => "Reset adoption (release this host from its manager)",
            Action::CreateState => "Create the state partition (settings survive reboots)",
            Action::Reboot => "Reboot",
            Action::PowerOff => "Power off",
        }
    }
}

/// A request for the runner to make; its answer comes back through `App::on_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    LoadNetwork,
    Preview(NetworkForm),
    Apply(NetworkForm),
    Confirm,
    Test(TestRequest),
    LoadManager,
    ProbeManager(ManagerProbe),
    ChooseManager(ManagerChoice),
    ForgetManager,
    LoadState,
    CreateState(CreateStateRequest),
    Run(Action),
    /// Clear the terminal and draw everything again (Ctrl-L).
    Redraw,
}

/// The console's whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub screen: Screen,
    /// The last status from the agent, if it answered.
    pub status: Option<Status>,
    /// What the console read itself; shown when the agent is not reachable.
    pub facts: Option<HostFacts>,
    /// Why the agent gave no status ("Agent not reachable: …" or "Agent error: …").
    pub agent_error: Option<String>,
    /// CPU use between the last two samples.
    pub cpu_percent: Option<u32>,
    last_cpu: Option<CpuTimes>,

    pub form: NetworkForm,
    /// The form was filled from the agent's running configuration.
    pub form_loaded: bool,
    pub network: Option<NetworkState>,
    pub field: usize,
    /// Validation errors by wire field name.
    pub field_errors: BTreeMap<String, String>,
    /// Preview lines, or the outcome of apply/confirm.
    pub form_message: Vec<String>,

    pub manager: ManagerScreen,

    pub test_row: usize,
    pub test_name: String,
    pub test_results: Vec<(TestKind, TestResult)>,

    pub logs: Vec<LogEntry>,
    /// Lines scrolled up from the newest; 0 follows the log.
    pub log_scroll: usize,

    pub action: usize,
    /// Creating the state partition, from the System screen.
    pub state: StateScreen,
    /// The action waiting for y/n.
    pub confirming: Option<Action>,
    pub system_message: Option<String>,
}

/// Most log lines kept on the console.
const MAX_LOGS: usize = 2000;

fn next_in<T: PartialEq + Copy>(all: &[T], current: T, forward: bool) -> T {
    let i = all.iter().position(|x| *x == current).unwrap_or(0);
    let n = all.len();
    all[if forward {
        (i + 1) % n
    } else {
        (i + n - 1) % n
    }]
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    pub fn new() -> Self {
        Self {
            screen: Screen::Status,
            status: None,
            facts: None,
            agent_error: None,
            cpu_percent: None,
            last_cpu: None,
            form: NetworkForm {
                interface: String::new(),
                bond_members: Vec::new(),
                bond_mode: BondMode::ActiveBackup,
                vlan: String::new(),
                mode: Ipv4Mode::Dhcp,
                address: String::new(),
                gateway: String::new(),
                dns: String::new(),
                hostname: String::new(),
                ntp: String::new(),
            },
            form_loaded: false,
            network: None,
            field: 0,
            field_errors: BTreeMap::new(),
            form_message: Vec::new(),
            manager: ManagerScreen::default(),
            test_row: 0,
            test_name: String::from("keel.dev"),
            test_results: Vec::new(),
            logs: Vec::new(),
            log_scroll: 0,
            action: 0,
            state: StateScreen::default(),
            confirming: None,
            system_message: None,
        }
    }

    /// The facts to show: the agent's when it answers, else our own.
    pub fn shown_facts(&self) -> Option<&HostFacts> {
        self.status
            .as_ref()
            .map(|s| &s.facts)
            .or(self.facts.as_ref())
    }

    /// Whether typing goes into a text field now (so digits do not switch screens).
    pub fn editing(&self) -> bool {
        match self.screen {
            Screen::Network => self.is_text(Field::ALL[self.field]).is_some(),
            Screen::Manager => self.manager.editing(),
            Screen::Test => TestRow::ALL[self.test_row] == TestRow::Name,
            _ => false,
        }
    }

    fn is_text(&self, field: Field) -> Option<()> {
        matches!(
            field,
            Field::BondMembers
                | Field::Vlan
                | Field::Address
                | Field::Gateway
                | Field::Dns
                | Field::Hostname
                | Field::Ntp
        )
        .then_some(())
    }

    fn switch(&mut self, screen: Screen) -> Vec<Effect> {
        self.screen = screen;
        self.confirming = None;
        self.state.cancel();
        match screen {
            Screen::Network => vec![Effect::LoadNetwork],
            Screen::Manager => vec![Effect::LoadManager],
            Screen::System => vec![Effect::LoadState],
            _ => Vec::new(),
        }
    }

    /// Handles one key press.
    pub fn on_key(&mut self, key: Key) -> Vec<Effect> {
        // Keys that work everywhere.
        match key {
            Key::F(n @ 1..=6) => return self.switch(Screen::ALL[usize::from(n - 1)]),
            Key::Ctrl('l') => return vec![Effect::Redraw],
            Key::Esc => {
                self.confirming = None;
                return self.switch(Screen::Status);
            }
            Key::Char(c @ '1'..='6') if !self.editing() && self.confirming.is_none() => {
                let i = (c as usize) - ('1' as usize);
                return self.switch(Screen::ALL[i]);
            }
            _ => {}
        }
        match self.screen {
            Screen::Status => Vec::new(),
            Screen::Network => self.network_key(key),
            Screen::Manager => self.manager.on_key(key),
            Screen::Test => self.test_key(key),
            Screen::Logs => {
                self.logs_key(key);
                Vec::new()
            }
            Screen::System => self.system_key(key),
        }
    }

    fn text_of(&mut self, field: Field) -> Option<&mut String> {
        let f = &mut self.form;
        Some(match field {
            Field::Vlan => &mut f.vlan,
            Field::Address => &mut f.address,
            Field::Gateway => &mut f.gateway,
            Field::Dns => &mut f.dns,
            Field::Hostname => &mut f.hostname,
            Field::Ntp => &mut f.ntp,
            _ => return None,
        })
    }

    /// NIC names to choose the interface from: physical ones, else any.
    fn nic_names(&self) -> Vec<String> {
        let nics = match (&self.network, self.shown_facts()) {
            (Some(n), _) => n.nics.clone(),
            (None, Some(f)) => f.nics.clone(),
            (None, None) => Vec::new(),
        };
        nics.into_iter().map(|n| n.name).collect()
    }

    fn network_key(&mut self, key: Key) -> Vec<Effect> {
        let field = Field::ALL[self.field];
        let n = Field::ALL.len();
        match key {
            Key::Up | Key::BackTab => self.field = (self.field + n - 1) % n,
            Key::Down | Key::Tab => self.field = (self.field + 1) % n,
            Key::Left | Key::Right | Key::Char(' ')
                if matches!(field, Field::Interface | Field::BondMode | Field::Mode) =>
            {
                let forward = key != Key::Left;
                match field {
                    Field::Interface => {
                        let names = self.nic_names();
                        if !names.is_empty() {
                            let i = names.iter().position(|x| *x == self.form.interface);
                            let next = match (i, forward) {
                                (None, _) => 0,
                                (Some(i), true) => (i + 1) % names.len(),
                                (Some(i), false) => (i + names.len() - 1) % names.len(),
                            };
                            self.form.interface = names[next].clone();
                        }
                    }
                    Field::BondMode => {
                        let all = [BondMode::ActiveBackup, BondMode::Lacp];
                        self.form.bond_mode = next_in(&all, self.form.bond_mode, forward);
                    }
                    _ => {
                        let all = [Ipv4Mode::Dhcp, Ipv4Mode::Static];
                        self.form.mode = next_in(&all, self.form.mode, forward);
                    }
                }
            }
            Key::Enter => {
                return match field {
                    Field::Apply => vec![Effect::Apply(self.submitted())],
                    Field::Confirm => vec![Effect::Confirm],
                    Field::Preview => vec![Effect::Preview(self.submitted())],
                    // Enter on a field moves on, as in most forms.
                    _ => {
                        self.field = (self.field + 1) % n;
                        Vec::new()
                    }
                };
            }
            Key::Char(c) if field == Field::BondMembers => {
                let mut text = self.form.bond_members.join(",");
                text.push(c);
                self.form.bond_members = split_list(&text);
                if c == ',' {
                    // Keep the separator visible while the next name is typed.
                    self.form.bond_members.push(String::new());
                }
            }
            Key::Backspace if field == Field::BondMembers => {
                let mut text = self.form.bond_members.join(",");
                text.pop();
                self.form.bond_members = text.split(',').map(String::from).collect();
                self.form
                    .bond_members
                    .retain(|m| !m.is_empty() || text.ends_with(','));
                if text.is_empty() {
                    self.form.bond_members.clear();
                }
            }
            Key::Ctrl('u') if field == Field::BondMembers => self.form.bond_members.clear(),
            Key::Char(c) => {
                if let Some(text) = self.text_of(field) {
                    if text.len() < 256 && !c.is_control() {
                        text.push(c);
                    }
                }
            }
            Key::Backspace => {
                if let Some(text) = self.text_of(field) {
                    text.pop();
                }
            }
            Key::Ctrl('u') => {
                if let Some(text) = self.text_of(field) {
                    text.clear();
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// The form as sent: a trailing comma typed in the bond members is not a member.
    fn submitted(&self) -> NetworkForm {
        let mut form = self.form.clone();
        form.bond_members.retain(|m| !m.is_empty());
        form
    }

    fn test_key(&mut self, key: Key) -> Vec<Effect> {
        let row = TestRow::ALL[self.test_row];
        let n = TestRow::ALL.len();
        match key {
            Key::Up | Key::BackTab => self.test_row = (self.test_row + n - 1) % n,
            Key::Down | Key::Tab => self.test_row = (self.test_row + 1) % n,
            Key::Char(c) if row == TestRow::Name && self.test_name.len() < 253 => {
                self.test_name.push(c)
            }
            Key::Backspace if row == TestRow::Name => {
                self.test_name.pop();
            }
            Key::Ctrl('u') if row == TestRow::Name => self.test_name.clear(),
            Key::Enter => {
                let (kind, name) = match row {
                    TestRow::Ping => (TestKind::PingGateway, None),
                    TestRow::Name | TestRow::Resolve => {
                        (TestKind::Resolve, Some(self.test_name.clone()))
                    }
                    TestRow::Manager => (TestKind::ConnectManager, None),
                };
                return vec![Effect::Test(TestRequest { kind, name })];
            }
            _ => {}
        }
        Vec::new()
    }

    fn logs_key(&mut self, key: Key) {
        let max = self.logs.len().saturating_sub(1);
        self.log_scroll = match key {
            Key::Up | Key::Char('k') => self.log_scroll + 1,
            Key::Down | Key::Char('j') => self.log_scroll.saturating_sub(1),
            Key::PageUp => self.log_scroll + 10,
            Key::PageDown => self.log_scroll.saturating_sub(10),
            Key::Home => max,
            Key::End => 0,
            _ => self.log_scroll,
        }
        .min(max);
    }

    fn system_key(&mut self, key: Key) -> Vec<Effect> {
        if self.state.active() {
            return self.state.on_key(key);
        }
        if let Some(action) = self.confirming {
            return match key {
                Key::Char('y' | 'Y') => {
                    self.confirming = None;
                    self.system_message = Some(format!("{}: working...", action.name()));
                    vec![Effect::Run(action)]
                }
                Key::Char('n' | 'N') | Key::Enter => {
                    self.confirming = None;
                    self.system_message = Some(String::from("Cancelled."));
                    Vec::new()
                }
                _ => Vec::new(),
            };
        }
        let n = Action::ALL.len();
        match key {
            Key::Up | Key::BackTab => self.action = (self.action + n - 1) % n,
            Key::Down | Key::Tab => self.action = (self.action + 1) % n,
            Key::Enter if Action::ALL[self.action] == Action::CreateState => {
                self.system_message = None;
                return self.state.begin();
            }
            Key::Enter => {
                self.confirming = Some(Action::ALL[self.action]);
                self.system_message = None;
            }
            _ => {}
        }
        Vec::new()
    }

    /// A status answer: the agent's, or why it could not be asked plus our own facts.
    pub fn on_status(&mut self, answer: Result<Status, ApiError>, own: Option<HostFacts>) {
        match answer {
            Ok(status) => {
                self.sample_cpu(status.facts.cpu);
                self.status = Some(status);
                self.agent_error = None;
            }
            Err(e) => {
                self.status = None;
                let what = match e {
                    ApiError::Unreachable(..) => "Agent not reachable",
                    _ => "Agent error",
                };
                self.agent_error = Some(format!("{what}: {e}"));
            }
        }
        if let Some(facts) = own {
            if self.status.is_none() {
                self.sample_cpu(facts.cpu);
            }
            self.facts = Some(facts);
        }
    }

    fn sample_cpu(&mut self, now: CpuTimes) {
        if let Some(before) = self.last_cpu {
            self.cpu_percent = cpu_percent(before, now).or(self.cpu_percent);
        }
        self.last_cpu = Some(now);
    }

    /// The management network as the agent has it.
    pub fn on_network(&mut self, answer: Result<NetworkState, ApiError>) {
        match answer {
            Ok(state) => {
                if !self.form_loaded {
                    self.form = state.running.clone();
                    self.form_loaded = true;
                }
                self.network = Some(state);
            }
            Err(e) => {
                self.network = None;
                self.form_message = vec![format!("Cannot read the network settings: {e}")];
            }
        }
    }

    fn on_form_error(&mut self, what: &str, e: ApiError) {
        self.field_errors.clear();
        if let ApiError::Invalid(errors) = &e {
            for fe in errors {
                self.field_errors
                    .insert(fe.field.clone(), fe.message.clone());
            }
            self.form_message = vec![format!("{what}: fix the fields marked '!'")];
        } else {
            self.form_message = vec![format!("{what} failed: {e}")];
        }
    }

    pub fn on_preview(&mut self, answer: Result<Preview, ApiError>) {
        match answer {
            Ok(p) => {
                self.field_errors.clear();
                self.form_message = if p.changes.is_empty() {
                    vec![String::from("Preview: nothing would change.")]
                } else {
                    std::iter::once(String::from("Preview: applying would"))
                        .chain(p.changes.into_iter().map(|c| format!("  {c}")))
                        .collect()
                };
            }
            Err(e) => self.on_form_error("Preview", e),
        }
    }

    pub fn on_applied(&mut self, answer: Result<Applied, ApiError>) {
        match answer {
            Ok(a) => {
                self.field_errors.clear();
                self.form_message = vec![format!(
                    "Applied. Confirm within {} s or the previous settings come back.",
                    a.rollback_in_secs
                )];
            }
            Err(e) => self.on_form_error("Apply", e),
        }
    }

    pub fn on_confirmed(&mut self, answer: Result<(), ApiError>) {
        self.form_message = vec![match answer {
            Ok(()) => String::from("Confirmed: the new settings stay."),
            Err(e) => format!("Confirm failed: {e}"),
        }];
    }

    pub fn on_test(&mut self, kind: TestKind, answer: Result<TestResult, ApiError>) {
        let result = answer.unwrap_or_else(|e| TestResult {
            ok: false,
            detail: e.to_string(),
        });
        self.test_results.retain(|(k, _)| *k != kind);
        self.test_results.push((kind, result));
    }

    /// New log records (after the last one we have).
    pub fn on_logs(&mut self, entries: Vec<LogEntry>) {
        let added = entries.len();
        self.logs.extend(entries);
        if self.log_scroll > 0 {
            // Keep the view where the operator scrolled it.
            self.log_scroll += added;
        }
        if self.logs.len() > MAX_LOGS {
            let drop = self.logs.len() - MAX_LOGS;
            self.logs.drain(..drop);
        }
        self.log_scroll = self.log_scroll.min(self.logs.len().saturating_sub(1));
    }

    /// The sequence number to ask for logs after; `None` before the first record.
    pub fn last_log_seq(&self) -> Option<u64> {
        self.logs.last().map(|e| e.seq)
    }

    /// The answer to a System action.
    pub fn on_action(&mut self, action: Action, answer: Result<Option<Adoption>, ApiError>) {
        self.system_message = Some(match answer {
            Ok(Some(Adoption::NotAdopted { .. })) | Ok(None) => {
                format!("{}: done.", action.name())
            }
            Ok(Some(Adoption::Adopted { manager })) => {
                format!("{}: still adopted by {manager}.", action.name())
            }
            Err(e) => format!("{} failed: {e}", action.name()),
        });
    }
}

pub use crate::localapi::types::split_list;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::localapi::types::{FieldError, Link, Memory, Nic};
    use Key::*;

    fn nic(name: &str) -> Nic {
        Nic {
            name: name.into(),
            mac: "52:54:00:12:34:56".into(),
            link: Link::Up,
            speed_mbps: Some(1000),
            addresses: vec![],
            physical: true,
        }
    }

    pub fn facts() -> HostFacts {
        HostFacts {
            hostname: "keel".into(),
            keel_version: "0.1.0".into(),
            kernel: "6.1.0".into(),
            uptime_secs: 75,
            cpus: 2,
            cpu: CpuTimes { busy: 0, total: 0 },
            memory: Memory {
                total_kib: 2048 * 1024,
                available_kib: 1024 * 1024,
            },
            nics: vec![nic("eth0"), nic("eth1")],
            gateway: Some("10.0.2.2".into()),
            dns: vec!["10.0.2.3".into()],
        }
    }

    fn type_text(app: &mut App, text: &str) -> Vec<Effect> {
        text.chars().flat_map(|c| app.on_key(Char(c))).collect()
    }

    #[test]
    fn screens_switch_by_digit_f_key_and_escape() {
        let cases: &[(&[Key], Screen)] = &[
            (&[], Screen::Status),
            (&[Char('5')], Screen::Logs),
            (&[F(4)], Screen::Test),
            (&[Char('6'), Esc], Screen::Status),
            // Digits type into a text field (bond members, the manager URL) instead of
            // switching.
            (&[Char('2'), Down, Char('3')], Screen::Network),
            (&[Char('3'), Char('4')], Screen::Manager),
            (&[Char('3'), Down, Down, Char('4')], Screen::Test),
            (&[Char('2'), Char('4')], Screen::Test),
            (&[Char('2'), F(5)], Screen::Logs),
            (&[Char('9'), Char('x')], Screen::Status),
        ];
        for (keys, want) in cases {
            let mut app = App::new();
            for k in *keys {
                app.on_key(*k);
            }
            assert_eq!(app.screen, *want, "{keys:?}");
        }
        let mut app = App::new();
        assert_eq!(app.on_key(Char('2')), [Effect::LoadNetwork]);
        assert_eq!(app.on_key(F(3)), [Effect::LoadManager]);
        assert_eq!(app.on_key(Ctrl('l')), [Effect::Redraw]);
    }

    #[test]
    fn network_form_editing_and_actions() {
        let mut app = App::new();
        app.on_status(Err(ApiError::Unavailable("x".into())), Some(facts()));
        app.on_key(Char('2'));
        // Interface: Right picks the first NIC, then the next.
        app.on_key(Right);
        assert_eq!(app.form.interface, "eth0");
        app.on_key(Right);
        assert_eq!(app.form.interface, "eth1");
        app.on_key(Left);
        assert_eq!(app.form.interface, "eth0");
        // Bond members: typed list.
        app.on_key(Down);
        type_text(&mut app, "eth0,eth1");
        assert_eq!(app.form.bond_members, ["eth0", "eth1"]);
        app.on_key(Backspace);
        assert_eq!(app.form.bond_members, ["eth0", "eth"]);
        app.on_key(Down);
        app.on_key(Char(' '));
        assert_eq!(app.form.bond_mode, BondMode::Lacp);
        // Digits go into the VLAN field, not to the screen switch.
        app.on_key(Down);
        type_text(&mut app, "42");
        assert_eq!(
            (app.form.vlan.as_str(), app.screen),
            ("42", Screen::Network)
        );
        app.on_key(Enter); // moves on to IPv4
        app.on_key(Right);
        assert_eq!(app.form.mode, Ipv4Mode::Static);
        app.on_key(Down);
        type_text(&mut app, "10.0.0.5/24x");
        app.on_key(Backspace);
        assert_eq!(app.form.address, "10.0.0.5/24");
        app.on_key(Ctrl('u'));
        assert_eq!(app.form.address, "");
        type_text(&mut app, "10.0.0.5/24");
        app.form.bond_members.push(String::new()); // "eth0,eth," as typed
                                                   // Down through every row comes back to the same field.
        for _ in 0..Field::ALL.len() {
            app.on_key(Down);
        }
        assert_eq!(Field::ALL[app.field], Field::Address);
        while Field::ALL[app.field] != Field::Preview {
            app.on_key(Down);
        }
        let mut form = app.form.clone();
        form.bond_members.retain(|m| !m.is_empty());
        assert_eq!(app.on_key(Enter), [Effect::Preview(form.clone())]);
        app.on_key(Down);
        assert_eq!(app.on_key(Enter), [Effect::Apply(form)]);
        app.on_key(Down);
        assert_eq!(app.on_key(Enter), [Effect::Confirm]);
        app.on_key(Down);
        assert_eq!(Field::ALL[app.field], Field::Interface);
    }

    #[test]
    fn validation_errors_land_on_their_fields() {
        let mut app = App::new();
        let errors = vec![FieldError {
            field: "address".into(),
            message: "\"10.0.0.300/24\" is not an IPv4 address".into(),
        }];
        app.on_preview(Err(ApiError::Invalid(errors)));
        assert_eq!(
            app.field_errors.get("address").map(String::as_str),
            Some("\"10.0.0.300/24\" is not an IPv4 address")
        );
        app.on_preview(Ok(Preview {
            changes: vec!["eth0: static 10.0.0.5/24".into()],
        }));
        assert!(app.field_errors.is_empty());
        assert_eq!(app.form_message.len(), 2);
        app.on_applied(Ok(Applied {
            rollback_in_secs: 30,
        }));
        assert!(app.form_message[0].contains("within 30 s"));
        app.on_confirmed(Err(ApiError::Conflict("nothing pending".into())));
        assert_eq!(app.form_message, ["Confirm failed: nothing pending"]);
    }

    #[test]
    fn tests_screen() {
        let mut app = App::new();
        app.on_key(Char('4'));
        assert_eq!(
            app.on_key(Enter),
            [Effect::Test(TestRequest {
                kind: TestKind::PingGateway,
                name: None
            })]
        );
        app.on_key(Down);
        app.on_key(Ctrl('u'));
        type_text(&mut app, "m1.lan");
        assert_eq!(app.screen, Screen::Test, "digits typed into the name");
        app.on_key(Down);
        assert_eq!(
            app.on_key(Enter),
            [Effect::Test(TestRequest {
                kind: TestKind::Resolve,
                name: Some("m1.lan".into())
            })]
        );
        let ok = TestResult {
            ok: true,
            detail: "x".into(),
        };
        app.on_test(TestKind::Resolve, Ok(ok.clone()));
        app.on_test(TestKind::Resolve, Err(ApiError::Failed("boom".into())));
        assert_eq!(app.test_results.len(), 1, "one result per kind");
        assert_eq!(app.test_results[0].1.detail, "boom");
    }

    #[test]
    fn logs_scroll_and_follow() {
        let mut app = App::new();
        let entry = |seq| LogEntry {
            seq,
            level: 6,
            micros: 0,
            source: crate::localapi::types::LogSource::Kernel,
            message: format!("m{seq}"),
        };
        assert_eq!(app.last_log_seq(), None);
        app.on_logs((1..=30).map(entry).collect());
        assert_eq!(app.last_log_seq(), Some(30));
        app.on_key(Char('5'));
        let cases: &[(Key, usize)] = &[
            (Up, 1),
            (PageUp, 11),
            (Down, 10),
            (Home, 29),
            (Up, 29),
            (PageDown, 19),
            (End, 0),
            (Down, 0),
        ];
        for (key, want) in cases {
            app.on_key(*key);
            assert_eq!(app.log_scroll, *want, "{key:?}");
        }
        app.on_key(Up);
        app.on_logs(vec![entry(31)]);
        assert_eq!(app.log_scroll, 2, "a scrolled view stays put");
        app.on_logs((32..=2100).map(entry).collect());
        assert_eq!(app.logs.len(), MAX_LOGS);
    }

    #[test]
    fn system_actions_need_a_yes() {
        let cases: &[(&[Key], Vec<Effect>, Option<Action>)] = &[
            (&[Enter], vec![], Some(Action::ResetAdoption)),
            (&[Enter, Char('n')], vec![], None),
            (&[Enter, Char('x')], vec![], Some(Action::ResetAdoption)),
            (
                &[Enter, Char('y')],
                vec![Effect::Run(Action::ResetAdoption)],
                None,
            ),
            (
                &[Down, Down, Enter, Char('y')],
                vec![Effect::Run(Action::Reboot)],
                None,
            ),
            // Its own questions, after the disks are read.
            (&[Down, Enter], vec![Effect::LoadState], None),
            (
                &[Up, Enter, Char('Y')],
                vec![Effect::Run(Action::PowerOff)],
                None,
            ),
            // A digit while asked does not switch screens.
            (&[Enter, Char('1')], vec![], Some(Action::ResetAdoption)),
            (&[Enter, Esc], vec![], None),
        ];
        for (keys, want, confirming) in cases {
            let mut app = App::new();
            app.on_key(Char('6'));
            let effects: Vec<Effect> = keys.iter().flat_map(|k| app.on_key(*k)).collect();
            assert_eq!(effects, *want, "{keys:?}");
            assert_eq!(app.confirming, *confirming, "{keys:?}");
        }
    }

    #[test]
    fn status_falls_back_to_own_facts_and_computes_cpu() {
        let mut app = App::new();
        let mut f = facts();
        f.cpu = CpuTimes {
            busy: 10,
            total: 100,
        };
        app.on_status(
            Err(ApiError::Unreachable(
                "/run/keel/console.sock".into(),
                "gone".into(),
            )),
            Some(f.clone()),
        );
        let error = app.agent_error.as_deref().unwrap();
        assert!(
            error.starts_with("Agent not reachable: Cannot reach the agent at"),
            "{error}"
        );
        f.cpu = CpuTimes {
            busy: 60,
            total: 200,
        };
        app.on_status(Err(ApiError::Unavailable("busy".into())), Some(f));
        assert_eq!(app.agent_error.as_deref(), Some("Agent error: busy"));
        assert_eq!(app.cpu_percent, Some(50));
        assert_eq!(app.shown_facts().unwrap().hostname, "keel");
    }

    #[test]
    fn random_keys_never_panic() {
        let keys = [
            Up,
            Down,
            Left,
            Right,
            Enter,
            Backspace,
            Tab,
            BackTab,
            Esc,
            Home,
            End,
            PageUp,
            PageDown,
            Delete,
            Char('1'),
            Char('2'),
            Char('3'),
            Char('4'),
            Char('5'),
            Char('6'),
            Char(','),
            Char('y'),
            Char('é'),
            Ctrl('u'),
            F(2),
            F(9),
        ];
        let mut state = 7u64;
        let mut app = App::new();
        app.on_status(Err(ApiError::Unavailable("x".into())), Some(facts()));
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = keys[(state >> 33) as usize % keys.len()];
            app.on_key(key);
        }
    }
}
