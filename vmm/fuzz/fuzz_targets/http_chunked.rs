//! libFuzzer entry for keel-http's chunked decoder (chunk sizes, extensions, trailers and the
//! limits on each), as uploads and chunked answers reach it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = keel_http::Limits {
        max_body: 4096,
        ..keel_http::Limits::default()
    };
    if let Ok((body, _trailers)) = keel_http::decode_chunked(data, &limits) {
        assert!(
            body.len() <= limits.max_body,
            "the decoder passed its limit"
        );
    }
});
