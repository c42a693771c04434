//! The WAGI/CGI response parser of the dust-wasm guest: a handler's stdout (header lines,
//! a blank line, the body) becomes the HTTP response. The handler is untrusted code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = dust_wasi::cgi::response(data) {
        assert!((100..=999).contains(&r.status));
        for (name, _) in &r.headers {
            assert!(!name.eq_ignore_ascii_case("content-length"));
        }
    }
    if let Ok(s) = core::str::from_utf8(data) {
        assert!(dust_wasi::cgi::percent_decode(s).len() <= s.len());
    }
});
