//! The text forms a service's settings take in TOML, API bodies and CLI flags alike:
//! durations and listen addresses. One parser each, used by serde and clap.

/// Every duration dust takes (service settings, `drain_delay`, `--grace`, `dust run
/// --timeout`): one to six parts, each 1-10 digits and a unit (`ns`, `us`,
/// `ms`, `s`, `m`, `h`), optionally one space between parts: "250ms", "1m 30s", "1h".
/// Narrower than humantime on purpose, so that the API spec can state it as a pattern
/// ([`DURATION_PATTERN`]) that the parser matches exactly; it is also what the daemon
/// writes back. The digit and part limits keep every value far below an overflow.
pub mod service_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    const UNITS: [&str; 6] = ["ns", "us", "ms", "s", "m", "h"];

    /// Does `s` follow the grammar? (Does not check the range.)
    pub fn well_formed(s: &str) -> bool {
        let mut rest = s;
        let mut parts = 0;
        while !rest.is_empty() {
            if parts > 0 {
                rest = rest.strip_prefix(' ').unwrap_or(rest);
            }
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if !(1..=10).contains(&digits) {
                return false;
            }
            rest = &rest[digits..];
            let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            if !UNITS.contains(&&rest[..letters]) {
                return false;
            }
            rest = &rest[letters..];
            parts += 1;
        }
        (1..=6).contains(&parts)
    }

    /// `s` as a duration, or why not.
    pub fn parse(s: &str) -> Result<Duration, String> {
        if !well_formed(s) {
            return Err(format!(
                "invalid duration {s:?}: use numbers with units ns, us, ms, s, m or h, \
                 e.g. \"250ms\", \"5s\" or \"1m 30s\""
            ));
        }
        humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e})"))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// `d` in the grammar: hours at most (never days, which the grammar has no unit for),
    /// the parts that are not zero, "0s" for nothing.
    pub fn format(d: Duration) -> String {
        let secs = d.as_secs();
        let nanos = d.subsec_nanos();
        let parts = [
            (secs / 3600, "h"),
            (secs / 60 % 60, "m"),
            (secs % 60, "s"),
            (u64::from(nanos / 1_000_000), "ms"),
            (u64::from(nanos / 1_000 % 1_000), "us"),
            (u64::from(nanos % 1_000), "ns"),
        ];
        let words: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, unit)| format!("{n}{unit}"))
            .collect();
        match words.is_empty() {
            true => "0s".into(),
            false => words.join(" "),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// The same for an optional duration (absent or `null`: `None`).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => super::parse(&s).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// The grammar of [`service_duration`] as an ECMA-262 regular expression, as
/// `docs/api/openapi.yaml` states it (a test holds the two together).
pub const DURATION_PATTERN: &str =
    "^[0-9]{1,10}(ns|us|ms|s|m|h)( ?[0-9]{1,10}(ns|us|ms|s|m|h)){0,5}$";

/// A service's `listen`: `a.b.c.d:port` or `[ipv6]:port`, written plainly: no leading zeros
/// in the port (Rust's parser would take `:080`), no `%zone` and no embedded IPv4 in an
/// IPv6 address. What is left is exactly what the API spec's pattern describes.
pub mod listen_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// `s` as a listen address, or why not.
    pub fn parse(s: &str) -> Result<SocketAddr, String> {
        let bad = || {
            format!(
                "invalid listen address {s:?}: use ip:port, e.g. \"127.0.0.1:8080\" or \
                 \"[::1]:8080\" (port 0-65535 without leading zeros)"
            )
        };
        let addr: SocketAddr = s.parse().map_err(|_| bad())?;
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let plain_port = port == "0" || !port.starts_with('0');
        let plain_host = !host.starts_with('[') || !host.contains(['%', '.']);
        if !plain_port || !plain_host {
            return Err(bad());
        }
        Ok(addr)
    }

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}
