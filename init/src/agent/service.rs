//! `keel agent`: the host agent as a PID 1 service (/etc/keel/services/50-agent.json).
//!
//! At start it makes or loads the host identity, shows the key fingerprint on the consoles, waits
//! for the host to have an IPv4 address, listens on port 8443 and prints the one line a script
//! reads: `keel ready: api=https://<ip>:8443 fingerprint=sha256:<hex> adopt-token=<token>`
//! (`adopt-token=-` once adopted). It then registers with the manager named by `keel.manager=`
//! or on the console (`registration`).

use super::clock::SystemClock;
use super::console_backend::AgentConsole;
use super::datastore;
use super::register;
use super::registration::{CommandLine, Registration};
use super::server::{Agent, AgentConfig};
use crate::localapi;
use crate::pid1::{cmdline, output};
use keel_logger::Facility;
use log::{error, info, warn};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub const USAGE: &str = "usage: keel agent [options]\n\
    \n\
    \x20 --port N             HTTPS port (8443)\n\
    \x20 --state-dir DIR      identity, adoption and VM definitions (agent/ on the state\n\
    \x20                      partition, or /var/lib/keel without one: lost at reboot)\n\
    \x20 --data-dir DIR       image store (/var/lib/keel/data)\n\
    \x20 --run-dir DIR        VM sockets and logs (/run/keel/vms)\n\
    \x20 --vmm PATH           keel-vmm binary (/usr/bin/keel-vmm)\n\
    \x20 --ram-store-mib N    size of the RAM image store without a KEEL-DATA disk (1024)\n";

/// The agent's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub port: u16,
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub vmm: PathBuf,
    pub ram_store_mib: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            port: 8443,
            state_dir: default_state_dir(),
            data_dir: "/var/lib/keel/data".into(),
            run_dir: "/run/keel/vms".into(),
            vmm: "/usr/bin/keel-vmm".into(),
            ram_store_mib: 1024,
        }
    }
}

/// `agent/` on the state partition when the boot medium has one (docs/boot-media.md), so the
/// host keeps its identity, adoption and VMs across reboots; otherwise /var/lib/keel in RAM.
fn default_state_dir() -> PathBuf {
    crate::state::status()
        .dir()
        .map_or_else(|| "/var/lib/keel".into(), |dir| dir.join("agent"))
}

/// Parses `--flag value` pairs; every error names the flag or value.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what} {value:?} is not a number"))
        };
        match flag.as_str() {
            "--port" => {
                o.port = u16::try_from(number("--port")?)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("--port {value} is not 1..=65535"))?;
            }
            "--state-dir" => o.state_dir = value.into(),
            "--data-dir" => o.data_dir = value.into(),
            "--run-dir" => o.run_dir = value.into(),
            "--vmm" => o.vmm = value.into(),
            "--ram-store-mib" => o.ram_store_mib = number("--ram-store-mib")?.max(16),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// The first IPv4 address that is not loopback, in interface order (PID 1's host networking
/// configures them; docs/network.md).
fn first_ipv4() -> Option<Ipv4Addr> {
    let state = crate::net::rtnetlink::Rtnetlink::open()
        .ok()?
        .state()
        .ok()?;
    state
        .links
        .iter()
        .flat_map(|link| &link.addrs)
        .find_map(|net| match net.addr {
            std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
            _ => None,
        })
}

/// Waits for an IPv4 address other than loopback, saying once that it waits.
fn wait_for_address() -> Ipv4Addr {
    let mut said = false;
    loop {
        if let Some(ip) = first_ipv4() {
            return ip;
        }
        if !said {
            info!("keel-agent: waiting for an IPv4 address");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SIGTERM (PID 1 stopping services at shutdown) and SIGINT, blocked in every thread so that
/// the main thread can wait for them.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t and the signals are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Starts registering with the manager of the kernel command line or the console's saved
/// choice (`registration`); without a thread for it the agent carries on unregistered.
fn start_registration(
    agent: &Arc<Agent>,
    params: &cmdline::KeelParams,
    options: &Options,
) -> Option<Arc<Registration>> {
    let cmdline = CommandLine {
        manager: params.manager.clone(),
        manager_ca: params.manager_ca.clone(),
        join_token: params.join_token.clone(),
    };
    let started = Registration::start(
        Arc::clone(agent),
        options.state_dir.clone(),
        &cmdline,
        params.hostname.clone(),
        options.port,
        register::host_addresses,
    );
    started
        .map_err(|e| error!("keel-agent: cannot start the registration thread: {e}"))
        .ok()
}

/// Serves the local console (`keel console`) on its socket (mode 0600) from a thread of its
/// own. Without it the console still shows what it reads itself, so a failure is logged, not
/// fatal.
fn serve_console(backend: &Arc<AgentConsole>) {
    let listener = match localapi::server::bind(Path::new(localapi::SOCKET)) {
        Ok(listener) => listener,
        Err(e) => return error!("keel-agent: {e}"),
    };
    let backend: Arc<dyn localapi::ConsoleBackend> = backend.clone();
    let spawned = std::thread::Builder::new()
        .name("console-api".into())
        .spawn(move || localapi::server::serve_on(listener, backend));
    if let Err(e) = spawned {
        error!("keel-agent: cannot serve the console: {e}");
    }
}

/// How long guests get to power off when the host shuts down (PID 1 waits 10 s for services).
const VM_GRACE: Duration = Duration::from_secs(7);

/// Runs the agent until SIGTERM, which stops the VMs first (host shutdown). A crash or SIGKILL
/// leaves them running for the next agent to take back.
pub fn run(args: &[String]) -> ExitCode {
    // Before any thread starts, so that all inherit the mask (keel-vmm gets a clean one).
    let signals = stop_signals();
    output::open();
    output::init_logging(Facility::Daemon, output::say);
    let options = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("keel agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(&options, &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("keel-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(options: &Options, signals: &libc::sigset_t) -> Result<(), String> {
    let params = std::fs::read_to_string("/proc/cmdline")
        .map(|text| cmdline::parse(&text).params)
        .unwrap_or_default();
    let (store_kind, store_line) = datastore::prepare(&options.data_dir, options.ram_store_mib)
        .map_err(|e| {
            format!(
                "cannot prepare the data store {}: {e}",
                options.data_dir.display()
            )
        })?;
    info!("keel-agent: {store_line}");
    let mut config = AgentConfig::new(options.state_dir.clone(), Vec::new());
    config.preset_token = params.adopt_token.clone();
    config.data_dir = options.data_dir.clone();
    config.store_kind = store_kind;
    config.run_dir = options.run_dir.clone();
    config.vmm = options.vmm.clone();
    config.jail = Some(crate::jail::Jailer::default());
    config.power_pid = (std::os::unix::process::parent_id() == 1).then_some(1);
    // The console serves from now on: the operator may have to set up the network that
    // the agent waits for.
    let console_api = Arc::new(AgentConsole::new());
    serve_console(&console_api);
    // The certificate names the host by the address it is reached at.
    let ip = wait_for_address();
    config.names = vec![ip.to_string()];
    if let Some(name) = params.hostname.clone() {
        config.names.push(name);
    }
    let agent = Agent::open(config, Arc::new(SystemClock)).map_err(|e| e.to_string())?;
    let fingerprint = agent.fingerprint();
    info!("keel-agent: host key fingerprint {fingerprint}");
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, options.port)))
        .map_err(|e| format!("cannot listen on port {}: {e}", options.port))?;
    let _server = agent
        .spawn(listener)
        .map_err(|e| format!("cannot start the listener: {e}"))?;
    let token = agent.token().unwrap_or_else(|| "-".into());
    info!(
        "keel ready: api=https://{ip}:{} fingerprint={fingerprint} adopt-token={token}",
        options.port
    );
    let registration = start_registration(&agent, &params, options);
    console_api.attach(Arc::clone(&agent), registration);
    loop {
        // SAFETY: signals is a valid set; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigwaitinfo(signals, std::ptr::null_mut()) };
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            break;
        }
    }
    info!("keel-agent: stopping: shutting the VMs down");
    let forced = agent.stop_vms(VM_GRACE);
    if forced > 0 {
        warn!("keel-agent: powered off {forced} VM(s) that did not shut down in time");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        assert_eq!(parse_args(&[]).unwrap(), Options::default());
        let o = parse_args(&args(&["--port", "9443", "--state-dir", "/s"])).unwrap();
        assert_eq!((o.port, o.state_dir.to_str()), (9443, Some("/s")));
        let cases = [
            (&["--port"][..], "--port needs a value"),
            (&["--port", "0"][..], "--port 0"),
            (&["--port", "x"][..], "\"x\" is not a number"),
            (&["--frob", "1"][..], "\"--frob\""),
        ];
        for (a, want) in cases {
            let err = parse_args(&args(a)).unwrap_err();
            assert!(err.contains(want), "{a:?}: {err}");
        }
    }
}
