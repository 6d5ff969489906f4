//! `keel console`: the full-screen text console on a terminal (tty1, ttyS0).
//!
//! `app` is the state machine, `view` draws it with ratatui, `keys` decodes what the terminal
//! sends. This module is the I/O around them: raw mode, the terminal size, the periodic refresh
//! from the agent (or, when it is not reachable, from what the console reads itself) and a full
//! redraw every few seconds, because kernel messages printed on the same console scribble over
//! the screen.

pub mod app;
pub mod keys;
pub mod manager;
pub mod state;
pub mod term;
pub mod view;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::backend::TermionBackend;
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

use crate::localapi::{self, ApiError, Client, ConsoleBackend, Local};
use app::{Action, App, Effect};

/// How often the status and logs are asked for.
const REFRESH: Duration = Duration::from_secs(1);
/// How often everything is drawn again from scratch.
const FULL_REDRAW: Duration = Duration::from_secs(10);
/// How long an ESC may wait for the rest of its sequence.
const ESC_WAIT: Duration = Duration::from_millis(60);

const USAGE: &str = "usage: keel console [--press-enter] [--socket PATH]";

/// The console's options.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Wait for a key before taking over the terminal (serial consoles, which also carry the
    /// boot log).
    pub press_enter: bool,
    pub socket: String,
}

/// Parses the arguments after `console`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        press_enter: false,
        socket: localapi::SOCKET.to_string(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--press-enter" => options.press_enter = true,
            "--socket" => match it.next() {
                Some(path) => options.socket = path.clone(),
                None => return Err(format!("--socket needs a path\n{USAGE}")),
            },
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

/// Where answers come from: the agent, and what the console can read itself when the agent
/// cannot be asked.
struct Sources {
    agent: Client,
    local: Local,
}

impl Sources {
    fn refresh(&self, app: &mut App) {
        match self.agent.status() {
            Ok(status) => app.on_status(Ok(status), None),
            Err(e) => app.on_status(Err(e), Some(self.local.facts())),
        }
        let after = app.last_log_seq();
        let logs = self
            .agent
            .logs(after)
            .or_else(|_| self.local.logs(after))
            .map(|page| page.entries)
            .unwrap_or_default();
        app.on_logs(logs);
        match app.screen {
            app::Screen::Network => app.on_network(self.agent.network()),
            app::Screen::Manager => app.manager.on_registration(self.agent.registration()),
            _ => {}
        }
    }

    fn perform(&self, app: &mut App, effect: Effect) {
        match effect {
            Effect::LoadNetwork => app.on_network(self.agent.network()),
            Effect::Preview(form) => app.on_preview(self.agent.preview(&form)),
            Effect::Apply(form) => {
                app.on_applied(self.agent.apply(&form));
                app.on_network(self.agent.network());
            }
            Effect::Confirm => {
                app.on_confirmed(self.agent.confirm());
                app.on_network(self.agent.network());
            }
            Effect::LoadManager => app.manager.on_registration(self.agent.registration()),
            Effect::ProbeManager(probe) => app.manager.on_probe(self.agent.probe_manager(&probe)),
            Effect::ChooseManager(choice) => {
                app.manager.on_chosen(self.agent.choose_manager(&choice));
            }
            Effect::ForgetManager => app.manager.on_forgotten(self.agent.forget_manager()),
            Effect::LoadState => app.state.on_state(self.agent.state()),
            Effect::CreateState(request) => {
                app.state.on_created(self.agent.create_state(&request));
                app.state.on_state(self.agent.state());
            }
            Effect::Test(request) => {
                let answer = match self.agent.test(&request) {
                    Err(ApiError::Unreachable(..)) => Ok(self.local.test(&request, None)),
                    other => other,
                };
                app.on_test(request.kind, answer);
            }
            Effect::Run(Action::ResetAdoption) => {
                app.on_action(Action::ResetAdoption, self.agent.reset_adoption().map(Some));
            }
            Effect::Run(action @ (Action::Reboot | Action::PowerOff)) => {
                // PID 1 reboots on SIGTERM and powers off on SIGUSR2, stopping services first.
                let sig = if action == Action::Reboot {
                    libc::SIGTERM
                } else {
                    libc::SIGUSR2
                };
                // SAFETY: kill has no memory effects.
                let answer = if unsafe { libc::kill(1, sig) } == 0 {
                    Ok(None)
                } else {
                    Err(ApiError::Failed(
                        std::io::Error::last_os_error().to_string(),
                    ))
                };
                app.on_action(action, answer);
            }
            // Creating the state partition asks its own questions (Effect::CreateState).
            Effect::Run(Action::CreateState) | Effect::Redraw => {}
        }
    }
}

/// Waits for Enter (or any key) before the screen is taken over.
fn wait_for_enter(out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(b"\r\nKeel console: press Enter to open it.\r\n")?;
    out.flush()?;
    loop {
        let bytes = term::read_timeout(0, Duration::from_secs(3600))?;
        if bytes.contains(&b'\r') || bytes.contains(&b'\n') {
            return Ok(());
        }
    }
}

/// Entry point of `keel console`: runs on the terminal on stdin/stdout until it hangs up.
pub fn run(args: &[String]) -> ExitCode {
    // To the kernel log; warnings and errors also to the terminal, where only they can appear
    // (before the screen is drawn or after it is given up), never an info line over the screen.
    let _ = keel_logger::Logger::kmsg(env!("CARGO_CRATE_NAME"), keel_logger::Facility::User)
        .echo(keel_logger::LevelFilter::Warn, |line| eprintln!("{line}"))
        .install();
    let options = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("keel console: {e}");
            return ExitCode::from(2);
        }
    };
    let _raw = match term::RawMode::enable(0) {
        Ok(raw) => raw,
        Err(e) => {
            log::error!("keel console: standard input is not a terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    match ui(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("keel console: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ui(options: &Options) -> std::io::Result<()> {
    let mut out = std::io::stdout();
    if options.press_enter {
        wait_for_enter(&mut out)?;
    }
    let (w, h) = term::size(1).unwrap_or(term::DEFAULT_SIZE);
    let mut area = Rect::new(0, 0, w, h);
    let mut terminal = Terminal::with_options(
        TermionBackend::new(out),
        TerminalOptions {
            viewport: Viewport::Fixed(area),
        },
    )?;
    terminal.hide_cursor()?;
    terminal.clear()?;
    let sources = Sources {
        agent: Client::new(&options.socket),
        local: Local::new(),
    };
    let mut app = App::new();
    let mut decoder = keys::Decoder::default();
    sources.refresh(&mut app);
    let (mut refreshed, mut cleared) = (Instant::now(), Instant::now());
    loop {
        if let Some((w, h)) = term::size(1) {
            if (w, h) != (area.width, area.height) {
                area = Rect::new(0, 0, w, h);
                terminal.resize(area)?;
            }
        }
        if cleared.elapsed() >= FULL_REDRAW {
            terminal.clear()?;
            cleared = Instant::now();
        }
        terminal.draw(|f| view::draw(f, &app))?;
        let wait = REFRESH.saturating_sub(refreshed.elapsed());
        let mut keys = decoder.feed(&term::read_timeout(0, wait)?);
        if keys.is_empty() {
            // A lone ESC, or the start of a sequence whose rest is late on a slow line.
            let more = term::read_timeout(0, ESC_WAIT)?;
            keys = if more.is_empty() {
                decoder.flush()
            } else {
                decoder.feed(&more)
            };
        }
        for key in keys {
            for effect in app.on_key(key) {
                if effect == Effect::Redraw {
                    terminal.clear()?;
                    cleared = Instant::now();
                } else {
                    // Show what the key did ("Asking ... for its CA certificate") before a
                    // request that may take seconds (a manager probe, a network test).
                    terminal.draw(|f| view::draw(f, &app))?;
                }
                sources.perform(&mut app, effect);
            }
        }
        if refreshed.elapsed() >= REFRESH {
            sources.refresh(&mut app);
            refreshed = Instant::now();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_args(&args(&[])).unwrap(),
            Options {
                press_enter: false,
                socket: localapi::SOCKET.into()
            }
        );
        assert_eq!(
            parse_args(&args(&["--press-enter", "--socket", "/x.sock"])).unwrap(),
            Options {
                press_enter: true,
                socket: "/x.sock".into()
            }
        );
        assert!(parse_args(&args(&["--socket"])).is_err());
        assert!(parse_args(&args(&["--frob"]))
            .unwrap_err()
            .contains("\"--frob\""));
    }
}
