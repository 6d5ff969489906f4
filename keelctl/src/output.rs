//! Tables for people, JSON (`-o json`) for scripts.

use clap::ValueEnum;
use keel_api::agent::{HostInfo, HostStats, Image, ImageList, VmStatus};
use keel_api::firewall::Description;
use keel_api::net::Status as NetStatus;
use serde::Serialize;
use std::io::{self, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

fn write(text: &str) -> Result<(), super::Error> {
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(super::Error::Output)
}

/// `value` as JSON, or as the text `table` makes of it.
pub fn print<T: Serialize>(
    fmt: Format,
    value: &T,
    table: impl Fn(&T) -> String,
) -> Result<(), super::Error> {
    match fmt {
        Format::Json => {
            let json = serde_json::to_string_pretty(value)
                .map_err(|e| super::Error::Output(io::Error::other(e)))?;
            write(&format!("{json}\n"))
        }
        Format::Table => write(&table(value)),
    }
}

/// A one-line outcome: `{"message": …}` in JSON.
pub fn message(fmt: Format, text: &str) -> Result<(), super::Error> {
    let reply = keel_api::reply::MessageReply {
        message: text.to_string(),
    };
    print(fmt, &reply, |_| format!("{text}\n"))
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

pub fn vm_table(vms: &[VmStatus]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.spec.name.clone(),
                serde_json::to_value(v.state)
                    .ok()
                    .and_then(|s| s.as_str().map(String::from))
                    .unwrap_or_default(),
                v.spec.vcpus.to_string(),
                format!("{} MiB", v.spec.memory_mib),
                v.pid.map_or("-".into(), |p| p.to_string()),
                v.last_exit
                    .as_ref()
                    .map_or("-".into(), |e| e.reason.clone()),
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "VCPUS", "MEMORY", "PID", "LAST EXIT"],
        &rows,
    )
}

pub fn vm_detail(v: &VmStatus) -> String {
    let mut out = vm_table(std::slice::from_ref(v));
    out.push_str(&format!(
        "kernel: {}  initrd: {}  on-crash: {:?}  restarts: {}\ncmdline: {}\n",
        v.spec.kernel,
        v.spec.initrd.as_deref().unwrap_or("-"),
        v.spec.on_crash,
        v.restarts,
        v.spec.cmdline
    ));
    if let Some(j) = &v.jail {
        let e = &j.events;
        out.push_str(&format!(
            "jail: uid {}  cgroup {}  memory.max {}  pids.max {}\n\
             limits hit: memory.max {}  oom {}  oom_kill {}  pids.max {}\n",
            j.uid,
            j.cgroup,
            j.memory_max.map_or_else(|| "-".into(), mib),
            j.pids_max.map_or_else(|| "-".into(), |p| p.to_string()),
            e.memory_max,
            e.oom,
            e.oom_kill,
            e.pids_max
        ));
    }
    out
}

/// The agent's firewall description (`GET /v1/host/firewall`) in nft syntax.
pub fn firewall(d: &Description) -> String {
    let mut out = format!("table {} {} {{\n", d.family, d.table);
    for chain in &d.chains {
        out.push_str(&format!(
            "  chain {} {{\n    type filter hook {} priority {}; policy {};\n",
            chain.name,
            chain.hook.as_str(),
            chain.priority,
            chain.policy.as_str()
        ));
        for rule in &chain.rules {
            out.push_str(&format!("    {:<40}# {}\n", rule.rule, rule.comment));
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

pub fn image_table(images: &[Image]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.kind.as_str().to_string(),
                i.name.clone(),
                i.size.to_string(),
                i.sha256.clone(),
            ]
        })
        .collect();
    table(&["KIND", "NAME", "BYTES", "SHA256"], &rows)
}

pub fn image_list(list: &ImageList) -> String {
    let mut out = image_table(&list.images);
    out.push_str(&format!(
        "store: {:?}, {} free of {}\n",
        list.store,
        mib(list.free),
        mib(list.capacity)
    ));
    out
}

pub fn host_info(h: &HostInfo) -> String {
    let c = &h.capabilities;
    let hw = &h.hardware;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows = vec![
        vec!["fingerprint".into(), h.fingerprint.to_string()],
        vec!["names".into(), h.names.join(", ")],
        vec![
            "hardware".into(),
            format!("{} {}", or_dash(&hw.vendor), or_dash(&hw.product)),
        ],
        vec![
            "serial / uuid".into(),
            format!("{} / {}", or_dash(&hw.serial), or_dash(&hw.uuid)),
        ],
        vec!["cpu".into(), c.cpu_model.clone()],
        vec![
            "topology".into(),
            format!(
                "{} CPUs, {} cores, {} sockets, {} NUMA nodes",
                c.cpus,
                c.cores,
                c.sockets,
                c.numa_nodes.len()
            ),
        ],
        vec!["memory".into(), mib(c.memory_total)],
        vec!["kvm".into(), if c.kvm { "yes" } else { "no" }.into()],
        vec![
            "nics".into(),
            c.nics
                .iter()
                .map(|n| format!("{} {} {}", n.name, n.mac, n.state))
                .collect::<Vec<_>>()
                .join(", "),
        ],
        vec!["keel-vmm".into(), c.vmm_version.clone()],
    ];
    table(&["FIELD", "VALUE"], &rows)
}

pub fn host_stats(s: &HostStats) -> String {
    let mut out = format!(
        "cpu busy {:.0}%  memory {} available of {}  load {:.2} {:.2} {:.2}\n\n",
        s.cpu_busy * 100.0,
        mib(s.memory_available),
        mib(s.memory_total),
        s.load[0],
        s.load[1],
        s.load[2]
    );
    let nics: Vec<Vec<String>> = s
        .nics
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.rx_bytes.to_string(),
                n.tx_bytes.to_string(),
                format!("{:.0}", n.rx_bytes_per_sec),
                format!("{:.0}", n.tx_bytes_per_sec),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NIC", "RX BYTES", "TX BYTES", "RX B/S", "TX B/S"],
        &nics,
    ));
    let vms: Vec<Vec<String>> = s
        .vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                format!("{:.1}", v.cpu_seconds),
                mib(v.rss_bytes),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["VM", "CPU SECONDS", "RSS"], &vms));
    out
}

/// A registered host as `host pending` shows it (never its tokens).
#[derive(Debug, Serialize)]
pub struct RegisteredHost {
    pub id: String,
    pub state: crate::db::HostState,
    pub reason: Option<String>,
    pub hostname: Option<String>,
    pub fingerprint: keel_api::Fingerprint,
    pub addresses: Vec<std::net::IpAddr>,
    pub api_port: u16,
    pub hardware: keel_api::host::Hardware,
    pub keel_version: String,
    pub join_token: bool,
    pub peer: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

impl From<&crate::db::Registration> for RegisteredHost {
    fn from(r: &crate::db::Registration) -> Self {
        let d = &r.document;
        Self {
            id: r.id.clone(),
            state: r.state,
            reason: r.reason.clone(),
            hostname: d.hostname.clone(),
            fingerprint: d.fingerprint,
            addresses: d.addresses.clone(),
            api_port: d.api_port,
            hardware: d.hardware.clone(),
            keel_version: d.keel_version.clone(),
            join_token: d.join_token.is_some(),
            peer: r.peer.clone(),
            first_seen: r.first_seen,
            last_seen: r.last_seen,
        }
    }
}

pub fn registered_table(hosts: &[RegisteredHost]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let addrs: Vec<String> = h.addresses.iter().map(ToString::to_string).collect();
            let product = [&h.hardware.vendor, &h.hardware.product, &h.hardware.serial]
                .iter()
                .filter_map(|s| s.as_deref())
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                h.id.clone(),
                h.hostname.clone().unwrap_or_else(|| "-".into()),
                addrs.join(","),
                h.fingerprint.to_string(),
                product,
                serde_json::to_value(h.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                h.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "ADDRESSES",
            "FINGERPRINT",
            "HARDWARE",
            "STATE",
            "REASON",
        ],
        &rows,
    )
}

/// One line each.
pub fn lines(items: &[String]) -> String {
    items.iter().map(|l| format!("{l}\n")).collect()
}

/// The host network: links with their addresses, then gateways, resolver and any pending change.
pub fn network_status(s: &NetStatus) -> String {
    let rows: Vec<Vec<String>> = s
        .links
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                l.kind.clone(),
                l.mac.clone(),
                if l.carrier { "up" } else { "down" }.into(),
                l.master.clone().unwrap_or_default(),
                l.addresses.join(" "),
            ]
        })
        .collect();
    let mut out = table(
        &["LINK", "KIND", "MAC", "CARRIER", "MASTER", "ADDRESSES"],
        &rows,
    );
    out.push_str(&format!("management: {}\n", s.management));
    out.push_str(&format!("gateways: {}\n", s.gateways.join(", ")));
    out.push_str(&format!("dns: {}\n", s.dns_servers.join(", ")));
    if let Some(p) = &s.pending {
        out.push_str(&format!(
            "pending change: confirm within {} s\n",
            p.seconds_left
        ));
    }
    if let Some(r) = &s.last_rollback {
        out.push_str(&format!("last rollback: {r}\n"));
    }
    if let Some(note) = &s.note {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["a".to_string(), "long value".into()],
            vec!["longer".into(), "b".into()],
        ];
        assert_eq!(
            table(&["K", "V"], &rows),
            "K       V\na       long value\nlonger  b\n"
        );
    }

    const FIREWALL_JSON: &str = r#"{"family":"inet","table":"keel","chains":[{"name":"input","hook":"input","priority":0,"policy":"drop","rules":[
        {"rule":"ct state invalid drop","comment":"invalid packets"},
        {"rule":"ct state established,related accept","comment":"replies to the host's own connections"},
        {"rule":"iif lo accept","comment":"loopback"},
        {"rule":"meta l4proto icmp accept","comment":"ICMP"},
        {"rule":"meta l4proto ipv6-icmp accept","comment":"ICMPv6 (neighbour discovery)"},
        {"rule":"udp dport 68 accept","comment":"DHCP client"},
        {"rule":"udp dport 546 accept","comment":"DHCPv6 client"},
        {"rule":"tcp dport 8443 accept","comment":"agent API (mutual TLS)"}]}]}"#;

    #[test]
    fn firewall_reads_as_nft() {
        // What the agent answers (keel-init's firewall tests check it describes this ruleset).
        let rules: Description = serde_json::from_str(FIREWALL_JSON).unwrap();
        let text = firewall(&rules);
        assert!(
            text.starts_with("table inet keel {\n  chain input {\n"),
            "{text}"
        );
        assert!(
            text.contains("    type filter hook input priority 0; policy drop;\n"),
            "{text}"
        );
        assert!(text.contains("tcp dport 8443 accept"), "{text}");
        assert!(text.contains("# agent API"), "{text}");
        assert!(text.ends_with("  }\n}\n"), "{text}");
    }
}
