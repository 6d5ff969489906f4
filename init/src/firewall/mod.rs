//! The host's ingress firewall: a default-deny nftables table `inet keel`, built from Rust and
//! loaded over netlink (Keel's codec, `crate::netlink`) in one atomic batch (no `nft`, no shell). PID 1 applies it at boot; the
//! agent shows it through `describe()`. See docs/hardening.md.
//!
//! Bridged VM traffic never reaches the input hook (frames between a VM's TAP device and the
//! uplink are switched by the bridge, not delivered to the host), so VM bridges need no rule here.

pub mod nft;

/// The agent's mutual-TLS API port: the one TCP port the host answers on.
pub const AGENT_PORT: u16 = 8443;
/// DHCPv4 and DHCPv6 client ports (replies from servers arrive there).
pub const DHCP_CLIENT_PORT: u16 = 68;
pub const DHCPV6_CLIENT_PORT: u16 = 546;

pub const TABLE: &str = "keel";

/// Kernel modules the ruleset needs (Debian builds nf_tables and the ct expression as modules,
/// and Keel has no modprobe for the kernel to autoload them with). Their dependencies follow.
pub const MODULES: [&str; 2] = ["nf_tables", "nft_ct"];

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Connection-tracking states as nftables encodes them (NF_CT_STATE_BIT).
pub const CT_INVALID: u32 = 1;
pub const CT_ESTABLISHED: u32 = 1 << 1;
pub const CT_RELATED: u32 = 1 << 2;

/// What a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Any of these conntrack state bits.
    CtState(u32),
    /// Arrived on the loopback interface (ifindex 1 in every network namespace).
    Loopback,
    /// Layer 4 protocol number.
    L4Proto(u8),
    /// Destination port of this layer 4 protocol.
    Port(u8, u16),
}

pub use keel_api::firewall::{ChainDescription, Description, Hook, RuleDescription, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Match,
    pub verdict: Verdict,
    pub comment: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Verdict,
    pub rules: Vec<Rule>,
}

/// A table of the `inet` family (IPv4 and IPv6 together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub table: &'static str,
    pub chains: Vec<Chain>,
}

const fn rule(matches: Match, verdict: Verdict, comment: &'static str) -> Rule {
    Rule {
        matches,
        verdict,
        comment,
    }
}

/// Keel's ruleset: everything arriving is dropped except replies to the host's own connections,
/// loopback, ICMP/ICMPv6 (path MTU discovery, neighbour discovery, ping), DHCP client traffic
/// and the agent's API.
pub fn ruleset() -> Ruleset {
    use Match::*;
    use Verdict::*;
    Ruleset {
        table: TABLE,
        chains: vec![Chain {
            name: "input",
            hook: Hook::Input,
            priority: 0,
            policy: Drop,
            rules: vec![
                rule(CtState(CT_INVALID), Drop, "invalid packets"),
                rule(
                    CtState(CT_ESTABLISHED | CT_RELATED),
                    Accept,
                    "replies to the host's own connections",
                ),
                rule(Loopback, Accept, "loopback"),
                rule(L4Proto(IPPROTO_ICMP), Accept, "ICMP"),
                rule(
                    L4Proto(IPPROTO_ICMPV6),
                    Accept,
                    "ICMPv6 (neighbour discovery)",
                ),
                rule(Port(IPPROTO_UDP, DHCP_CLIENT_PORT), Accept, "DHCP client"),
                rule(
                    Port(IPPROTO_UDP, DHCPV6_CLIENT_PORT),
                    Accept,
                    "DHCPv6 client",
                ),
                rule(
                    Port(IPPROTO_TCP, AGENT_PORT),
                    Accept,
                    "agent API (mutual TLS)",
                ),
            ],
        }],
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMPV6 => "ipv6-icmp".into(),
        other => other.to_string(),
    }
}

impl Rule {
    /// The rule in `nft` syntax.
    pub fn text(&self) -> String {
        let verdict = self.verdict.as_str();
        let what = match self.matches {
            Match::CtState(mask) => {
                let names: Vec<&str> = [
                    (CT_INVALID, "invalid"),
                    (CT_ESTABLISHED, "established"),
                    (CT_RELATED, "related"),
                ]
                .iter()
                .filter(|(bit, _)| mask & bit != 0)
                .map(|(_, name)| *name)
                .collect();
                format!("ct state {}", names.join(","))
            }
            Match::Loopback => "iif lo".into(),
            Match::L4Proto(p) => format!("meta l4proto {}", proto_name(p)),
            Match::Port(p, port) => format!("{} dport {port}", proto_name(p)),
        };
        format!("{what} {verdict}")
    }
}

impl Ruleset {
    pub fn describe(&self) -> Description {
        Description {
            family: "inet".into(),
            table: self.table.into(),
            chains: self
                .chains
                .iter()
                .map(|c| ChainDescription {
                    name: c.name.into(),
                    hook: c.hook,
                    priority: c.priority,
                    policy: c.policy,
                    rules: c
                        .rules
                        .iter()
                        .map(|r| RuleDescription {
                            rule: r.text(),
                            comment: r.comment.into(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Keel's ingress policy, for the API (`GET /host/firewall` or similar).
pub fn describe() -> Description {
    ruleset().describe()
}

/// Loads Keel's ruleset into the kernel, replacing any earlier `inet keel` table atomically.
pub fn apply() -> Result<(), crate::netlink::Error> {
    nft::load(&ruleset())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_description_is_what_keelctl_renders() {
        // keelctl/src/output.rs renders this JSON in its firewall test.
        let json = serde_json::to_string(&describe()).unwrap();
        assert!(json.starts_with(r#"{"family":"inet","table":"keel","chains":[{"name":"input","hook":"input","priority":0,"policy":"drop","rules":[{"rule":"ct state invalid drop","comment":"invalid packets"},"#), "{json}");
        assert!(
            json.ends_with(
                r#"{"rule":"tcp dport 8443 accept","comment":"agent API (mutual TLS)"}]}]}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn the_ruleset_reads_like_nft() {
        let d = describe();
        let rules: Vec<&str> = d.chains[0].rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "ct state invalid drop",
                "ct state established,related accept",
                "iif lo accept",
                "meta l4proto icmp accept",
                "meta l4proto ipv6-icmp accept",
                "udp dport 68 accept",
                "udp dport 546 accept",
                "tcp dport 8443 accept",
            ]
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["chains"][0]["policy"], "drop");
        assert_eq!(json["chains"][0]["hook"], "input");
        assert_eq!(json["family"], "inet");
        assert_eq!(
            json["chains"][0]["rules"][7]["comment"],
            "agent API (mutual TLS)"
        );
    }
}
