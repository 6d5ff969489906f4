//! libFuzzer entry for the netlink attribute parsers, as they are today: rtnetlink's
//! (`net::netlink`: link, address and route payloads, nested attributes) and nftables'
//! (`firewall::netlink`: a received datagram split into messages, their attributes). When the two
//! codecs become one, only this file changes.
//!
//! The first byte picks what the rest is: 0..=2 a payload of RTM_NEWLINK, RTM_NEWADDR or
//! RTM_NEWROUTE; otherwise a datagram, whose messages go to the parser their type names.
#![no_main]

use keel_init::firewall::netlink as nf;
use keel_init::net::netlink as rt;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

/// Walks attributes the way nested ones are read, a few levels deep.
fn walk(data: &[u8], depth: u32) {
    for (kind, value) in nf::attrs(data) {
        let _ = nf::attr_str(data, kind);
        let _ = nf::attr_u32(data, kind);
        if depth < 4 {
            walk(value, depth + 1);
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
        _ => walk(data.get(4..).unwrap_or_default(), 0),
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
        _ => {
            if let Ok(messages) = nf::split(rest) {
                for m in messages {
                    payload(m.kind, &m.payload);
                }
            }
        }
    }
});
