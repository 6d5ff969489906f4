//! libFuzzer entry for keel-http's response heads, as a client (keelctl, the registrar, the
//! agent talking to keel-vmm) reads what a manager, a proxy or a VMM sends.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((response, _framing, _rest)) =
        keel_http::parse_response_head(data, &keel_http::Limits::default())
    {
        let _ = response.header("content-type");
    }
});
