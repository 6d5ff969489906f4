//! libFuzzer entry for keel-http's request heads (httparse plus Keel's strict rules): any bytes
//! must give a head or a refusal with a status, never a panic; a head that parses must read its
//! body (Content-Length or chunked) from what follows it without panicking either.
#![no_main]

use keel_http::Limits;
use std::io::Read;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    match keel_http::parse_request_head(data, &limits) {
        Ok(mut head) => {
            let _ = (head.length(), head.expect_continue, head.pipelined());
            // The body comes from the bytes after the head, which the head keeps; nothing more.
            let mut stream = std::io::Cursor::new(Vec::new());
            if let Ok(mut body) = head.body(&mut stream, &limits) {
                let _ = body.read_to_end(&mut Vec::new());
            }
        }
        Err(e) => {
            let _ = e.response();
        }
    }
});
