//! keelctl: the manager side of Keel. Makes the manager CA, adopts hosts over mutual TLS, and
//! drives their VMs and images through the agent API (`keel_trust::client`).

mod config;
mod db;
mod manager;
mod output;

use clap::{Parser, Subcommand, ValueEnum};
use config::{Config, HostEntry};
use keel_api::agent::{self as api, ImageKind, OnCrash, VmSpec};
use keel_api::net::{NetConfig, Status as NetStatus};
use keel_trust::client::{ClientError, HostClient};
use keel_trust::fingerprint::Fingerprint;
use manager::{AddressMap, Manager};
use output::Format;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Parser)]
#[command(name = "keelctl", version, about = "Manage Keel hosts and their VMs")]
struct Cli {
    /// Configuration directory (default: $XDG_CONFIG_HOME/keel or ~/.config/keel)
    #[arg(long, global = true, env = "KEELCTL_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// The host to talk to: a name given at adoption (default: the last adopted)
    #[arg(long, global = true, env = "KEELCTL_HOST")]
    host: Option<String>,
    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Seconds one request to a host may take (to connect, and for each read or write)
    #[arg(long, global = true, env = "KEELCTL_TIMEOUT", default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    #[command(subcommand)]
    command: Top,
}

/// Waiting for a VM operation the host accepted to finish.
#[derive(clap::Args, Clone, Copy)]
struct WaitArgs {
    /// Return once the host accepted the operation, without waiting for its end
    #[arg(long)]
    no_wait: bool,
    /// Seconds to wait for the operation's end before failing
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    wait_timeout: u64,
}

impl WaitArgs {
    /// How long to wait, or `None` for not at all.
    fn limit(self) -> Option<Duration> {
        (!self.no_wait).then(|| Duration::from_secs(self.wait_timeout))
    }
}

#[derive(Subcommand)]
enum Top {
    /// The manager CA
    #[command(subcommand)]
    Ca(CaCmd),
    /// Hosts: adopt, release, inspect, approve registered ones
    #[command(subcommand)]
    Host(HostCmd),
    /// The registration service hosts announce themselves to, and its join tokens
    #[command(subcommand)]
    Manager(ManagerCmd),
    /// Virtual machines
    #[command(subcommand)]
    Vm(VmCmd),
    /// Kernels, initrds and disk images in the host's store
    #[command(subcommand)]
    Image(ImageCmd),
}

#[derive(Subcommand)]
enum CaCmd {
    /// Make the manager CA and keelctl's client certificate
    Init {
        #[arg(long, default_value = "keel manager")]
        name: String,
        /// Validity in days
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (hosts adopted with the old one will refuse keelctl)
        #[arg(long)]
        force: bool,
    },
    /// SHA-256 of the CA certificate: what hosts pin with keel.manager_ca=
    Fingerprint,
}

#[derive(Subcommand)]
enum ManagerCmd {
    /// Receive host registrations over HTTPS; adopt hosts with a valid join token
    Serve {
        /// Address to listen on (port 0: any free port; the address is printed)
        #[arg(long, default_value = "0.0.0.0:8444")]
        listen: SocketAddr,
        /// Name or address hosts reach this manager by, as in their keel.manager= (repeatable;
        /// default: the listen address)
        #[arg(long = "name")]
        names: Vec<String>,
        /// Reach a host announcing FROM (address:port) at TO instead (NAT); repeatable
        #[arg(long = "address-map")]
        address_map: Vec<AddressMap>,
        /// Validity of adopted hosts' certificates in days
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Join tokens: a host registering with a valid one is adopted without approval
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a join token (printed once; only its hash is kept)
    Create {
        /// Hours it stays valid (0: until the database is deleted)
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Revoke a join token: hosts presenting it wait for approval from now on
    Revoke {
        /// The token (it may start with '-')
        #[arg(allow_hyphen_values = true)]
        token: String,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    /// Adopt a host: pin its key, present its one-time token, sign its certificate
    Adopt {
        /// host[:port] (port 8443 by default)
        addr: String,
        /// The adoption token the host shows on its console (it may start with '-')
        #[arg(long, allow_hyphen_values = true)]
        token: String,
        /// The host key fingerprint the host shows on its console (sha256:…)
        #[arg(long)]
        fingerprint: String,
        /// Name to remember the host by (default: the address)
        #[arg(long)]
        name: Option<String>,
        /// Validity of the host certificate in days
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Hosts that registered and wait for approval (or whose adoption failed)
    Pending {
        /// Every registered host, adopted ones too
        #[arg(long)]
        all: bool,
    },
    /// Adopt a registered host (see `host pending`) with the adoption token it sent
    Approve {
        /// The host ID
        id: String,
        /// Reach the host's API at this address:port instead of the addresses it announced
        #[arg(long)]
        address: Option<String>,
        /// Validity of the host certificate in days
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Release the host: it forgets this manager and can be adopted again
    Release,
    /// Identity, capabilities and hardware of the host
    Info,
    /// CPU, memory, load, NIC and VM statistics
    Stats,
    /// The host's ingress firewall, in nft syntax
    Firewall,
    /// The host's log (the kernel's and Keel's records) with levels, as
    /// `[  12.345678] err keel-agent: …`; `-o json`: a JSON array (JSON lines with --follow)
    Logs {
        /// Only the records after this sequence number (`seq` in the JSON)
        #[arg(long)]
        after: Option<u64>,
        /// Then keep printing new records as the host logs them, until interrupted
        #[arg(long)]
        follow: bool,
    },
    /// The host's state partition: mounted (settings survive a reboot), none or damaged
    State,
    /// Create a state partition on a local disk of the host, erasing the whole disk
    CreateState {
        /// The disk, as the host names it (/dev/vdb)
        disk: String,
        /// The same disk again, to confirm that it may be erased
        #[arg(long)]
        confirm: String,
        /// Size in MiB (default 1024, or the whole disk if smaller; at most 65536)
        #[arg(long)]
        size_mib: Option<u64>,
    },
    /// The host's network: show, preview, apply with automatic rollback, confirm
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Running and saved configuration, links and addresses, gateways, a pending change
    Show,
    /// What applying the change in FILE (JSON, docs/network.md; - for stdin) would do
    Preview { file: PathBuf },
    /// Apply the change in FILE; unless confirmed in time, it is rolled back when the host can
    /// no longer reach its gateway (or --manager)
    Apply {
        file: PathBuf,
        /// Seconds to confirm in (5..=3600)
        #[arg(long)]
        confirm_within: Option<u64>,
        /// host:port that must stay reachable
        #[arg(long)]
        manager: Option<String>,
    },
    /// Keep the pending change
    Confirm,
}

/// A network change from `file` (`-`: standard input).
fn read_net_config(file: &Path) -> Result<NetConfig, Error> {
    let text = if file == Path::new("-") {
        io::read_to_string(io::stdin()).map_err(|e| Error::File(file.to_path_buf(), e))?
    } else {
        std::fs::read_to_string(file).map_err(|e| Error::File(file.to_path_buf(), e))?
    };
    serde_json::from_str(&text).map_err(|e| {
        Error::File(
            file.to_path_buf(),
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })
}

fn network_cmd(t: &Target, fmt: Format, cmd: NetworkCmd) -> Result<(), Error> {
    match cmd {
        NetworkCmd::Show => {
            let status: NetStatus = t.get(api::HOST_NETWORK)?;
            output::print(fmt, &status, output::network_status)
        }
        NetworkCmd::Preview { file } => {
            let change = read_net_config(&file)?;
            let preview: api::NetworkPreview =
                t.send("POST", api::HOST_NETWORK_PREVIEW, Some(&change))?;
            output::print(fmt, &preview, |p| output::lines(&p.operations))
        }
        NetworkCmd::Apply {
            file,
            confirm_within,
            manager,
        } => {
            let body = api::NetworkChange {
                change: read_net_config(&file)?,
                confirm_within_secs: confirm_within,
                manager,
            };
            let applied: api::NetworkApplied = t.send("POST", api::HOST_NETWORK, Some(&body))?;
            output::print(fmt, &applied, |a| {
                format!(
                    "{}confirm within {} s (keelctl host network confirm) or it may roll back\n",
                    output::lines(&a.operations),
                    a.confirm_within_secs
                )
            })
        }
        NetworkCmd::Confirm => {
            let _: serde_json::Value = t.send::<(), _>("POST", api::HOST_NETWORK_CONFIRM, None)?;
            output::message(fmt, &format!("{}: network change confirmed", t.name))
        }
    }
}

/// `--disk IMAGE[,shared][,ro][,serial=S]`.
fn parse_disk(text: &str) -> Result<api::VmDisk, String> {
    let mut parts = text.split(',');
    let image = parts
        .next()
        .filter(|i| !i.is_empty())
        .ok_or("needs an image name")?;
    let mut disk = api::VmDisk {
        image: image.into(),
        copy: api::DiskCopy::Copy,
        read_only: false,
        serial: None,
    };
    for part in parts {
        match part.split_once('=') {
            None if part == "shared" => disk.copy = api::DiskCopy::Shared,
            None if part == "ro" => disk.read_only = true,
            Some(("serial", serial)) => disk.serial = Some(serial.into()),
            _ => return Err(format!("unknown option {part:?} (shared, ro, serial=S)")),
        }
    }
    Ok(disk)
}

/// `--nic BRIDGE[,mac=MAC]`.
fn parse_nic(text: &str) -> Result<api::VmNic, String> {
    let mut parts = text.split(',');
    let bridge = parts
        .next()
        .filter(|b| !b.is_empty())
        .ok_or("needs a bridge name")?;
    let mut nic = api::VmNic {
        bridge: bridge.into(),
        mac: None,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("mac", mac)) => nic.mac = Some(mac.into()),
            _ => return Err(format!("unknown option {part:?} (mac=MAC)")),
        }
    }
    Ok(nic)
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Kernel,
    Initrd,
    Disk,
}

impl From<Kind> for ImageKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Kernel => ImageKind::Kernel,
            Kind::Initrd => ImageKind::Initrd,
            Kind::Disk => ImageKind::Disk,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Crash {
    Stop,
    Restart,
}

#[derive(Subcommand)]
enum VmCmd {
    /// Define a VM
    Create {
        name: String,
        /// Kernel image name (see `keelctl image list`)
        #[arg(long)]
        kernel: String,
        /// Initrd image name
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// Memory in MiB
        #[arg(long, default_value_t = 256)]
        memory: u64,
        #[arg(long, default_value = "console=ttyS0")]
        cmdline: String,
        /// What to do when the guest or its VMM crashes
        #[arg(long, value_enum, default_value_t = Crash::Stop)]
        on_crash: Crash,
        /// A disk: IMAGE[,shared][,ro][,serial=S] (repeatable; vda, vdb, … in order). The VM
        /// gets a private copy of the disk image unless `shared`
        #[arg(long = "disk", value_parser = parse_disk)]
        disks: Vec<api::VmDisk>,
        /// A NIC on a host bridge: BRIDGE[,mac=MAC] (repeatable), e.g. keelbr0
        #[arg(long = "nic", value_parser = parse_nic)]
        nics: Vec<api::VmNic>,
        /// Start it right away (and wait until it runs, as `vm start`)
        #[arg(long)]
        start: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List VMs
    List,
    /// Show one VM
    Get {
        name: String,
    },
    /// Start a stopped VM and wait until it runs (fails with the reason when it does not)
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Press the VM's ACPI power button (the guest shuts down by itself)
    Shutdown {
        name: String,
        /// Wait until the guest has powered off
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait before failing
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        wait_timeout: u64,
    },
    /// Stop the VM at once and wait until it has stopped
    Poweroff {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Delete a stopped VM
    Delete {
        name: String,
    },
    /// Print the VM's serial console output
    Console {
        name: String,
        /// Keep printing until the VM stops
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Upload a file (streamed, SHA-256 verified by the host); `-` reads standard input and
    /// sends it chunked, its SHA-256 in a trailer
    Upload {
        #[arg(value_enum)]
        kind: Kind,
        file: PathBuf,
        /// Name in the store (default: the file name; required with `-`)
        #[arg(long)]
        name: Option<String>,
    },
    /// List images and the store's space
    List,
    /// Delete an image no VM uses
    Delete {
        #[arg(value_enum)]
        kind: Kind,
        name: String,
    },
}

/// What went wrong, with the host it concerned.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// {host}: {err}
    #[error("{host}: {err}")]
    Host { host: String, err: ClientError },
    /// Bad --fingerprint {0:?}: {1}
    #[error("Bad --fingerprint {0:?}: {1}")]
    Fingerprint(String, String),
    /// Cannot read {0}: {1}
    #[error("Cannot read {0}: {1}")]
    File(PathBuf, io::Error),
    /// Cannot write the output: {0}
    #[error("Cannot write the output: {0}")]
    Output(io::Error),
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Cannot listen on {0}: {1}
    #[error("Cannot listen on {0}: {1}")]
    Listen(SocketAddr, io::Error),
    /// The manager cannot start: {0}
    #[error("The manager cannot start: {0}")]
    Manager(String),
    /// Name the image with --name when uploading from standard input
    #[error("Name the image with --name when uploading from standard input")]
    NoName,
    /// Host {0} sent no adoption token: it is adopted already (release it from its manager first)
    #[error("Host {0} sent no adoption token: it is adopted already (release it from its manager first)")]
    NoAdoptToken(String),
    /// Host {id} does not answer with its registered key at any of: {tried}
    #[error("Host {id} does not answer with its registered key at any of: {tried}")]
    Unreachable { id: String, tried: String },
    /// VM {name} did not start: {error}
    #[error("VM {name} did not start: {error}")]
    StartFailed { name: String, error: String },
    /// VM {name} is still {state} after {secs} s (`keelctl vm get {name}` shows it)
    #[error("VM {name} is still {state} after {secs} s (`keelctl vm get {name}` shows it)")]
    StillGoing {
        name: String,
        state: String,
        secs: u64,
    },
}

/// Adopts the host at `sock` whose key is `pin` with its one-time `token`, and remembers it as
/// `name`: `host adopt`, `host approve` and the manager's automatic adoption all come here.
fn adopt_host(
    config: &Config,
    sock: SocketAddr,
    pin: Fingerprint,
    token: &str,
    name: &str,
    days: u32,
) -> Result<(), Error> {
    let ca = config.ca()?;
    let host_err = |err| Error::Host {
        host: format!("{name} ({sock})"),
        err,
    };
    let client = HostClient::new(sock, pin, None).map_err(host_err)?;
    client.adopt(token, &ca, days).map_err(host_err)?;
    let entry = HostEntry {
        addr: sock.to_string(),
        fingerprint: pin,
    };
    Ok(config.save_host(name, &entry)?)
}

/// A connected host.
struct Target {
    name: String,
    client: HostClient,
}

impl Target {
    fn open(config: &Config, host: Option<&str>, timeout: Duration) -> Result<Self, Error> {
        let (name, addr, pin) = config.host(host)?;
        let cert = config.client_cert()?;
        let client = HostClient::new(addr, pin, Some(&cert)).map_err(|err| Error::Host {
            host: name.clone(),
            err,
        })?;
        let client = client.with_timeout(timeout);
        Ok(Self { name, client })
    }

    fn err(&self, err: ClientError) -> Error {
        Error::Host {
            host: format!("{} ({})", self.name, self.client.addr()),
            err,
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.client
            .call::<(), T>("GET", path, None)
            .map_err(|e| self.err(e))
    }

    fn send<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        self.client
            .call(method, path, body)
            .map_err(|e| self.err(e))
    }
}

fn vm_path(pattern: &str, name: &str) -> String {
    pattern.replace("{name}", name)
}

fn run(cli: Cli) -> Result<(), Error> {
    let config = Config::locate(cli.config_dir.clone())?;
    let fmt = cli.output;
    let host = cli.host.as_deref();
    let timeout = Duration::from_secs(cli.timeout);
    match cli.command {
        Top::Ca(CaCmd::Init { name, days, force }) => {
            config.init_ca(&name, days, force)?;
            output::message(
                fmt,
                &format!("manager CA created in {}", config.dir().display()),
            )
        }
        Top::Ca(CaCmd::Fingerprint) => {
            let fp = config.ca_fingerprint()?;
            output::message(fmt, &fp.to_string())
        }
        Top::Host(cmd) => host_cmd(&config, host, timeout, fmt, cmd),
        Top::Manager(cmd) => manager_cmd(config, fmt, cmd),
        Top::Vm(cmd) => vm_cmd(&Target::open(&config, host, timeout)?, fmt, cmd),
        Top::Image(cmd) => image_cmd(&Target::open(&config, host, timeout)?, fmt, cmd),
    }
}

fn host_cmd(
    config: &Config,
    host: Option<&str>,
    timeout: Duration,
    fmt: Format,
    cmd: HostCmd,
) -> Result<(), Error> {
    match cmd {
        HostCmd::Adopt {
            addr,
            token,
            fingerprint,
            name,
            days,
        } => {
            let pin: Fingerprint =
                fingerprint
                    .parse()
                    .map_err(|e: keel_trust::fingerprint::FingerprintError| {
                        Error::Fingerprint(fingerprint.clone(), e.to_string())
                    })?;
            let sock = config::resolve(&addr)?;
            let name = name.unwrap_or_else(|| addr.clone());
            adopt_host(config, sock, pin, &token, &name, days)?;
            output::message(fmt, &format!("adopted {name} ({sock}, {pin})"))
        }
        HostCmd::Pending { all } => {
            let db = db::Db::open(&config.dir().join(db::DB_FILE))?;
            let mut list = db.list(None)?;
            if !all {
                list.retain(|r| matches!(r.state, db::HostState::Pending | db::HostState::Failed));
            }
            let view: Vec<output::RegisteredHost> =
                list.iter().map(output::RegisteredHost::from).collect();
            output::print(fmt, &view, |v| output::registered_table(v))
        }
        HostCmd::Approve { id, address, days } => {
            let db = db::Db::open(&config.dir().join(db::DB_FILE))?;
            let reg = db.require(&id)?;
            let reach = match address {
                Some(a) => vec![config::resolve(&a)?],
                None => manager::candidates(&reg, &[]),
            };
            let name = manager::adopt_registered(config, &db, &reg, &reach, days)?;
            output::message(
                fmt,
                &format!("adopted {name} ({})", reg.document.fingerprint),
            )
        }
        HostCmd::Release => {
            let target = Target::open(config, host, timeout)?;
            let answer: api::ReleaseResponse = target.send::<(), _>("POST", api::RELEASE, None)?;
            config.forget_host(&target.name);
            output::print(fmt, &answer, |a| {
                format!("released {}: {:?}\n", target.name, a.adoption)
            })
        }
        HostCmd::Info => {
            let info: api::HostInfo = Target::open(config, host, timeout)?.get(api::HOST)?;
            output::print(fmt, &info, output::host_info)
        }
        HostCmd::Stats => {
            let stats: api::HostStats =
                Target::open(config, host, timeout)?.get(api::HOST_STATS)?;
            output::print(fmt, &stats, output::host_stats)
        }
        HostCmd::Firewall => {
            let rules: keel_api::firewall::Description =
                Target::open(config, host, timeout)?.get(api::HOST_FIREWALL)?;
            output::print(fmt, &rules, output::firewall)
        }
        HostCmd::Logs { after, follow } => {
            let t = Target::open(config, host, timeout)?;
            let mut query = Vec::new();
            query.extend(after.map(|seq| format!("after={seq}")));
            if follow {
                query.push("follow=true".to_string());
            }
            let mut path = keel_api::logs::HOST_LOGS.to_string();
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            if follow {
                let mut out = output::LogStream::print(fmt, io::stdout().lock());
                return t.client.stream_get(&path, &mut out).map_err(|e| t.err(e));
            }
            let mut records = output::LogStream::collect();
            t.client
                .stream_get(&path, &mut records)
                .map_err(|e| t.err(e))?;
            output::print(fmt, &records.entries, |e| output::log_lines(e))
        }
        HostCmd::State => {
            let state: keel_api::state::Status =
                Target::open(config, host, timeout)?.get(api::HOST_STATE)?;
            output::print(fmt, &state, |s| format!("{}\n", s.console_line()))
        }
        HostCmd::CreateState {
            disk,
            confirm,
            size_mib,
        } => {
            let request = api::CreateStateRequest {
                disk,
                confirm,
                size_mib,
            };
            let state: keel_api::state::Status = Target::open(config, host, timeout)?.send(
                "POST",
                api::HOST_STATE,
                Some(&request),
            )?;
            output::print(fmt, &state, |s| format!("{}\n", s.console_line()))
        }
        HostCmd::Network { cmd } => network_cmd(&Target::open(config, host, timeout)?, fmt, cmd),
    }
}

fn manager_cmd(config: Config, fmt: Format, cmd: ManagerCmd) -> Result<(), Error> {
    match cmd {
        ManagerCmd::Token(TokenCmd::Create { hours }) => {
            let db = db::Db::open(&config.dir().join(db::DB_FILE))?;
            let ttl = (hours > 0).then(|| Duration::from_secs(hours.saturating_mul(3600)));
            let token = db.create_join_token(SystemTime::now(), ttl)?;
            output::message(fmt, &token)
        }
        ManagerCmd::Token(TokenCmd::Revoke { token }) => {
            db::Db::open(&config.dir().join(db::DB_FILE))?.revoke_join_token(&token)?;
            output::message(fmt, "join token revoked")
        }
        ManagerCmd::Serve {
            listen,
            mut names,
            address_map,
            days,
        } => {
            if names.is_empty() {
                if listen.ip().is_unspecified() {
                    return Err(Error::Manager(format!(
                        "listening on {listen}, give --name with the address or DNS name hosts use in keel.manager="
                    )));
                }
                names.push(listen.ip().to_string());
            }
            let fingerprint = config.ca_fingerprint()?;
            // Fail now rather than at the first registration.
            db::Db::open(&config.dir().join(db::DB_FILE))?;
            let manager = Arc::new(Manager {
                config,
                map: address_map,
                days,
            });
            let tls = manager.tls(&names)?;
            let listener = TcpListener::bind(listen).map_err(|e| Error::Listen(listen, e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::Listen(listen, e))?;
            output::message(
                fmt,
                &format!(
                    "keelctl manager: listening on https://{bound} as {}; hosts pin keel.manager_ca={fingerprint}",
                    names.join(", ")
                ),
            )?;
            manager.serve(&listener, tls);
            Ok(())
        }
    }
}

fn vm_cmd(t: &Target, fmt: Format, cmd: VmCmd) -> Result<(), Error> {
    let show = |status: &api::VmStatus| {
        output::print(fmt, status, |s| output::vm_table(std::slice::from_ref(s)))
    };
    let action = |pattern: &str, name: &str| -> Result<api::VmStatus, Error> {
        t.send::<(), _>("POST", &vm_path(pattern, name), None)
    };
    let start = |name: &str, wait: WaitArgs| -> Result<(), Error> {
        let status = action(api::VM_START, name)?;
        show(&wait_vm(t, status, wait.limit(), started)?)
    };
    match cmd {
        VmCmd::Create {
            name,
            kernel,
            initrd,
            vcpus,
            memory,
            cmdline,
            on_crash,
            disks,
            nics,
            start: and_start,
            wait,
        } => {
            let spec = VmSpec {
                name: name.clone(),
                vcpus,
                memory_mib: memory,
                kernel,
                initrd,
                cmdline,
                on_crash: match on_crash {
                    Crash::Stop => OnCrash::Stop,
                    Crash::Restart => OnCrash::Restart,
                },
                disks,
                nics,
            };
            let status: api::VmStatus = t.send("POST", api::VMS, Some(&spec))?;
            if and_start {
                start(&name, wait)
            } else {
                show(&status)
            }
        }
        VmCmd::List => {
            let list: api::VmList = t.get(api::VMS)?;
            output::print(fmt, &list, |l| output::vm_table(&l.vms))
        }
        VmCmd::Get { name } => {
            let status: api::VmStatus = t.get(&vm_path(api::VM, &name))?;
            output::print(fmt, &status, output::vm_detail)
        }
        VmCmd::Start { name, wait } => start(&name, wait),
        VmCmd::Shutdown {
            name,
            wait,
            wait_timeout,
        } => {
            let status = action(api::VM_SHUTDOWN, &name)?;
            let limit = wait.then(|| Duration::from_secs(wait_timeout));
            show(&wait_vm(t, status, limit, stopped)?)
        }
        VmCmd::Poweroff { name, wait } => {
            let status = action(api::VM_POWEROFF, &name)?;
            show(&wait_vm(t, status, wait.limit(), stopped)?)
        }
        VmCmd::Pause { name } => show(&action(api::VM_PAUSE, &name)?),
        VmCmd::Resume { name } => show(&action(api::VM_RESUME, &name)?),
        VmCmd::Delete { name } => {
            let status: api::VmStatus =
                t.send::<(), _>("DELETE", &vm_path(api::VM, &name), None)?;
            output::print(fmt, &status, |s| format!("deleted {}\n", s.spec.name))
        }
        VmCmd::Console { name, follow } => {
            let mut path = vm_path(api::VM_CONSOLE, &name);
            if follow {
                path.push_str("?follow=true");
            }
            let mut out = io::stdout().lock();
            t.client.stream_get(&path, &mut out).map_err(|e| t.err(e))
        }
    }
}

/// Where a VM operation that goes on after the host's answer stands: `None` while under way,
/// else how it ended.
type Outcome = fn(&api::VmStatus) -> Option<Result<(), Error>>;

/// A start ends when the VM runs, or when it is stopped: with `error` set the start failed;
/// without, the VM ran and has stopped since (a guest that powered off at once).
fn started(status: &api::VmStatus) -> Option<Result<(), Error>> {
    match (status.state, &status.error) {
        (api::VmState::Starting, _) => None,
        (api::VmState::Stopped, Some(error)) => Some(Err(Error::StartFailed {
            name: status.spec.name.clone(),
            error: error.clone(),
        })),
        _ => Some(Ok(())),
    }
}

/// A shutdown or power-off ends when the VM is stopped.
fn stopped(status: &api::VmStatus) -> Option<Result<(), Error>> {
    (status.state == api::VmState::Stopped).then_some(Ok(()))
}

/// Polls the VM of `status` (the host's answer to an operation) until `outcome` says the
/// operation ended, for at most `limit` (`None`: not at all); returns its last status. A poll
/// that cannot reach the host is tried again until the limit.
fn wait_vm(
    t: &Target,
    mut status: api::VmStatus,
    limit: Option<Duration>,
    outcome: Outcome,
) -> Result<api::VmStatus, Error> {
    let Some(limit) = limit else {
        return Ok(status);
    };
    let path = vm_path(api::VM, &status.spec.name);
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(100);
    loop {
        if let Some(ended) = outcome(&status) {
            return ended.map(|()| status);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::StillGoing {
                name: status.spec.name.clone(),
                state: serde_json::to_value(status.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
        match t.client.call::<(), api::VmStatus>("GET", &path, None) {
            Ok(now) => status = now,
            Err(
                e @ (ClientError::Status { .. } | ClientError::Decode(_) | ClientError::Pin(_)),
            ) => {
                return Err(t.err(e));
            }
            // The host is busy or the network hiccups: the deadline decides.
            Err(_) => {}
        }
    }
}

fn image_cmd(t: &Target, fmt: Format, cmd: ImageCmd) -> Result<(), Error> {
    match cmd {
        ImageCmd::Upload { kind, file, name } => {
            let kind = ImageKind::from(kind);
            let stdin = file.as_os_str() == "-";
            let name = match name {
                Some(name) => name,
                None if stdin => return Err(Error::NoName),
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            let path = format!("/v1/images/{}/{name}", kind.as_str());
            let response = if stdin {
                upload_chunked(&t.client, &path, &mut io::stdin().lock())
            } else {
                let read_err = |e| Error::File(file.clone(), e);
                // Hash first, so the host can verify what arrives: one pass over the file each.
                let mut hasher = Sha256::new();
                let mut f = File::open(&file).map_err(read_err)?;
                let len = io::copy(&mut f, &mut hasher).map_err(read_err)?;
                let digest = keel_api::hex(&hasher.finalize());
                let mut f = File::open(&file).map_err(read_err)?;
                t.client.exchange(|s| {
                    let head = format!(
                        "PUT {path} HTTP/1.1\r\nHost: {}\r\n{}: {digest}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
                        t.client.addr(),
                        api::SHA256_HEADER
                    );
                    s.write_all(head.as_bytes())?;
                    copy_out(&mut f, s, |_| {})?;
                    s.flush()
                })
            }
            .map_err(|e| t.err(e))?;
            let image: api::Image = t.client.decode(response).map_err(|e| t.err(e))?;
            output::print(fmt, &image, |i| {
                output::image_table(std::slice::from_ref(i))
            })
        }
        ImageCmd::List => {
            let list: api::ImageList = t.get(api::IMAGES)?;
            output::print(fmt, &list, output::image_list)
        }
        ImageCmd::Delete { kind, name } => {
            let kind = ImageKind::from(kind);
            let path = format!("/v1/images/{}/{name}", kind.as_str());
            let _: serde_json::Value = t.send::<(), _>("DELETE", &path, None)?;
            output::message(fmt, &format!("deleted {} {name}", kind.as_str()))
        }
    }
}

/// Copies `from` to `to` in large pieces, showing each to `seen`.
fn copy_out(
    from: &mut dyn Read,
    to: &mut dyn Write,
    mut seen: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        seen(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
}

/// Uploads a body whose length is not known before it is sent (standard input): chunked, its
/// SHA-256 computed on the way and sent in a trailer announced by `Trailer`.
fn upload_chunked(
    client: &HostClient,
    path: &str,
    source: &mut dyn Read,
) -> Result<keel_http::Response, ClientError> {
    client.exchange(|s| {
        let host = client.addr().to_string();
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Trailer", api::SHA256_HEADER),
        ];
        keel_http::write_chunked_request_head(s, "PUT", path, &host, &headers)?;
        let mut hasher = Sha256::new();
        let mut body = keel_http::ChunkedWriter::new(&mut *s);
        copy_out(source, &mut body, |piece| hasher.update(piece))?;
        let digest = keel_api::hex(&hasher.finalize());
        body.finish(&[(api::SHA256_HEADER, &digest)])?;
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn disk_and_nic_options() {
        let d = parse_disk("base,shared,ro,serial=abc").unwrap();
        assert_eq!(
            (d.image.as_str(), d.copy, d.read_only, d.serial.as_deref()),
            ("base", api::DiskCopy::Shared, true, Some("abc"))
        );
        let d = parse_disk("base").unwrap();
        assert_eq!((d.copy, d.read_only), (api::DiskCopy::Copy, false));
        for bad in ["", ",ro", "base,rw", "base,size=1"] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        let n = parse_nic("keelbr0,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(
            (n.bridge.as_str(), n.mac.as_deref()),
            ("keelbr0", Some("52:54:00:00:00:01"))
        );
        for bad in ["", "br0,vlan=3"] {
            assert!(parse_nic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_start_ends_running_or_stopped_with_its_error() {
        let status = |state, error: Option<&str>| api::VmStatus {
            spec: VmSpec {
                name: "g1".into(),
                vcpus: 1,
                memory_mib: 64,
                kernel: "k".into(),
                initrd: None,
                cmdline: String::new(),
                on_crash: OnCrash::Stop,
                disks: Vec::new(),
                nics: Vec::new(),
            },
            state,
            pid: None,
            restarts: 0,
            last_exit: None,
            error: error.map(String::from),
            jail: None,
        };
        use api::VmState::*;
        assert!(started(&status(Starting, None)).is_none());
        assert!(matches!(started(&status(Running, None)), Some(Ok(()))));
        assert!(matches!(started(&status(Stopped, None)), Some(Ok(()))));
        let failed = started(&status(Stopped, Some("keel-vmm exited at start")));
        match failed {
            Some(Err(e)) => assert_eq!(
                e.to_string(),
                "VM g1 did not start: keel-vmm exited at start"
            ),
            _ => panic!("a failed start is an error"),
        }
        assert!(stopped(&status(ShuttingDown, None)).is_none());
        assert!(stopped(&status(Starting, None)).is_none());
        assert!(matches!(stopped(&status(Stopped, Some("x"))), Some(Ok(()))));
        // Waiting is the default for start and power-off; --no-wait answers at once.
        let cli = Cli::try_parse_from(["keelctl", "vm", "start", "g1", "--wait-timeout", "5"]);
        match cli.map(|c| c.command) {
            Ok(Top::Vm(VmCmd::Start { wait, .. })) => {
                assert_eq!(wait.limit(), Some(Duration::from_secs(5)));
            }
            _ => panic!("vm start --wait-timeout"),
        }
        let cli = Cli::try_parse_from(["keelctl", "vm", "poweroff", "g1", "--no-wait"]);
        match cli.map(|c| c.command) {
            Ok(Top::Vm(VmCmd::Poweroff { wait, .. })) => assert_eq!(wait.limit(), None),
            _ => panic!("vm poweroff --no-wait"),
        }
    }

    #[test]
    fn a_token_may_start_with_a_hyphen() {
        let cli = Cli::try_parse_from([
            "keelctl",
            "host",
            "adopt",
            "h",
            "--token",
            "-iqw6p",
            "--fingerprint",
            "sha256:00",
        ]);
        match cli.map(|c| c.command) {
            Ok(Top::Host(HostCmd::Adopt { token, .. })) => assert_eq!(token, "-iqw6p"),
            _ => panic!("the token was not taken"),
        }
    }
}
