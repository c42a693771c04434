//! The guest runtime's HTTP request parser (dust-guest, built for the host): a request head
//! from a client, as `Request::from_head` takes it, then every accessor a handler and the
//! WAGI translation use.
#![no_main]

use dust_guest::http::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = Request::from_head(data) else {
        return;
    };
    let _ = (req.method(), req.path(), req.minor_version(), req.body());
    for (name, _) in req.headers() {
        assert!(req.header(name).is_some(), "{name:?} listed but not found");
    }
    let _ = dust_wasi::cgi::invocation(&req, "vm", &[("K", "v")]);
});
