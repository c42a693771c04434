//! The duration and listen-address grammars of a service config (API bodies, TOML, flags):
//! no panic, and what parses prints back to something that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use summoner::config::{listen_addr, service_duration};

fuzz_target!(|s: &str| {
    if let Ok(d) = service_duration::parse(s) {
        let _ = d;
    }
    if let Ok(a) = listen_addr::parse(s) {
        assert_eq!(listen_addr::parse(&a.to_string()).ok(), Some(a), "{s:?}");
    }
});
