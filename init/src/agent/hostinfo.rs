//! What the host is and how busy it is, read from /proc and /sys: capabilities (CPU, topology,
//! NUMA, memory, KVM, NICs), SMBIOS identity, statistics with rates between samples, and the same
//! figures in Prometheus text format.

use super::api::{Capabilities, Hardware, HostStats, Nic, NicStats, NumaNode, VmStats};
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::time::Instant;

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    read(path)?.parse().ok()
}

/// The model name and flags of the first CPU in /proc/cpuinfo.
pub fn parse_cpuinfo(text: &str) -> (String, Vec<String>) {
    let mut model = String::new();
    let mut flags = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            if !model.is_empty() && !flags.is_empty() {
                break;
            }
            continue;
        };
        match key.trim() {
            "model name" if model.is_empty() => model = value.trim().to_string(),
            "flags" if flags.is_empty() => {
                flags = value.split_whitespace().map(String::from).collect();
            }
            _ => {}
        }
    }
    (model, flags)
}

/// A /proc/meminfo field in bytes.
pub fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

fn topology() -> (u32, u32, u32) {
    let mut cpus = 0;
    let mut cores = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    let Ok(entries) = fs::read_dir("/sys/devices/system/cpu") else {
        return (1, 1, 1);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("cpu") else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        cpus += 1;
        let topo = entry.path().join("topology");
        let pkg = read_u64(topo.join("physical_package_id")).unwrap_or(0);
        let core = read_u64(topo.join("core_id")).unwrap_or(0);
        sockets.insert(pkg);
        cores.insert((pkg, core));
    }
    (
        cpus.max(1),
        cores.len().max(1) as u32,
        sockets.len().max(1) as u32,
    )
}

fn numa_nodes() -> Vec<NumaNode> {
    let mut nodes = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/devices/system/node") else {
        return nodes;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("node").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let meminfo = read(entry.path().join("meminfo")).unwrap_or_default();
        let memory_total = meminfo
            .lines()
            .find(|l| l.contains("MemTotal:"))
            .and_then(|l| l.split_whitespace().rev().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        nodes.push(NumaNode {
            id,
            cpus: read(entry.path().join("cpulist")).unwrap_or_default(),
            memory_total,
        });
    }
    nodes.sort_by_key(|n| n.id);
    nodes
}

/// Physical NICs: interfaces with a `device` link (no loopback, bridges, taps).
pub fn nics() -> Vec<Nic> {
    let mut nics = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return nics;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join("device").exists() {
            continue;
        }
        nics.push(Nic {
            name: entry.file_name().to_string_lossy().into_owned(),
            mac: read(path.join("address")).unwrap_or_default(),
            mtu: read_u64(path.join("mtu")).unwrap_or(0) as u32,
            state: read(path.join("operstate")).unwrap_or_default(),
            // "speed" reads -1 (or fails) while the link is down.
            speed_mbps: read(path.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| u32::try_from(s).ok()),
        });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// What `<vmm> --version` prints after the program name ("unknown" if it does not run).
pub fn vmm_version(vmm: &Path) -> String {
    std::process::Command::new(vmm)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split_whitespace().nth(1).map(String::from)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The host's capabilities; `vmm_version` is keel-vmm's.
pub fn capabilities(vmm_version: &str) -> Capabilities {
    let (cpu_model, cpu_flags) = parse_cpuinfo(&read("/proc/cpuinfo").unwrap_or_default());
    let (cpus, cores, sockets) = topology();
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    Capabilities {
        cpu_model,
        cpu_flags,
        cpus,
        cores,
        sockets,
        numa_nodes: numa_nodes(),
        memory_total: meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
        kvm: fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        nics: nics(),
        vmm_version: vmm_version.to_string(),
    }
}

/// SMBIOS identity from /sys/class/dmi/id (the serial and UUID need root).
pub fn hardware() -> Hardware {
    let dmi = Path::new("/sys/class/dmi/id");
    Hardware {
        vendor: read(dmi.join("sys_vendor")),
        product: read(dmi.join("product_name")),
        serial: read(dmi.join("product_serial")),
        uuid: read(dmi.join("product_uuid")),
    }
}

/// Busy and total jiffies from the first line of /proc/stat.
pub fn parse_cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime+stime (jiffies) and RSS (pages) of a process from /proc/<pid>/stat.
pub fn parse_pid_stat(stat: &str) -> Option<(u64, u64)> {
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss: u64 = f.get(21)?.parse().ok()?;
    Some((utime + stime, rss))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).unwrap_or(4096)
}

/// When a sample was taken, the CPU's (busy, total) jiffies and each NIC's (rx, tx) bytes.
type Sample = (Instant, (u64, u64), HashMap<String, (u64, u64)>);

/// The previous sample, for rates.
#[derive(Default)]
pub struct Sampler {
    last: Option<Sample>,
}

impl Sampler {
    /// Takes a sample; rates are against the previous one (zero the first time).
    pub fn sample(&mut self, vms: &[(String, u32)]) -> HostStats {
        let now = Instant::now();
        let cpu = parse_cpu_line(&read("/proc/stat").unwrap_or_default()).unwrap_or((0, 0));
        let meminfo = read("/proc/meminfo").unwrap_or_default();
        let load: Vec<f64> = read("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        let mut counters = HashMap::new();
        for nic in nics() {
            let stats = Path::new("/sys/class/net")
                .join(&nic.name)
                .join("statistics");
            let rx = read_u64(stats.join("rx_bytes")).unwrap_or(0);
            let tx = read_u64(stats.join("tx_bytes")).unwrap_or(0);
            counters.insert(nic.name, (rx, tx));
        }
        let (cpu_busy, elapsed, previous) = match &self.last {
            Some((at, (busy0, total0), prev)) => {
                let dt = (cpu.1.saturating_sub(*total0)) as f64;
                let busy = if dt > 0.0 {
                    (cpu.0.saturating_sub(*busy0)) as f64 / dt
                } else {
                    0.0
                };
                (busy, now.duration_since(*at).as_secs_f64(), Some(prev))
            }
            None => (0.0, 0.0, None),
        };
        let mut nics: Vec<NicStats> = counters
            .iter()
            .map(|(name, &(rx, tx))| {
                let (rx0, tx0) = previous
                    .and_then(|p| p.get(name).copied())
                    .unwrap_or((rx, tx));
                let rate = |a: u64, b: u64| {
                    if elapsed > 0.0 {
                        a.saturating_sub(b) as f64 / elapsed
                    } else {
                        0.0
                    }
                };
                NicStats {
                    name: name.clone(),
                    rx_bytes: rx,
                    tx_bytes: tx,
                    rx_bytes_per_sec: rate(rx, rx0),
                    tx_bytes_per_sec: rate(tx, tx0),
                }
            })
            .collect();
        nics.sort_by(|a, b| a.name.cmp(&b.name));
        let ticks = clock_ticks();
        let page = page_size();
        let vms = vms
            .iter()
            .filter_map(|(name, pid)| {
                let (cpu, rss) = parse_pid_stat(&read(format!("/proc/{pid}/stat"))?)?;
                Some(VmStats {
                    name: name.clone(),
                    cpu_seconds: cpu as f64 / ticks,
                    rss_bytes: rss * page,
                })
            })
            .collect();
        self.last = Some((now, cpu, counters));
        HostStats {
            cpu_busy,
            memory_total: meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
            memory_available: meminfo_field(&meminfo, "MemAvailable").unwrap_or(0),
            load: [
                load.first().copied().unwrap_or(0.0),
                load.get(1).copied().unwrap_or(0.0),
                load.get(2).copied().unwrap_or(0.0),
            ],
            nics,
            vms,
        }
    }
}

/// The statistics in Prometheus text exposition format.
pub fn prometheus(stats: &HostStats, vms_defined: usize) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    gauge(
        "keel_host_cpu_busy_ratio",
        "Share of CPU time busy since the previous sample.",
        one(stats.cpu_busy),
    );
    gauge(
        "keel_host_memory_total_bytes",
        "Memory of the host.",
        one(stats.memory_total as f64),
    );
    gauge(
        "keel_host_memory_available_bytes",
        "Memory available for new work.",
        one(stats.memory_available as f64),
    );
    gauge(
        "keel_host_load1",
        "One-minute load average.",
        one(stats.load[0]),
    );
    let nic = |f: fn(&NicStats) -> f64| {
        stats
            .nics
            .iter()
            .map(|n| (format!("{{nic=\"{}\"}}", n.name), f(n)))
            .collect()
    };
    gauge(
        "keel_nic_rx_bytes",
        "Bytes received.",
        nic(|n| n.rx_bytes as f64),
    );
    gauge(
        "keel_nic_tx_bytes",
        "Bytes sent.",
        nic(|n| n.tx_bytes as f64),
    );
    gauge(
        "keel_vms_defined",
        "VMs defined on the host.",
        one(vms_defined as f64),
    );
    gauge(
        "keel_vms_running",
        "VMs running on the host.",
        one(stats.vms.len() as f64),
    );
    let vm = |f: fn(&VmStats) -> f64| {
        stats
            .vms
            .iter()
            .map(|v| (format!("{{vm=\"{}\"}}", v.name), f(v)))
            .collect()
    };
    gauge(
        "keel_vm_cpu_seconds",
        "CPU time of the VM's keel-vmm process.",
        vm(|v| v.cpu_seconds),
    );
    gauge(
        "keel_vm_rss_bytes",
        "Resident memory of the VM's keel-vmm process.",
        vm(|v| v.rss_bytes as f64),
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu svm lm\n\nprocessor\t: 1\nmodel name\t: other\n";
        let (model, flags) = parse_cpuinfo(text);
        assert_eq!(model, "AMD EPYC");
        assert_eq!(flags, ["fpu", "svm", "lm"]);
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            meminfo_field(
                "MemTotal:       2000 kB\nMemAvailable:  1000 kB\n",
                "MemAvailable"
            ),
            Some(1024 * 1000)
        );
        assert_eq!(meminfo_field("MemTotal: 1 kB", "Mem"), None);
        assert_eq!(
            parse_cpu_line("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3\n"),
            Some((20, 100))
        );
        let stat = "42 (keel vmm) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 3 0 100 1000 250 18446744073709551615";
        assert_eq!(parse_pid_stat(stat), Some((10, 250)));
        assert_eq!(parse_pid_stat("garbage"), None);
    }

    #[test]
    fn live_figures_are_sane() {
        let caps = capabilities("1.0");
        assert!(caps.cpus >= 1 && caps.memory_total > 0 && !caps.cpu_flags.is_empty());
        let mut s = Sampler::default();
        let first = s.sample(&[("me".into(), std::process::id())]);
        assert_eq!(first.vms.len(), 1);
        assert!(first.vms[0].rss_bytes > 0);
        let second = s.sample(&[]);
        assert!((0.0..=1.0).contains(&second.cpu_busy));
        let text = prometheus(&first, 3);
        assert!(text.contains("keel_vms_defined 3\n"), "{text}");
        assert!(text.contains("keel_vm_rss_bytes{vm=\"me\"}"), "{text}");
    }
}
