//! Draws the console's state. Plain ASCII and at most bold and reverse video, so it reads the
//! same on the Linux VT and on a VT100 serial terminal without colours; 80x24 fits everything.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::app::{Action, App, Field, Screen, TestRow};
use super::manager::Row;
use super::state::{StateScreen, Step};
use crate::agent::api::{RegistrationState, RegistrationStatus};
use crate::localapi::types::StateView;
use crate::localapi::types::{Adoption, HostFacts, Ipv4Mode, Link, LogSource, Nic, TestKind};
use crate::state::Status as StateStatus;

fn bold(text: impl Into<String>) -> Span<'static> {
    Span::styled(text.into(), Style::default().add_modifier(Modifier::BOLD))
}

fn selected(text: impl Into<String>, on: bool) -> Span<'static> {
    let style = if on {
        Style::default().add_modifier(Modifier::REVERSED)
    } else {
        Style::default()
    };
    Span::styled(text.into(), style)
}

/// "1d 02:03:04" / "02:03:04".
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

fn link(l: Link) -> &'static str {
    match l {
        Link::Up => "up",
        Link::Down => "DOWN",
        Link::Unknown => "-",
    }
}

/// One NIC as a line: name, link, MAC, speed, addresses.
pub fn nic_line(n: &Nic) -> String {
    let speed = n.speed_mbps.map_or(String::new(), |s| format!("{s}Mb/s"));
    format!(
        "{:<10} {:<5} {:<17} {:>8} {}",
        n.name,
        link(n.link),
        n.mac,
        speed,
        n.addresses.join(" ")
    )
}

pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.height < 3 || area.width < 10 {
        return;
    }
    let facts = app.shown_facts();
    let head = match facts {
        Some(f) => format!(
            "Keel {} | {} | Linux {} | up {}",
            f.keel_version,
            f.hostname,
            f.kernel,
            uptime(f.uptime_secs)
        ),
        None => format!("Keel {}", crate::pid1::VERSION),
    };
    frame.render_widget(Paragraph::new(Line::from(bold(head))), row(area, 0));
    let tabs: Vec<Span> = Screen::ALL
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            let on = *s == app.screen;
            [
                selected(format!("{} {}", i + 1, s.title()), on),
                Span::raw("  "),
            ]
        })
        .collect();
    frame.render_widget(Paragraph::new(Line::from(tabs)), row(area, 1));
    let body = Rect::new(area.x, area.y + 2, area.width, area.height - 3);
    let lines = match app.screen {
        Screen::Status => status_lines(app),
        Screen::Network => network_lines(app),
        Screen::Manager => manager_lines(app),
        Screen::Test => test_lines(app),
        Screen::Logs => log_lines(app, usize::from(body.height)),
        Screen::System => system_lines(app),
    };
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), body);
    let keys = match app.screen {
        Screen::Status => "1-6 or F1-F6: screens   Ctrl-L: redraw",
        Screen::Network => {
            "Up/Down: field  Left/Right: choose  type to edit  Enter: run  Esc: back"
        }
        Screen::Manager => "Up/Down: field  type to edit  Enter: run  Esc: back",
        Screen::Test => "Up/Down: choose  Enter: run the test  Esc: back",
        Screen::Logs => "Up/Down PgUp/PgDn Home/End: scroll   Esc: back",
        Screen::System => "Up/Down: choose  Enter: select  y/n: confirm  Esc: back",
    };
    frame.render_widget(
        Paragraph::new(Line::from(selected(keys, true))),
        row(area, area.height - 1),
    );
}

fn row(area: Rect, y: u16) -> Rect {
    Rect::new(area.x, area.y + y, area.width, 1)
}

fn agent_line(app: &App) -> Option<Line<'static>> {
    app.agent_error.as_ref().map(|e| {
        Line::from(vec![
            bold(e.clone()),
            Span::raw(". Showing what the console reads itself."),
        ])
    })
}

fn facts_lines(f: &HostFacts, cpu: Option<u32>) -> Vec<Line<'static>> {
    let mib = |k: u64| k / 1024;
    let used = f.memory.total_kib.saturating_sub(f.memory.available_kib);
    let cpu = cpu.map_or(String::from("-"), |p| format!("{p}%"));
    let mut lines = vec![
        Line::from(format!(
            "CPU {cpu} of {} cores   Memory {} of {} MiB used",
            f.cpus,
            mib(used),
            mib(f.memory.total_kib)
        )),
        Line::from(format!(
            "Gateway {}   DNS {}",
            f.gateway.as_deref().unwrap_or("none"),
            if f.dns.is_empty() {
                String::from("none")
            } else {
                f.dns.join(", ")
            }
        )),
        Line::from(bold(
            "NIC        Link  MAC                  Speed Addresses",
        )),
    ];
    lines.extend(f.nics.iter().map(|n| Line::from(nic_line(n))));
    if f.nics.is_empty() {
        lines.push(Line::from("(no network interfaces)"));
    }
    lines
}

fn status_lines(app: &App) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = agent_line(app).into_iter().collect();
    if let Some(s) = &app.status {
        match &s.adoption {
            Adoption::NotAdopted { token } => {
                lines.push(Line::from(vec![
                    bold("Not adopted. "),
                    Span::raw("Adoption token: "),
                    bold(token.clone()),
                ]));
            }
            Adoption::Adopted { manager } => {
                lines.push(Line::from(vec![bold("Adopted by "), bold(manager.clone())]));
            }
        }
        lines.push(Line::from("Host key fingerprint:"));
        lines.push(Line::from(format!(" {}", s.fingerprint)));
        let vms: Vec<String> = s
            .vms
            .iter()
            .map(|v| format!("{} ({})", v.name, v.state))
            .collect();
        lines.push(Line::from(format!(
            "VMs: {}",
            if vms.is_empty() {
                String::from("none")
            } else {
                vms.join(", ")
            }
        )));
    }
    match app.shown_facts() {
        Some(f) => lines.extend(facts_lines(f, app.cpu_percent)),
        None => lines.push(Line::from("Reading the host's state...")),
    }
    lines
}

fn network_lines(app: &App) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = agent_line(app).into_iter().collect();
    if let Some(n) = &app.network {
        if let Some(p) = &n.pending {
            lines.push(Line::from(bold(format!(
                "Change pending: confirm within {} s or it rolls back.",
                p.rollback_in_secs
            ))));
        }
        if !n.persistent {
            lines.push(Line::from(
                "No persistent storage: these settings will not survive a reboot.",
            ));
        }
    }
    let f = &app.form;
    let nics = app
        .network
        .as_ref()
        .map(|n| n.nics.clone())
        .or_else(|| app.shown_facts().map(|f| f.nics.clone()))
        .unwrap_or_default();
    for (i, field) in Field::ALL.iter().enumerate() {
        let on = i == app.field;
        let value = match field {
            Field::Interface => {
                let nic = nics.iter().find(|n| n.name == f.interface);
                match nic {
                    Some(n) => format!("< {} >  {} {}", n.name, link(n.link), n.mac),
                    None if f.interface.is_empty() => String::from("< choose >"),
                    None => format!("< {} >", f.interface),
                }
            }
            Field::BondMembers => f.bond_members.join(","),
            Field::BondMode => format!(
                "< {} >",
                match f.bond_mode {
                    crate::localapi::types::BondMode::ActiveBackup => "active-backup",
                    crate::localapi::types::BondMode::Lacp => "802.3ad",
                }
            ),
            Field::Vlan => f.vlan.clone(),
            Field::Mode => format!(
                "< {} >",
                match f.mode {
                    Ipv4Mode::Dhcp => "DHCP",
                    Ipv4Mode::Static => "static",
                }
            ),
            Field::Address => f.address.clone(),
            Field::Gateway => f.gateway.clone(),
            Field::Dns => f.dns.clone(),
            Field::Hostname => f.hostname.clone(),
            Field::Ntp => f.ntp.clone(),
            Field::Preview | Field::Apply | Field::Confirm => String::new(),
        };
        let error = app.field_errors.get(field.wire_name());
        let mark = if error.is_some() { "!" } else { " " };
        let mut spans = vec![
            Span::raw(mark),
            selected(format!("{:<15}", field.label()), on),
            Span::raw(" "),
            Span::raw(value),
        ];
        if on && matches!(field, Field::Preview | Field::Apply | Field::Confirm) {
            spans.push(Span::raw(" <- Enter"));
        }
        if let Some(e) = error {
            spans.push(bold(format!("  {e}")));
        }
        lines.push(Line::from(spans));
    }
    lines.extend(app.form_message.iter().map(|m| Line::from(m.clone())));
    lines
}

fn registration_lines(status: &RegistrationStatus) -> Vec<Line<'static>> {
    let state = match status.state {
        RegistrationState::Disabled => "no manager named",
        RegistrationState::Pending => "not registered yet",
        RegistrationState::Registered => "registered",
        RegistrationState::Adopted => "adopted",
        RegistrationState::Error => "refused",
    };
    let source = status.source.map_or(String::new(), |s| {
        format!(" (named on the {})", s.describe())
    });
    let mut lines = vec![Line::from(vec![
        bold(format!("Registration: {state}")),
        Span::raw(source),
    ])];
    let rows = [
        ("Manager", status.manager.clone()),
        ("Manager CA", status.manager_ca.clone()),
        ("Host ID", status.host_id.clone()),
        (
            "Attempts",
            (status.attempts > 0).then(|| status.attempts.to_string()),
        ),
    ];
    for (label, value) in rows {
        if let Some(value) = value {
            lines.push(Line::from(format!(" {label:<11} {value}")));
        }
    }
    if let Some(reason) = &status.reason {
        let label = match status.state {
            RegistrationState::Registered | RegistrationState::Adopted => "Manager says",
            _ => "Why",
        };
        lines.push(Line::from(vec![
            Span::raw(format!(" {label}: ")),
            bold(reason.clone()),
        ]));
    }
    lines
}

fn manager_lines(app: &App) -> Vec<Line<'static>> {
    let m = &app.manager;
    let mut lines: Vec<Line> = agent_line(app).into_iter().collect();
    let current = m.current();
    for row in m.rows() {
        if *row == Row::Accept {
            lines.push(Line::from(
                " Manager CA fingerprint (compare before accepting):",
            ));
            lines.push(Line::from(bold(format!(
                "  {}",
                m.probed.clone().unwrap_or_default()
            ))));
        }
        let value = match row {
            Row::Url => m.url.clone(),
            Row::JoinToken if m.join_token.is_empty() && current != Row::JoinToken => {
                String::from("(optional)")
            }
            Row::JoinToken => m.join_token.clone(),
            _ => String::new(),
        };
        let error = m.field_errors.get(row.wire_name());
        let label = if matches!(row, Row::Url | Row::JoinToken) {
            format!("{:<15}", row.label())
        } else {
            row.label().to_string()
        };
        let mut spans = vec![
            Span::raw(if error.is_some() { "!" } else { " " }),
            selected(label, *row == current),
            Span::raw(" "),
            Span::raw(value),
        ];
        if let Some(e) = error {
            spans.push(bold(format!("  {e}")));
        }
        lines.push(Line::from(spans));
    }
    lines.extend(m.message.iter().map(|l| Line::from(l.clone())));
    lines.push(Line::from(""));
    match (&m.status, &m.status_error) {
        (Some(status), _) => lines.extend(registration_lines(status)),
        (None, Some(e)) => lines.push(Line::from(e.clone())),
        (None, None) => {}
    }
    lines
}

fn test_lines(app: &App) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = agent_line(app).into_iter().collect();
    for (i, row) in TestRow::ALL.iter().enumerate() {
        let on = i == app.test_row;
        let label = match row {
            TestRow::Ping => String::from("Ping the gateway"),
            TestRow::Name => format!("Name to resolve: {}", app.test_name),
            TestRow::Resolve => String::from("Resolve the name"),
            TestRow::Manager => String::from("Connect to the manager"),
        };
        lines.push(Line::from(vec![Span::raw(" "), selected(label, on)]));
    }
    lines.push(Line::from(""));
    for (kind, result) in &app.test_results {
        let what = match kind {
            TestKind::PingGateway => "Ping",
            TestKind::Resolve => "Resolve",
            TestKind::ConnectManager => "Manager",
        };
        let verdict = if result.ok { "OK  " } else { "FAIL" };
        lines.push(Line::from(vec![
            bold(format!("{verdict} {what}: ")),
            Span::raw(result.detail.clone()),
        ]));
    }
    lines
}

fn log_lines(app: &App, height: usize) -> Vec<Line<'static>> {
    let end = app.logs.len().saturating_sub(app.log_scroll);
    let start = end.saturating_sub(height);
    app.logs[start..end]
        .iter()
        .map(|e| {
            let who = match e.source {
                LogSource::Kernel => "kernel",
                LogSource::Keel => "keel  ",
            };
            let text = format!(
                "[{:>5}.{:03}] {who} {}",
                e.micros / 1_000_000,
                e.micros / 1000 % 1000,
                e.message
            );
            if e.level <= 3 {
                Line::from(bold(text))
            } else {
                Line::from(text)
            }
        })
        .collect()
}

/// The state partition as the System screen shows it.
fn state_line(view: &StateView) -> String {
    match &view.status {
        StateStatus::Mounted {
            device, boot_count, ..
        } => format!("State partition: {device}, mounted (boot {boot_count})"),
        StateStatus::None => {
            String::from("State partition: none; settings live in RAM and are lost at reboot")
        }
        StateStatus::Damaged { device, reason } => {
            format!("State partition: {device} is damaged ({reason}); settings live in RAM")
        }
    }
}

/// The disk choice and the erase question of "Create state partition".
fn create_state_lines(state: &StateScreen) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if matches!(state.step, Step::Choosing | Step::Confirming) {
        lines.push(Line::from(
            "Disks (Up/Down: choose, Enter: take it, n: cancel):",
        ));
        let chosen = state.chosen().map(|d| d.device.clone());
        for disk in state.view.iter().flat_map(|v| &v.disks) {
            let text = format!("  {:<14} {:>8} MiB", disk.device, disk.size_mib);
            let on = chosen.as_deref() == Some(disk.device.as_str());
            let mut spans = vec![selected(text, on)];
            if let Some(why) = &disk.refused {
                spans.push(Span::raw(format!("  cannot: {why}")));
            }
            lines.push(Line::from(spans));
        }
    }
    if state.step == Step::Confirming {
        if let Some(plan) = state.chosen().and_then(|d| d.plan.as_deref()) {
            // The API's summary ends by saying what to type; here a y does.
            let plan = plan.split(" Type ").next().unwrap_or(plan);
            lines.push(Line::from(bold(plan.to_string())));
            lines.push(Line::from(bold(
                "Press y to ERASE it and create the partition, n to cancel.",
            )));
        }
    }
    lines
}

fn system_lines(app: &App) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = agent_line(app).into_iter().collect();
    if let Some(view) = &app.state.view {
        lines.push(Line::from(state_line(view)));
    }
    for (i, action) in Action::ALL.iter().enumerate() {
        lines.push(Line::from(vec![
            Span::raw(" "),
            selected(action.label(), i == app.action),
        ]));
    }
    lines.push(Line::from(""));
    lines.extend(create_state_lines(&app.state));
    if let Some(m) = &app.state.message {
        lines.push(Line::from(m.clone()));
    }
    if let Some(action) = app.confirming {
        lines.push(Line::from(bold(format!(
            "{}: are you sure? Press y to go ahead, n to cancel.",
            action.name()
        ))));
    }
    if let Some(m) = &app.system_message {
        lines.push(Line::from(m.clone()));
    }
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::console::keys::Key;
    use crate::localapi::types::{CpuTimes, FieldError, LogEntry, Memory, Status, VmSummary};
    use crate::localapi::ApiError;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "node-7".into(),
            keel_version: "0.1.0".into(),
            kernel: "6.1.0-56-amd64".into(),
            uptime_secs: 3725,
            cpus: 2,
            cpu: CpuTimes::default(),
            memory: Memory {
                total_kib: 2048 * 1024,
                available_kib: 1536 * 1024,
            },
            nics: vec![Nic {
                name: "ens3".into(),
                mac: "52:54:00:12:34:56".into(),
                link: Link::Down,
                speed_mbps: None,
                addresses: vec!["10.0.2.15/24".into()],
                physical: true,
            }],
            gateway: Some("10.0.2.2".into()),
            dns: vec!["10.0.2.3".into()],
        }
    }

    /// The screen as text, one string per row.
    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, app)).unwrap();
        let buf = term.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        assert!(out.is_ascii(), "{out}");
        out
    }

    fn status(adoption: Adoption) -> Status {
        Status {
            facts: facts(),
            fingerprint: format!("sha256:{}", "0f".repeat(32)),
            adoption,
            vms: vec![VmSummary {
                name: "web".into(),
                state: "running".into(),
            }],
        }
    }

    #[test]
    fn status_shows_fingerprint_token_and_links() {
        let mut app = App::new();
        app.on_status(
            Ok(status(Adoption::NotAdopted {
                token: "K7Q-42X".into(),
            })),
            None,
        );
        let s = screen(&app, 80, 24);
        for want in [
            "Keel 0.1.0 | node-7 | Linux 6.1.0-56-amd64 | up 01:02:05",
            "Adoption token: K7Q-42X",
            &format!("sha256:{}", "0f".repeat(32)),
            "ens3       DOWN  52:54:00:12:34:56",
            "10.0.2.15/24",
            "Gateway 10.0.2.2   DNS 10.0.2.3",
            "Memory 512 of 2048 MiB used",
            "VMs: web (running)",
            "1 Status",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        app.on_status(
            Ok(status(Adoption::Adopted {
                manager: "mgr.lan:8443".into(),
            })),
            None,
        );
        let s = screen(&app, 80, 24);
        assert!(
            s.contains("Adopted by mgr.lan:8443") && !s.contains("token"),
            "{s}"
        );
    }

    #[test]
    fn agent_down_shows_own_facts() {
        let mut app = App::new();
        app.on_status(
            Err(ApiError::Unreachable(
                "/run/keel/console.sock".into(),
                "No such file or directory (os error 2)".into(),
            )),
            Some(facts()),
        );
        let s = screen(&app, 80, 24);
        assert!(
            s.contains("Agent not reachable: Cannot reach the agent at"),
            "{s}"
        );
        assert!(s.contains("ens3       DOWN"), "{s}");
        assert!(!s.contains("fingerprint"), "{s}");
    }

    #[test]
    fn network_form_shows_errors_by_their_field() {
        let mut app = App::new();
        app.on_status(Err(ApiError::Unavailable("x".into())), Some(facts()));
        app.on_key(Key::Char('2'));
        app.on_key(Key::Right);
        app.on_preview(Err(ApiError::Invalid(vec![FieldError {
            field: "vlan".into(),
            message: "VLAN ID 5000 is not in 1-4094".into(),
        }])));
        let s = screen(&app, 80, 24);
        let vlan = s.lines().find(|l| l.contains("VLAN ID ")).unwrap();
        assert!(
            vlan.starts_with('!') && vlan.contains("VLAN ID 5000 is not in 1-4094"),
            "{s}"
        );
        assert!(s.contains("< ens3 >  DOWN 52:54:00:12:34:56"), "{s}");
        assert!(s.contains("[ Apply ]") && s.contains("[ Confirm ]"), "{s}");
    }

    #[test]
    fn logs_show_the_newest_that_fit() {
        let mut app = App::new();
        app.on_logs(
            (1..=100)
                .map(|seq| LogEntry {
                    seq,
                    level: 6,
                    micros: seq * 1_500_000,
                    source: if seq.is_multiple_of(2) {
                        LogSource::Keel
                    } else {
                        LogSource::Kernel
                    },
                    message: format!("message {seq}"),
                })
                .collect(),
        );
        app.on_key(Key::Char('5'));
        let s = screen(&app, 80, 24);
        assert!(s.contains("[  150.000] keel   message 100"), "{s}");
        assert!(
            s.contains("keel   message 80") && !s.contains("message 79 "),
            "{s}"
        );
        app.on_key(Key::PageUp);
        let s = screen(&app, 80, 24);
        assert!(s.contains("message 90") && !s.contains("message 91"), "{s}");
    }

    #[test]
    fn manager_screen_shows_the_fingerprint_to_accept_and_the_registration() {
        let mut app = App::new();
        app.on_key(Key::Char('3'));
        let ca = format!("sha256:{}", "ab".repeat(32));
        app.manager.on_registration(Ok(RegistrationStatus {
            state: RegistrationState::Error,
            manager: Some("https://10.0.2.2:8444".into()),
            manager_ca: Some(format!("sha256:{}", "00".repeat(32))),
            source: Some(crate::agent::api::RegistrationSource::CommandLine),
            host_id: Some("0f6c0a2e-8d2b-4e0e-9a57-3b1e3e6a4b11".into()),
            reason: Some("The manager's certificate chain does not hold the pinned CA".into()),
            attempts: 3,
            verdict: None,
        }));
        let s = screen(&app, 80, 24);
        for want in [
            "3 Manager",
            "Manager URL     https://10.0.2.2:8444",
            "Join token      (optional)",
            "[ Fetch the manager's CA fingerprint ]",
            "Registration: refused (named on the kernel command line)",
            " Attempts    3",
            " Why: The manager's certificate chain does not hold the pinned CA",
        ] {
            assert!(s.contains(want), "{want:?} missing:\n{s}");
        }
        assert!(!s.contains("Accept"), "{s}");
        app.manager.on_probe(Ok(crate::localapi::types::ManagerCa {
            manager_ca: ca.clone(),
        }));
        let s = screen(&app, 80, 24);
        for want in [
            ca.as_str(),
            "[ Accept: pin this CA and register ]",
            "[ Reject: send nothing ]",
            "Compare it with the manager's own",
        ] {
            assert!(s.contains(want), "{want:?} missing:\n{s}");
        }
    }

    #[test]
    fn system_screen_asks_before_erasing_a_disk() {
        use crate::state::create::DiskOffer;
        let mut app = App::new();
        app.on_key(Key::Char('6'));
        let view = StateView {
            status: StateStatus::None,
            disks: vec![
                DiskOffer {
                    device: "/dev/vda".into(),
                    size_mib: 107,
                    plan: None,
                    refused: Some("/dev/vda holds the boot medium".into()),
                },
                DiskOffer {
                    device: "/dev/vdb".into(),
                    size_mib: 256,
                    plan: Some(
                        "This erases /dev/vdb (256 MiB), everything on it, and creates one \
                         256 MiB ext4 partition labelled KEEL-STATE. Type /dev/vdb to confirm."
                            .into(),
                    ),
                    refused: None,
                },
            ],
        };
        app.state.on_state(Ok(view.clone()));
        let s = screen(&app, 80, 24);
        assert!(
            s.contains("State partition: none; settings live in RAM"),
            "{s}"
        );
        app.on_key(Key::Down);
        app.on_key(Key::Enter);
        app.state.on_state(Ok(view));
        app.on_key(Key::Enter);
        let s = screen(&app, 80, 24);
        for want in [
            "  /dev/vdb            256 MiB",
            "cannot: /dev/vda holds the boot medium",
            "This erases /dev/vdb (256 MiB), everything on it",
            "Press y to ERASE it and create the partition, n to cancel.",
        ] {
            assert!(s.contains(want), "{want:?} missing:\n{s}");
        }
        assert!(!s.contains("Type /dev/vdb"), "{s}");
    }

    #[test]
    fn odd_sizes_do_not_panic() {
        let mut app = App::new();
        app.on_status(Err(ApiError::Unavailable("x".into())), Some(facts()));
        for screen_key in 1..=6 {
            app.on_key(Key::F(screen_key));
            for (w, h) in [(1, 1), (10, 3), (20, 5), (80, 24), (200, 60)] {
                let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
                term.draw(|f| draw(f, &app)).unwrap();
            }
        }
    }

    #[test]
    fn uptimes() {
        for (secs, want) in [(0, "00:00:00"), (3725, "01:02:05"), (90061, "1d 01:01:01")] {
            assert_eq!(uptime(secs), want);
        }
    }
}
