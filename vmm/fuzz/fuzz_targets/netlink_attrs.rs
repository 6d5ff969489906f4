//! libFuzzer entry for netlink parsing, through the one codec (`keel_init::netlink`): a received
//! datagram split into messages, each message's status (`NLMSG_ERROR`/`NLMSG_DONE` with extended
//! acks), its attributes walked the way nested ones are read, and the rtnetlink payload parsers
//! (`net::rtnetlink`: link, address and route).
//!
//! The first byte picks what the rest is: 0..=2 a payload of RTM_NEWLINK, RTM_NEWADDR or
//! RTM_NEWROUTE; 3 a bare attribute stream; otherwise a datagram.
#![no_main]

use keel_init::net::rtnetlink as rt;
use keel_init::netlink::{self, message, Attr};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

/// Reads every attribute as each accessor would, and nested ones a few levels deep.
fn walk(attr: &Attr<'_>, depth: u32) {
    let _ = (
        attr.u8(),
        attr.u16_ne(),
        attr.u32_ne(),
        attr.u32_be(),
        attr.ip(),
    );
    let _ = attr.str();
    if depth < 4 {
        for inner in attr.attrs() {
            walk(&inner, depth + 1);
        }
    }
}

fn attributes(data: &[u8]) {
    if let Ok(attrs) = netlink::parse_attributes(data) {
        for a in &attrs {
            walk(a, 0);
        }
    }
}

fn payload(kind: u16, data: &[u8]) {
    match kind {
        RTM_NEWLINK => {
            let _ = rt::parse_link(data);
        }
        RTM_NEWADDR => {
            let _ = rt::parse_addr(data);
        }
        RTM_NEWROUTE => {
            let _ = rt::parse_default_route(data);
        }
        _ => attributes(data.get(4..).unwrap_or_default()),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick {
        0 => payload(RTM_NEWLINK, rest),
        1 => payload(RTM_NEWADDR, rest),
        2 => payload(RTM_NEWROUTE, rest),
        3 => attributes(rest),
        _ => {
            if let Ok(messages) = message::parse_messages(rest) {
                for m in &messages {
                    let _ = message::parse_status(m);
                    payload(m.kind, m.payload);
                }
            }
        }
    }
});
