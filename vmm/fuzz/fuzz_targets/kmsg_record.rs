//! libFuzzer entry for keel_init::localapi::kmsg::parse_record: the input is one read() of
//! /dev/kmsg, decoded as the reader decodes it (UTF-8, lossily).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = keel_init::localapi::kmsg::parse_record(&String::from_utf8_lossy(data));
});
