//! A `Ruleset` as nf_tables netlink messages (the encoding `nft` itself produces), loading it in
//! one atomic batch, and reading the table back.

use super::{Chain, Hook, Match, Rule, Ruleset, Verdict};
use crate::netlink::attr::{self, attrs};
use crate::netlink::message::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE};
use crate::netlink::{Error, Message, Socket};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NF_INET_LOCAL_IN: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_IIF: u32 = 4;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
/// libnftnl's user data type for a rule comment (so `nft list ruleset` shows it).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const LOOPBACK_IFINDEX: u32 = 1;

fn kind(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// `struct nfgenmsg`: the family, version 0, the resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let [hi, lo] = res_id.to_be_bytes();
    [family, 0, hi, lo]
}

fn nft_message(msg: u16, flags: u16) -> Message {
    Message::new(kind(msg), flags, &nfgenmsg(NFPROTO_INET, 0))
}

fn verdict_code(v: Verdict) -> u32 {
    match v {
        Verdict::Accept => NF_ACCEPT,
        Verdict::Drop => NF_DROP,
    }
}

/// One expression: `name` with the attributes `data` writes.
fn expr(m: &mut Message, name: &str, data: impl FnOnce(&mut Message)) {
    m.begin(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, name);
    m.begin(NFTA_EXPR_DATA);
    data(m);
    m.end().end();
}

fn cmp(m: &mut Message, op: u32, value: &[u8]) {
    expr(m, "cmp", |m| {
        m.u32_be(1, NFT_REG_1).u32_be(2, op);
        m.begin(3).attr(NFTA_DATA_VALUE, value).end();
    });
}

fn meta(m: &mut Message, key: u32) {
    expr(m, "meta", |m| {
        m.u32_be(2, key).u32_be(1, NFT_REG_1);
    });
}

/// The expressions of a rule, in order, as (name, writer) calls on `m`.
fn expressions(m: &mut Message, rule: &Rule) {
    match rule.matches {
        Match::CtState(mask) => {
            expr(m, "ct", |m| {
                m.u32_be(1, NFT_REG_1).u32_be(2, NFT_CT_STATE);
            });
            expr(m, "bitwise", |m| {
                m.u32_be(1, NFT_REG_1).u32_be(2, NFT_REG_1).u32_be(3, 4);
                m.begin(4).attr(NFTA_DATA_VALUE, &mask.to_ne_bytes()).end();
                m.begin(5).attr(NFTA_DATA_VALUE, &0u32.to_ne_bytes()).end();
            });
            cmp(m, NFT_CMP_NEQ, &0u32.to_ne_bytes());
        }
        Match::Loopback => {
            meta(m, NFT_META_IIF);
            cmp(m, NFT_CMP_EQ, &LOOPBACK_IFINDEX.to_ne_bytes());
        }
        Match::L4Proto(proto) => {
            meta(m, NFT_META_L4PROTO);
            cmp(m, NFT_CMP_EQ, &[proto]);
        }
        Match::Port(proto, port) => {
            meta(m, NFT_META_L4PROTO);
            cmp(m, NFT_CMP_EQ, &[proto]);
            expr(m, "payload", |m| {
                m.u32_be(1, NFT_REG_1)
                    .u32_be(2, NFT_PAYLOAD_TRANSPORT_HEADER)
                    .u32_be(3, 2)
                    .u32_be(4, 2);
            });
            cmp(m, NFT_CMP_EQ, &port.to_be_bytes());
        }
    }
    expr(m, "immediate", |m| {
        m.u32_be(1, NFT_REG_VERDICT);
        m.begin(2)
            .begin(NFTA_DATA_VERDICT)
            .u32_be(NFTA_VERDICT_CODE, verdict_code(rule.verdict))
            .end()
            .end();
    });
}

/// The expression names a rule compiles to (what a dump shows).
pub fn expression_names(rule: &Rule) -> Vec<String> {
    let mut m = nft_message(NFT_MSG_NEWRULE, 0);
    m.begin(NFTA_RULE_EXPRESSIONS);
    expressions(&mut m, rule);
    m.end();
    let Ok(bytes) = m.encode(0, 0) else {
        return Vec::new();
    };
    let body = bytes.get(20..).unwrap_or_default();
    attr::find(body, NFTA_RULE_EXPRESSIONS)
        .map(|list| names_of(list.payload))
        .unwrap_or_default()
}

fn names_of(list: &[u8]) -> Vec<String> {
    attrs(list)
        .filter_map(|e| Some(attr::find(e.payload, NFTA_EXPR_NAME)?.str()))
        .collect()
}

/// The text of string attribute `kind` in `data`.
fn attr_str(data: &[u8], kind: u16) -> Option<String> {
    Some(attr::find(data, kind)?.str())
}

/// The value of big-endian u32 attribute `kind` in `data`.
fn attr_u32(data: &[u8], kind: u16) -> Option<u32> {
    attr::find(data, kind)?.u32_be()
}

fn hook_number(hook: Hook) -> u32 {
    match hook {
        Hook::Input => NF_INET_LOCAL_IN,
    }
}

fn chain_message(table: &str, chain: &Chain) -> Message {
    let mut m = nft_message(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK);
    m.str(NFTA_CHAIN_TABLE, table)
        .str(NFTA_CHAIN_NAME, chain.name);
    m.begin(NFTA_CHAIN_HOOK)
        .u32_be(NFTA_HOOK_HOOKNUM, hook_number(chain.hook))
        .u32_be(NFTA_HOOK_PRIORITY, chain.priority as u32)
        .end();
    m.u32_be(NFTA_CHAIN_POLICY, verdict_code(chain.policy))
        .str(NFTA_CHAIN_TYPE, "filter");
    m
}

fn rule_message(table: &str, chain: &str, rule: &Rule) -> Message {
    let flags = NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK;
    let mut m = nft_message(NFT_MSG_NEWRULE, flags);
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    m.begin(NFTA_RULE_EXPRESSIONS);
    expressions(&mut m, rule);
    m.end();
    let mut udata = vec![NFTNL_UDATA_RULE_COMMENT, rule.comment.len() as u8 + 1];
    udata.extend_from_slice(rule.comment.as_bytes());
    udata.push(0);
    m.attr(NFTA_RULE_USERDATA, &udata);
    m
}

/// The batch that replaces table `inet <name>` with `ruleset`: create (so the delete cannot
/// fail), delete, create, chains, rules. With a name for each message, for errors.
pub fn batch(ruleset: &Ruleset) -> (Vec<Message>, Vec<String>) {
    let table = ruleset.table;
    let mut messages = Vec::new();
    let mut names = Vec::new();
    let mut new_table = nft_message(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK);
    new_table.str(NFTA_TABLE_NAME, table);
    let mut del_table = nft_message(NFT_MSG_DELTABLE, NLM_F_ACK);
    del_table.str(NFTA_TABLE_NAME, table);
    messages.extend([new_table.clone(), del_table, new_table]);
    names.extend([
        format!("table inet {table}"),
        format!("replacing table inet {table}"),
        format!("table inet {table}"),
    ]);
    for chain in &ruleset.chains {
        messages.push(chain_message(table, chain));
        names.push(format!("chain {} (hook {:?})", chain.name, chain.hook));
        for rule in &chain.rules {
            messages.push(rule_message(table, chain.name, rule));
            names.push(format!("rule {:?} in chain {}", rule.text(), chain.name));
        }
    }
    (messages, names)
}

fn batch_marker(kind: u16) -> Message {
    Message::new(kind, 0, &nfgenmsg(0, NFNL_SUBSYS_NFTABLES))
}

/// Loads `ruleset` in one transaction: either all of it is in force afterwards, or nothing
/// changed.
pub fn load(ruleset: &Ruleset) -> Result<(), Error> {
    let (messages, names) = batch(ruleset);
    let mut all = Vec::with_capacity(messages.len() + 2);
    all.push(batch_marker(NFNL_MSG_BATCH_BEGIN));
    all.extend(messages);
    all.push(batch_marker(NFNL_MSG_BATCH_END));
    // Only the kernel's refusal of the whole batch answers a marker.
    let mut all_names = Vec::with_capacity(all.len());
    all_names.push("the batch".to_string());
    all_names.extend(names);
    all_names.push("the batch".to_string());
    Socket::open(libc::NETLINK_NETFILTER)?.batch(&all, &all_names)
}

/// A chain of the table as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedChain {
    pub name: String,
    pub hook: Option<u32>,
    pub priority: Option<i32>,
    pub policy: Option<Verdict>,
    /// Each rule's expression names and comment.
    pub rules: Vec<(Vec<String>, String)>,
}

/// Reads table `inet <table>` back from the kernel: its chains and their rules, in order.
pub fn read_back(table: &str) -> Result<Vec<LoadedChain>, Error> {
    let mut socket = Socket::open(libc::NETLINK_NETFILTER)?;
    let mut request = nft_message(NFT_MSG_GETCHAIN, 0);
    request.str(NFTA_CHAIN_TABLE, table);
    let mut chains = Vec::new();
    for payload in socket.dump(&request, "chain dump")? {
        let body = payload.get(4..).unwrap_or_default();
        if attr_str(body, NFTA_CHAIN_TABLE).as_deref() != Some(table) {
            continue;
        }
        let hook = attr::find(body, NFTA_CHAIN_HOOK).map(|h| h.payload);
        chains.push(LoadedChain {
            name: attr_str(body, NFTA_CHAIN_NAME).unwrap_or_default(),
            hook: hook.and_then(|h| attr_u32(h, NFTA_HOOK_HOOKNUM)),
            priority: hook
                .and_then(|h| attr_u32(h, NFTA_HOOK_PRIORITY))
                .map(|p| p as i32),
            policy: attr_u32(body, NFTA_CHAIN_POLICY).map(|p| {
                if p == NF_ACCEPT {
                    Verdict::Accept
                } else {
                    Verdict::Drop
                }
            }),
            rules: Vec::new(),
        });
    }
    let mut request = nft_message(NFT_MSG_GETRULE, 0);
    request.str(NFTA_RULE_TABLE, table);
    for payload in socket.dump(&request, "rule dump")? {
        let body = payload.get(4..).unwrap_or_default();
        if attr_str(body, NFTA_RULE_TABLE).as_deref() != Some(table) {
            continue;
        }
        let chain = attr_str(body, NFTA_RULE_CHAIN).unwrap_or_default();
        let names = attr::find(body, NFTA_RULE_EXPRESSIONS)
            .map(|list| names_of(list.payload))
            .unwrap_or_default();
        let comment = attr::find(body, NFTA_RULE_USERDATA)
            .and_then(|u| u.payload.get(2..))
            .map(|c| {
                String::from_utf8_lossy(c)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_default();
        if let Some(c) = chains.iter_mut().find(|c| c.name == chain) {
            c.rules.push((names, comment));
        }
    }
    Ok(chains)
}

/// What `read_back` should return for `ruleset`.
pub fn expected(ruleset: &Ruleset) -> Vec<LoadedChain> {
    ruleset
        .chains
        .iter()
        .map(|c| LoadedChain {
            name: c.name.to_string(),
            hook: Some(hook_number(c.hook)),
            priority: Some(c.priority),
            policy: Some(c.policy),
            rules: c
                .rules
                .iter()
                .map(|r| (expression_names(r), r.comment.to_string()))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::firewall::{ruleset, IPPROTO_TCP};
    use crate::netlink::message::parse_messages;

    #[test]
    fn rules_compile_to_nft_expressions() {
        let r = |matches| Rule {
            matches,
            verdict: Verdict::Accept,
            comment: "",
        };
        let cases: [(Match, &[&str]); 4] = [
            (Match::CtState(6), &["ct", "bitwise", "cmp", "immediate"]),
            (Match::Loopback, &["meta", "cmp", "immediate"]),
            (Match::L4Proto(1), &["meta", "cmp", "immediate"]),
            (
                Match::Port(IPPROTO_TCP, 8443),
                &["meta", "cmp", "payload", "cmp", "immediate"],
            ),
        ];
        for (matches, want) in cases {
            assert_eq!(expression_names(&r(matches)), want, "{matches:?}");
        }
    }

    #[test]
    fn the_batch_replaces_the_table_then_adds_chain_and_rules() {
        let (messages, names) = batch(&ruleset());
        assert_eq!(messages.len(), 3 + 1 + 8);
        assert_eq!(names[1], "replacing table inet keel");
        assert_eq!(names[11], "rule \"tcp dport 8443 accept\" in chain input");
        let bytes = messages[11].encode(5, 0).unwrap();
        let msg = &parse_messages(&bytes).unwrap()[0];
        assert_eq!(msg.kind, kind(NFT_MSG_NEWRULE));
        let body = &msg.payload[4..];
        assert_eq!(attr_str(body, NFTA_RULE_CHAIN).as_deref(), Some("input"));
        let udata = attr::find(body, NFTA_RULE_USERDATA).unwrap().payload;
        assert_eq!(udata, b"\x00\x17agent API (mutual TLS)\x00");
    }
}
