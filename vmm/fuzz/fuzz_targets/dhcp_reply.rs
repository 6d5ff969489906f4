//! libFuzzer entry for keel_init::net::dhcp::fuzz_reply: the input is a DHCP payload received on
//! port 68, parsed by `parse_reply` and handed to a client in each phase that waits for a reply.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keel_init::net::dhcp::fuzz_reply(data);
});
