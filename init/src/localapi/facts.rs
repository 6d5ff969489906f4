//! What the host can read about itself, without the agent: names and versions from uname and
//! /proc, CPU and memory use, NICs from /sys/class/net with their addresses (getifaddrs, which
//! asks the kernel over netlink), the default gateway from /proc/net/route and the name servers
//! from /etc/resolv.conf.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::types::{CpuTimes, HostFacts, Link, Memory, Nic};
use crate::pid1::VERSION;
use crate::sys::syscall;

const NET: &str = "/sys/class/net";

/// Everything at once; a source that cannot be read leaves its field empty.
pub fn collect() -> HostFacts {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let stat = read("/proc/stat");
    HostFacts {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        keel_version: VERSION.to_string(),
        kernel: syscall::kernel_release(),
        uptime_secs: syscall::uptime().map_or(0, |s| s.max(0.0) as u64),
        cpus: count_cpus(&stat),
        cpu: parse_cpu(&stat),
        memory: parse_meminfo(&read("/proc/meminfo")),
        nics: nics(Path::new(NET)),
        gateway: parse_route_gateway(&read("/proc/net/route")).map(|g| g.to_string()),
        dns: parse_resolv(&read("/etc/resolv.conf")),
    }
}

/// The aggregate `cpu` line of /proc/stat: busy is everything but idle and iowait.
pub fn parse_cpu(stat: &str) -> CpuTimes {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return CpuTimes::default();
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    }
}

/// Per-CPU lines of /proc/stat (`cpu0`, `cpu1`, …).
pub fn count_cpus(stat: &str) -> u32 {
    let n = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_digit())
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// CPU use in percent between two samples.
pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> Option<u32> {
    let total = after.total.checked_sub(before.total).filter(|&t| t > 0)?;
    let busy = after.busy.saturating_sub(before.busy).min(total);
    u32::try_from(busy * 100 / total).ok()
}

/// MemTotal and MemAvailable.
pub fn parse_meminfo(text: &str) -> Memory {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        total_kib: field("MemTotal"),
        available_kib: field("MemAvailable"),
    }
}

/// The gateway of the first default route (destination and mask 0) in /proc/net/route, whose
/// addresses are little-endian hex.
pub fn parse_route_gateway(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, flags, mask) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
        let up_gateway = u32::from_str_radix(flags, 16).ok()? & 0x3 == 0x3;
        if *dest != "00000000" || *mask != "00000000" || !up_gateway {
            return None;
        }
        let raw = u32::from_str_radix(gw, 16).ok()?;
        Some(Ipv4Addr::from(raw.swap_bytes()))
    })
}

/// The `nameserver` addresses of a resolv.conf.
pub fn parse_resolv(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .filter(|a| a.parse::<IpAddr>().is_ok())
                .map(String::from)
        })
        .collect()
}

/// /sys/class/net/<nic>/operstate as a link state; "unknown" is what virtual devices and
/// loopback report, so only "up"/"down"-ish values say anything.
pub fn parse_operstate(text: &str) -> Link {
    match text.trim() {
        "up" => Link::Up,
        "down" | "lowerlayerdown" | "notpresent" | "dormant" => Link::Down,
        _ => Link::Unknown,
    }
}

/// Every interface in `dir` (/sys/class/net) but loopback, sorted by name.
pub fn nics(dir: &Path) -> Vec<Nic> {
    let mut addresses = interface_addresses();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let attr = |a: &str| {
                std::fs::read_to_string(dir.join(&name).join(a))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            Nic {
                mac: attr("address"),
                link: parse_operstate(&attr("operstate")),
                // Negative (-1) when the link is down or the driver does not know.
                speed_mbps: attr("speed").parse::<u32>().ok(),
                addresses: addresses.remove(&name).unwrap_or_default(),
                physical: dir.join(&name).join("device").exists(),
                name,
            }
        })
        .collect()
}

/// Prefix length of a netmask.
fn prefix_len(mask: IpAddr) -> u32 {
    match mask {
        IpAddr::V4(m) => u32::from(m).leading_ones(),
        IpAddr::V6(m) => u128::from(m).leading_ones(),
    }
}

/// Reads a `sockaddr` getifaddrs returned.
///
/// # Safety
/// `sa` is null or points to a valid sockaddr of the size its family implies.
unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: sa is non-null and valid per the contract; sa_family is in every sockaddr.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            // SAFETY: AF_INET means it is a sockaddr_in.
            let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: AF_INET6 means it is a sockaddr_in6.
            let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// IPv4 and IPv6 addresses in CIDR notation by interface name.
pub fn interface_addresses() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: list is a valid out pointer; freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned and has not been freed.
        let ifa = unsafe { &*cur };
        // SAFETY: the kernel-provided addresses are null or valid for their family.
        let (addr, mask) = unsafe { (ip_of(ifa.ifa_addr), ip_of(ifa.ifa_netmask)) };
        if let (Some(addr), false) = (addr, ifa.ifa_name.is_null()) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
            let prefix = mask.map_or(0, prefix_len);
            out.entry(name.to_string_lossy().into_owned())
                .or_default()
                .push(format!("{addr}/{prefix}"));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lines() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\ncpu1 50 3 25 400 10 2 1 0 0 0\nintr 1\n";
        assert_eq!(
            parse_cpu(stat),
            CpuTimes {
                busy: 160,
                total: 980
            }
        );
        assert_eq!(count_cpus(stat), 2);
        assert_eq!(parse_cpu("intr 1"), CpuTimes::default());
        assert_eq!(count_cpus(""), 0);
        let cases = [
            ((0, 100), (50, 200), Some(50)),
            ((0, 100), (0, 100), None),
            ((10, 100), (5, 90), None),
            ((0, 0), (100, 100), Some(100)),
        ];
        for ((b0, t0), (b1, t1), want) in cases {
            let s = |busy, total| CpuTimes { busy, total };
            assert_eq!(cpu_percent(s(b0, t0), s(b1, t1)), want);
        }
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       2030000 kB\nMemFree:  100 kB\nMemAvailable:   1500000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Memory {
                total_kib: 2030000,
                available_kib: 1500000
            }
        );
        assert_eq!(parse_meminfo("garbage"), Memory::default());
    }

    #[test]
    fn default_gateway() {
        let head =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let cases = [
            (
                "eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
                Some(Ipv4Addr::new(10, 0, 2, 2)),
            ),
            (
                "eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
                None,
            ),
            // A default route without the gateway flag (a device route).
            ("eth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n", None),
            ("short line\n", None),
            ("", None),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_route_gateway(&format!("{head}{body}")),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn resolv_conf() {
        let text = "# c\nsearch example.com\nnameserver 10.0.2.3\nnameserver  fd00::3 \nnameserver bogus\nnameserver\n";
        assert_eq!(parse_resolv(text), ["10.0.2.3", "fd00::3"]);
        assert!(parse_resolv("").is_empty());
    }

    #[test]
    fn operstates() {
        for (text, want) in [
            ("up\n", Link::Up),
            ("down\n", Link::Down),
            ("lowerlayerdown", Link::Down),
            ("unknown\n", Link::Unknown),
            ("", Link::Unknown),
        ] {
            assert_eq!(parse_operstate(text), want, "{text:?}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_len("255.255.255.0".parse().unwrap()), 24);
        assert_eq!(prefix_len("0.0.0.0".parse().unwrap()), 0);
        assert_eq!(prefix_len("ffff:ffff:ffff:ffff::".parse().unwrap()), 64);
    }

    #[test]
    fn facts_of_this_machine() {
        let facts = collect();
        assert!(!facts.hostname.is_empty());
        assert!(!facts.kernel.is_empty());
        assert_eq!(facts.keel_version, VERSION);
        assert!(facts.cpus >= 1 && facts.cpu.total > 0);
        assert!(facts.memory.total_kib > 0);
        assert!(facts.nics.iter().all(|n| n.name != "lo"));
        // Loopback is skipped in the list but its address is read.
        assert!(interface_addresses()["lo"].contains(&"127.0.0.1/8".to_string()));
    }
}
