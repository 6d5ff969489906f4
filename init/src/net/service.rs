//! The network service: holds the layers and the running configuration, applies changes with a
//! confirmation window and rollback, runs the DHCP keepers and writes the resolver configuration.
//! PID 1 owns the one instance (`net::boot`); the agent and the console reach it through the
//! functions in `net` (directly in PID 1, over `/run/keel/net.sock` elsewhere).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::dhcp::Lease;
use super::keeper::{Event, Keeper, Report};
use super::layers::{self, Nic};
use super::model::{Ipv4, NetConfig};
use super::plan::{plan, Op, PlanError, State};
use super::rtnetlink::Rtnetlink;
use super::safe::{decide, probe, Decision};
use super::store::{write_resolv_conf, Store, StoreError};
use super::validate::{validate, Invalid};
use crate::netlink::Error as NetlinkError;

/// How long a change waits for its confirmation by default.
pub const DEFAULT_CONFIRM: Duration = Duration::from_secs(60);
/// How long boot waits for a NIC to report link before picking one.
const CARRIER_WAIT: Duration = Duration::from_secs(3);
/// How long boot's check of a static gateway waits for an answer.
const GATEWAY_CHECK: Duration = Duration::from_secs(10);
/// Per-probe timeout when a change's confirmation window ends.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// What the status says without a persistent state partition.
pub const NOT_PERSISTENT: &str =
    "settings will not survive a reboot (no persistent state partition)";

/// A failed network operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Invalid network configuration: {0}
    #[error("invalid network configuration: {0}")]
    Invalid(#[from] Invalid),
    /// {0}
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// {0}
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    /// {0}
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A change is waiting for confirmation ({0} s left): confirm it or let it roll back first
    #[error(
        "a change is waiting for confirmation ({0} s left): confirm it or let it roll back first"
    )]
    Pending(u64),
    /// No change is waiting for confirmation
    #[error("no change is waiting for confirmation")]
    NothingPending,
    /// Applying failed ({0}); the previous configuration was restored
    #[error("applying failed ({0}); the previous configuration was restored")]
    RolledBack(String),
    /// {0}
    #[error("{0}")]
    Remote(String),
    /// Host networking is not running: {0}
    #[error("host networking is not running: {0}")]
    NotRunning(String),
    /// PID 1's network manager refused the request: {1}
    #[error("{1}")]
    Refused(Refusal, String),
}

/// What kind of refusal an error is, for callers that answer a client (HTTP status codes) and
/// for the control socket, which carries it across.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The request itself is wrong: fix it and retry.
    Invalid,
    /// The request conflicts with the state (a change pending, or none to confirm).
    Conflict,
    /// The host could not carry it out.
    Failed,
}

impl NetError {
    pub fn refusal(&self) -> Refusal {
        match self {
            NetError::Invalid(_) | NetError::Plan(_) => Refusal::Invalid,
            NetError::Pending(_) | NetError::NothingPending => Refusal::Conflict,
            NetError::Refused(kind, _) => *kind,
            NetError::Netlink(_)
            | NetError::Store(_)
            | NetError::RolledBack(_)
            | NetError::Remote(_)
            | NetError::NotRunning(_) => Refusal::Failed,
        }
    }
}

/// How a change is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyOptions {
    /// Seconds to wait for `confirm` before checking reachability (and rolling back if cut off).
    #[serde(default = "default_confirm_secs")]
    pub confirm_within_secs: u64,
    /// The manager (`host:port`) that must stay reachable, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

fn default_confirm_secs() -> u64 {
    DEFAULT_CONFIRM.as_secs()
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            confirm_within_secs: default_confirm_secs(),
            manager: None,
        }
    }
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The operations carried out, in order.
    pub operations: Vec<String>,
    pub confirm_within_secs: u64,
}

pub use keel_api::net::{LinkStatus, PendingStatus, Status};

/// Where the network service's lines go, each with its severity (PID 1: the log facade).
pub type Log = Arc<dyn Fn(log::Level, &str) + Send + Sync>;

/// Makes the kernel able to create links of these kinds (`bridge`, `bond`, `vlan`): PID 1 loads
/// their modules, as the kernel's own request for them would call a modprobe Keel does not have.
pub type KindLoader = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the DHCP keepers update: leases and the resolver configuration they feed.
struct Dynamic {
    leases: BTreeMap<String, Lease>,
    config: NetConfig,
    resolv: PathBuf,
    log: Log,
}

impl Dynamic {
    /// Configured DNS servers win; otherwise the leases' (management interface first).
    fn resolver(&self) -> (Vec<String>, Vec<String>) {
        let dns = self.config.dns.clone().unwrap_or_default();
        let mut leases: Vec<(&String, &Lease)> = self.leases.iter().collect();
        leases.sort_by_key(|(name, _)| name.as_str() != self.config.management());
        let servers = if dns.servers.is_empty() {
            let mut all: Vec<String> = leases
                .iter()
                .flat_map(|(_, l)| l.dns.iter().map(ToString::to_string))
                .collect();
            all.dedup();
            all
        } else {
            dns.servers
        };
        let search = if dns.search.is_empty() {
            leases
                .iter()
                .filter_map(|(_, l)| l.domain.clone())
                .collect()
        } else {
            dns.search
        };
        (servers, search)
    }

    fn write_resolver(&self) {
        let (servers, search) = self.resolver();
        if let Err(e) = write_resolv_conf(&self.resolv, &servers, &search) {
            (self.log)(log::Level::Warn, &format!("keel: network: {e}"));
        }
    }
}

struct Pending {
    id: u64,
    deadline: Instant,
    manager: Option<String>,
    previous_saved: NetConfig,
    previous_running: NetConfig,
}

struct Inner {
    load_kind: Option<KindLoader>,
    lower: NetConfig,
    saved: NetConfig,
    running: NetConfig,
    pending: Option<Pending>,
    next_id: u64,
    keepers: Vec<Keeper>,
    store: Store,
    last_rollback: Option<String>,
}

/// The network service. Cheap to clone (shared state).
#[derive(Clone)]
pub struct NetService {
    inner: Arc<Mutex<Inner>>,
    dynamic: Arc<Mutex<Dynamic>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave these structures half-updated in a way worse than stopping.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn describe(config: &NetConfig, name: &str) -> Option<String> {
    let iface = config.interface(name)?;
    match &iface.ipv4 {
        Ipv4::Static { address, gateway } => Some(match gateway {
            Some(gw) => format!("keel: network: {name} {address} static, gateway {gw}"),
            None => format!("keel: network: {name} {address} static"),
        }),
        _ => None,
    }
}

impl NetService {
    /// Brings the network up at boot: layers from the defaults (NICs found now), the kernel
    /// command line and the saved configuration; validated; applied; DHCP keepers started.
    pub fn boot(
        cmdline: &str,
        store: Store,
        resolv: PathBuf,
        log: Log,
        load_kind: Option<KindLoader>,
    ) -> Result<NetService, NetError> {
        let (net, warnings) = layers::parse_cmdline(cmdline);
        warnings.iter().for_each(|w| log(log::Level::Warn, w));
        let mut nl = Rtnetlink::open()?;
        let (nics, raised) = nics_with_link(&mut nl)?;
        let lower = layers::merge(
            &layers::defaults(&nics),
            &layers::cmdline_layer(&net, &nics),
        );
        let saved = match store.load() {
            Ok(saved) => saved.unwrap_or_default(),
            Err(e) => {
                log(
                    log::Level::Warn,
                    &format!("keel: network: ignoring the saved configuration: {e}"),
                );
                NetConfig::default()
            }
        };
        let service = NetService {
            inner: Arc::new(Mutex::new(Inner {
                load_kind,
                lower,
                saved: NetConfig::default(),
                running: NetConfig::default(),
                pending: None,
                next_id: 0,
                keepers: Vec::new(),
                store,
                last_rollback: None,
            })),
            dynamic: Arc::new(Mutex::new(Dynamic {
                leases: BTreeMap::new(),
                config: NetConfig::default(),
                resolv,
                log,
            })),
        };
        {
            let mut inner = lock(&service.inner);
            let with_saved = layers::merge(&inner.lower, &saved);
            let desired = match validate(&with_saved) {
                Ok(()) => {
                    inner.saved = saved;
                    with_saved
                }
                Err(e) => {
                    service.warn(&format!(
                        "keel: network: ignoring the saved configuration: {e}"
                    ));
                    let lower = inner.lower.clone();
                    validate(&lower)?;
                    lower
                }
            };
            service.execute(&mut inner, &desired)?;
            // NICs raised only to look for link and not configured go back down.
            for name in raised.iter().filter(|n| desired.interface(n).is_none()) {
                let _ = nl.apply(&Op::SetDown { name: name.clone() });
            }
            if !inner.store.persistent() {
                service.log(&format!("keel: network: {NOT_PERSISTENT}"));
            }
            // A static gateway is checked once, so the console tells a wrong address at once.
            if let Some(Some(IpAddr::V4(gw))) = service.gateway_to_probe(&desired) {
                let me = service.clone();
                let _ = std::thread::Builder::new()
                    .name("net-gateway".into())
                    .spawn(move || {
                        let answer = match super::safe::ping(gw, GATEWAY_CHECK) {
                            Ok(true) => "answers",
                            Ok(false) => "does not answer",
                            Err(_) => "cannot be probed",
                        };
                        me.log(&format!("keel: network: gateway {gw} {answer}"));
                    });
            }
        }
        Ok(service)
    }

    fn log(&self, line: &str) {
        self.log_at(log::Level::Info, line);
    }

    fn warn(&self, line: &str) {
        self.log_at(log::Level::Warn, line);
    }

    fn error(&self, line: &str) {
        self.log_at(log::Level::Error, line);
    }

    fn log_at(&self, level: log::Level, line: &str) {
        let log = Arc::clone(&lock(&self.dynamic).log);
        log(level, line);
    }

    /// Makes the running configuration `desired`: stops keepers that no longer apply, carries out
    /// the plan, starts keepers, sets the host name and the resolver.
    fn execute(&self, inner: &mut Inner, desired: &NetConfig) -> Result<Vec<Op>, NetError> {
        if let Some(load) = &inner.load_kind {
            let mut kinds: Vec<&str> = desired
                .interfaces()
                .iter()
                .filter_map(|i| i.kind.link_kind())
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            for kind in kinds {
                if let Err(e) = load(kind) {
                    self.warn(&format!(
                        "keel: network: cannot load the {kind} driver: {e}"
                    ));
                }
            }
        }
        let mut nl = Rtnetlink::open()?;
        let state = nl.state()?;
        let ops = plan(&state, Some(&inner.running), desired)?;
        let recreated: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::DeleteLink { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let dhcp = |config: &NetConfig, name: &str| {
            config
                .interface(name)
                .is_some_and(|i| matches!(i.ipv4, Ipv4::Dhcp {}))
        };
        let (keep, stop): (Vec<Keeper>, Vec<Keeper>) = std::mem::take(&mut inner.keepers)
            .into_iter()
            .partition(|k| {
                dhcp(desired, &k.interface) && !recreated.contains(&k.interface.as_str())
            });
        for keeper in stop {
            lock(&self.dynamic).leases.remove(&keeper.interface);
            keeper.stop();
        }
        inner.keepers = keep;
        for op in &ops {
            nl.apply(op)?;
        }
        inner.running = desired.clone();
        lock(&self.dynamic).config = desired.clone();
        for iface in desired.interfaces() {
            if dhcp(desired, &iface.name)
                && !inner.keepers.iter().any(|k| k.interface == iface.name)
            {
                match Keeper::spawn(&iface.name, desired.hostname.clone(), self.report()) {
                    Ok(k) => inner.keepers.push(k),
                    Err(e) => self.error(&format!(
                        "keel: network: cannot start DHCP on {}: {e}",
                        iface.name
                    )),
                }
            }
            if let Some(line) = describe(desired, &iface.name) {
                self.log(&line);
            }
        }
        if let Some(name) = &desired.hostname {
            crate::pid1::set_hostname(name);
        }
        lock(&self.dynamic).write_resolver();
        Ok(ops)
    }

    /// The keepers' reporting: leases into the status and the resolver, lines on the console.
    fn report(&self) -> Report {
        let dynamic = Arc::clone(&self.dynamic);
        Arc::new(move |interface: &str, event: Event| {
            let mut d = lock(&dynamic);
            let line = match &event {
                Event::Bound(lease) => {
                    let changed = d.leases.get(interface) != Some(lease);
                    d.leases.insert(interface.to_string(), lease.clone());
                    d.write_resolver();
                    changed.then(|| {
                        let via = lease
                            .router
                            .map(|r| format!(", gateway {r}"))
                            .unwrap_or_default();
                        let line = format!(
                            "keel: network: {interface} {}/{} via dhcp{via}",
                            lease.address, lease.prefix
                        );
                        (log::Level::Info, line)
                    })
                }
                Event::Lost(lease) => {
                    d.leases.remove(interface);
                    d.write_resolver();
                    let line = format!(
                        "keel: network: {interface} lost its DHCP lease {}",
                        lease.address
                    );
                    Some((log::Level::Warn, line))
                }
                Event::Error(e) => Some((
                    log::Level::Warn,
                    format!("keel: network: dhcp on {interface}: {e}"),
                )),
            };
            if let Some((level, line)) = line {
                (d.log)(level, &line);
            }
        })
    }

    /// The desired configuration if `change` were applied, validated.
    fn desired(inner: &Inner, change: &NetConfig) -> Result<(NetConfig, NetConfig), NetError> {
        let saved = layers::merge(&inner.saved, change);
        let desired = layers::merge(&inner.lower, &saved);
        validate(&desired)?;
        Ok((saved, desired))
    }

    /// The operations `change` would carry out, without doing anything.
    pub fn preview(&self, change: &NetConfig) -> Result<Vec<String>, NetError> {
        let inner = lock(&self.inner);
        let (_, desired) = Self::desired(&inner, change)?;
        let state = Rtnetlink::open()?.state()?;
        Ok(plan(&state, Some(&inner.running), &desired)?
            .iter()
            .map(ToString::to_string)
            .collect())
    }

    /// Applies `change` over the saved layer. Invalid input changes nothing. Unless `confirm` is
    /// called within the window, a change that cut the host off is rolled back.
    pub fn apply(&self, change: &NetConfig, options: &ApplyOptions) -> Result<Applied, NetError> {
        let mut inner = lock(&self.inner);
        if let Some(p) = &inner.pending {
            return Err(NetError::Pending(
                p.deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs(),
            ));
        }
        let (saved, desired) = Self::desired(&inner, change)?;
        let previous_running = inner.running.clone();
        let previous_saved = inner.saved.clone();
        let ops = match self.execute(&mut inner, &desired) {
            Ok(ops) => ops,
            Err(e) => {
                self.error(&format!(
                    "keel: network: applying failed: {e}; restoring the previous configuration"
                ));
                if let Err(again) = self.execute(&mut inner, &previous_running) {
                    self.error(&format!("keel: network: restoring failed too: {again}"));
                }
                return Err(NetError::RolledBack(e.to_string()));
            }
        };
        inner.saved = saved;
        inner.next_id += 1;
        let id = inner.next_id;
        let window = Duration::from_secs(options.confirm_within_secs);
        inner.pending = Some(Pending {
            id,
            deadline: Instant::now() + window,
            manager: options.manager.clone(),
            previous_saved,
            previous_running,
        });
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("net-confirm".into())
            .spawn(move || me.watch(id));
        if let Err(e) = spawned {
            self.warn(&format!(
                "keel: network: cannot watch the change ({e}); keeping it"
            ));
            inner.pending = None;
        }
        self.log(&format!(
            "keel: network: change applied; confirm within {} s or it rolls back if the host is cut off",
            window.as_secs()
        ));
        Ok(Applied {
            operations: ops.iter().map(ToString::to_string).collect(),
            confirm_within_secs: window.as_secs(),
        })
    }

    /// Confirms the change waiting for confirmation and saves it.
    pub fn confirm(&self) -> Result<(), NetError> {
        let mut inner = lock(&self.inner);
        if inner.pending.take().is_none() {
            return Err(NetError::NothingPending);
        }
        self.log("keel: network: change confirmed");
        inner.store.save(&inner.saved)?;
        Ok(())
    }

    /// The gateway to probe after a change: a static one, else the DHCP lease's router (None in
    /// it means DHCP got no lease: cut off).
    fn gateway_to_probe(&self, config: &NetConfig) -> Option<Option<IpAddr>> {
        let statics = config.interfaces().iter().find_map(|i| match &i.ipv4 {
            Ipv4::Static {
                gateway: Some(g), ..
            } => g.parse().ok(),
            _ => None,
        });
        if statics.is_some() {
            return Some(statics);
        }
        let dhcp = config
            .interfaces()
            .iter()
            .find(|i| matches!(i.ipv4, Ipv4::Dhcp {}))?;
        let d = lock(&self.dynamic);
        Some(
            d.leases
                .get(&dhcp.name)
                .and_then(|l| l.router)
                .map(IpAddr::V4),
        )
    }

    /// Waits out the confirmation window of change `id`, then commits it or rolls it back.
    fn watch(&self, id: u64) {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let (manager, gateway) = {
                let inner = lock(&self.inner);
                let Some(p) = inner.pending.as_ref().filter(|p| p.id == id) else {
                    return; // confirmed
                };
                if decide(false, Instant::now() >= p.deadline, None) == Decision::Wait {
                    continue;
                }
                (p.manager.clone(), self.gateway_to_probe(&inner.running))
            };
            let reach = probe(gateway, manager.as_deref(), PROBE_TIMEOUT);
            let mut inner = lock(&self.inner);
            let Some(p) = inner.pending.take_if(|p| p.id == id) else {
                return;
            };
            match decide(false, true, Some(reach)) {
                Decision::RollBack => {
                    let why = format!(
                        "change not confirmed and the host was cut off (gateway reachable: {}, manager reachable: {}): rolled back",
                        reach.gateway.map_or("n/a".into(), |r| r.to_string()),
                        reach.manager.map_or("n/a".into(), |r| r.to_string()),
                    );
                    self.warn(&format!("keel: network: {why}"));
                    inner.saved = p.previous_saved;
                    if let Err(e) = self.execute(&mut inner, &p.previous_running) {
                        self.error(&format!("keel: network: rollback failed: {e}"));
                    }
                    inner.last_rollback = Some(why);
                }
                _ => {
                    self.log(
                        "keel: network: change not confirmed but the host is reachable: keeping it",
                    );
                    if let Err(e) = inner.store.save(&inner.saved) {
                        self.error(&format!("keel: network: {e}"));
                    }
                }
            }
            return;
        }
    }

    /// The status the console and the API show.
    pub fn status(&self) -> Result<Status, NetError> {
        let inner = lock(&self.inner);
        let state = Rtnetlink::open()?.state()?;
        let d = lock(&self.dynamic);
        let (dns_servers, search) = d.resolver();
        let name_of = |index: u32| {
            state
                .links
                .iter()
                .find(|l| l.index == index)
                .map(|l| l.name.clone())
        };
        let links = state
            .links
            .iter()
            .filter(|l| l.name != "lo")
            .map(|l| LinkStatus {
                name: l.name.clone(),
                kind: l.kind.clone().unwrap_or_else(|| "ethernet".into()),
                mac: l.mac.clone(),
                up: l.up,
                carrier: l.carrier,
                mtu: l.mtu,
                master: l.master.and_then(name_of),
                addresses: l.addrs.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let gateways = state
            .routes
            .iter()
            .map(|r| format!("{} dev {}", r.gateway, name_of(r.oif).unwrap_or_default()))
            .collect();
        let persistent = inner.store.persistent();
        Ok(Status {
            config: inner.running.clone(),
            saved: inner.saved.clone(),
            management: inner.running.management().to_string(),
            links,
            leases: d.leases.clone(),
            gateways,
            dns_servers,
            search,
            pending: inner.pending.as_ref().map(|p| PendingStatus {
                seconds_left: p
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs(),
                manager: p.manager.clone(),
            }),
            persistent,
            note: (!persistent).then(|| NOT_PERSISTENT.to_string()),
            last_rollback: inner.last_rollback.clone(),
        })
    }
}

/// Brings every NIC up and waits briefly for link, so the defaults can pick one that has it.
/// Returns the NICs and the names of those it brought up (IPv6 off, so none autoconfigures).
fn nics_with_link(nl: &mut Rtnetlink) -> Result<(Vec<Nic>, Vec<String>), NetError> {
    let state = nl.state()?;
    let mut raised = Vec::new();
    for nic in state.nics().filter(|l| !l.up) {
        let name = nic.name.clone();
        let _ = nl.apply(&Op::Ipv6 {
            name: name.clone(),
            enabled: false,
            slaac: false,
        });
        if nl.apply(&Op::SetUp { name: name.clone() }).is_ok() {
            raised.push(name);
        }
    }
    let deadline = Instant::now() + CARRIER_WAIT;
    let mut state: State = nl.state()?;
    while state.nics().next().is_some()
        && !state.nics().any(|l| l.carrier)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        state = nl.state()?;
    }
    let nics = state
        .nics()
        .map(|l| Nic {
            name: l.name.clone(),
            carrier: l.carrier,
        })
        .collect();
    Ok((nics, raised))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::control::{self, Request};
    use crate::net::testns;

    /// The whole network service against the real kernel in a private namespace: boot with a static
    /// address from `ip=` on a bridge over one end of a veth pair (the other end plays the
    /// gateway), change the address with confirmation, then make a change that cuts the gateway
    /// off and watch it roll back by itself.
    #[test]
    fn boots_changes_confirms_and_rolls_back() {
        testns::run_isolated(
            "net::service::tests::boots_changes_confirms_and_rolls_back",
            || {
                let dir = std::env::temp_dir().join(format!("keel-net-mgr-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                let mut nl = Rtnetlink::open().unwrap();
                testns::veth("eth0", "gw0");
                testns::veth("spare0", "spare1");
                nl.apply(&Op::SetUp { name: "gw0".into() }).unwrap();
                nl.apply(&Op::SetUp { name: "lo".into() }).unwrap();
                nl.address(true, "gw0", "192.0.2.1/24".parse::<NetLike>().unwrap().0)
                    .unwrap();
                let lines = Arc::new(Mutex::new(Vec::<String>::new()));
                let sink = Arc::clone(&lines);
                let log: Log = Arc::new(move |_, l: &str| sink.lock().unwrap().push(l.to_string()));
                let store = Store::new(&dir.join("state"));
                let m = NetService::boot(
                "console=ttyS0 ip=192.0.2.10::192.0.2.1:255.255.255.0:keelhost:eth0:none keel.dns=192.0.2.53 keel.vlan=x",
                store.clone(),
                dir.join("resolv.conf"),
                log,
                None,
            )
            .unwrap();
                let status = m.status().unwrap();
                let br = status.links.iter().find(|l| l.name == "keelbr0").unwrap();
                assert_eq!(br.addresses, ["192.0.2.10/24"]);
                assert_eq!(
                    status
                        .links
                        .iter()
                        .find(|l| l.name == "eth0")
                        .unwrap()
                        .master
                        .as_deref(),
                    Some("keelbr0")
                );
                assert_eq!(status.gateways, ["192.0.2.1 dev keelbr0"]);
                assert_eq!(status.note.as_deref(), Some(NOT_PERSISTENT));
                // Raised to look for link, not configured: down again.
                assert!(!status.links.iter().find(|l| l.name == "spare0").unwrap().up);
                assert!(std::fs::read_to_string(dir.join("resolv.conf"))
                    .unwrap()
                    .contains("nameserver 192.0.2.53\n"));
                assert!(lines.lock().unwrap().contains(
                    &"keel: network: ignoring keel.vlan=x: expected a VLAN id".to_string()
                ));
                assert!(lines.lock().unwrap().contains(
                    &"keel: network: keelbr0 192.0.2.10/24 static, gateway 192.0.2.1".to_string()
                ));

                // Invalid input names the field and changes nothing.
                let bad: NetConfig = serde_json::from_str(
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},{"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]},
                    "ipv4":{"mode":"static","address":"192.0.2.300/24","gateway":"192.0.2.1"}}]}"#,
            )
            .unwrap();
                let err = m
                    .apply(&bad, &ApplyOptions::default())
                    .unwrap_err()
                    .to_string();
                assert_eq!(err, "invalid network configuration: interfaces[keelbr0].ipv4.address: 192.0.2.300/24 is not an IPv4 address/prefix (like 10.0.0.2/24)");
                assert_eq!(m.status().unwrap().config, status.config);

                // A good change, confirmed: saved.
                let change: NetConfig = serde_json::from_str(
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},{"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]},
                    "ipv4":{"mode":"static","address":"192.0.2.11/24","gateway":"192.0.2.1"}}]}"#,
            )
            .unwrap();
                assert_eq!(
                    m.preview(&change).unwrap(),
                    [
                        "set eth0 ipv6 enabled=false slaac=false",
                        "set keelbr0 ipv6 enabled=false slaac=false",
                        "delete address 192.0.2.10/24 from keelbr0",
                        "add address 192.0.2.11/24 to keelbr0",
                        "add default route via 192.0.2.1 dev keelbr0",
                    ]
                );
                let applied = m
                    .apply(
                        &change,
                        &ApplyOptions {
                            confirm_within_secs: 30,
                            manager: None,
                        },
                    )
                    .unwrap();
                assert_eq!(applied.confirm_within_secs, 30);
                assert!(m.status().unwrap().pending.is_some());
                assert!(matches!(
                    m.apply(&change, &ApplyOptions::default()),
                    Err(NetError::Pending(_))
                ));
                m.confirm().unwrap();
                assert!(matches!(m.confirm(), Err(NetError::NothingPending)));
                assert_eq!(store.load().unwrap().unwrap(), change);
                assert_eq!(
                    m.status()
                        .unwrap()
                        .links
                        .iter()
                        .find(|l| l.name == "keelbr0")
                        .unwrap()
                        .addresses,
                    ["192.0.2.11/24"]
                );

                // Applies `config` with a 1 s window, never confirmed, and waits for the decision.
                let apply_unconfirmed = |config: &NetConfig| {
                    let options = ApplyOptions {
                        confirm_within_secs: 1,
                        manager: None,
                    };
                    m.apply(config, &options).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while m.status().unwrap().pending.is_some() {
                        assert!(
                            Instant::now() < deadline,
                            "no decision: {:?}",
                            lines.lock().unwrap()
                        );
                        std::thread::sleep(Duration::from_millis(200));
                    }
                };

                // A change that cuts the gateway off, unconfirmed: rolled back after the window.
                let cut: NetConfig = serde_json::from_str(
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},{"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]},
                    "ipv4":{"mode":"static","address":"198.51.100.5/24","gateway":"198.51.100.1"}}]}"#,
            )
            .unwrap();
                apply_unconfirmed(&cut);
                let status = m.status().unwrap();
                assert!(
                    status
                        .last_rollback
                        .as_deref()
                        .unwrap()
                        .contains("rolled back"),
                    "{status:?}"
                );
                assert_eq!(
                    status
                        .links
                        .iter()
                        .find(|l| l.name == "keelbr0")
                        .unwrap()
                        .addresses,
                    ["192.0.2.11/24"]
                );
                assert_eq!(status.gateways, ["192.0.2.1 dev keelbr0"]);
                assert_eq!(status.saved, change);
                assert_eq!(store.load().unwrap().unwrap(), change);

                // A change with the gateway still reachable is kept even unconfirmed.
                let keep: NetConfig = serde_json::from_str(
                r#"{"interfaces":[{"name":"eth0","kind":{"type":"ethernet"}},{"name":"keelbr0","kind":{"type":"bridge","ports":["eth0"]},
                    "ipv4":{"mode":"static","address":"192.0.2.12/24","gateway":"192.0.2.1"}}]}"#,
            )
            .unwrap();
                apply_unconfirmed(&keep);
                assert_eq!(store.load().unwrap().unwrap(), keep);

                // The same network service through the control socket, as the agent and the console
                // reach it.
                let sock = dir.join("net.sock");
                control::serve(m.clone(), &sock).unwrap();
                let status: Status =
                    serde_json::from_value(control::call(&sock, &Request::Status {}).unwrap())
                        .unwrap();
                assert_eq!(status.saved, keep);
                let err = control::call(&sock, &Request::Confirm {})
                    .unwrap_err()
                    .to_string();
                assert_eq!(err, "no change is waiting for confirmation");
                let err = control::call(
                    &sock,
                    &Request::Apply {
                        change: bad,
                        options: ApplyOptions::default(),
                    },
                )
                .unwrap_err();
                assert!(
                    err.to_string()
                        .contains("interfaces[keelbr0].ipv4.address: 192.0.2.300/24"),
                    "{err}"
                );
                let _ = std::fs::remove_dir_all(&dir);
            },
        );
    }

    /// `a.b.c.d/p` as an `IpNet`, for the test above.
    struct NetLike(crate::net::plan::IpNet);

    impl std::str::FromStr for NetLike {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let (a, p) = s.split_once('/').ok_or(())?;
            Ok(NetLike(crate::net::plan::IpNet {
                addr: a.parse().map_err(|_| ())?,
                prefix: p.parse().map_err(|_| ())?,
            }))
        }
    }
}
