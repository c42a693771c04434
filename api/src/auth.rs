//! Bearer-token check for the TCP listener. The Unix socket needs none: its mode (0600) is
//! the access control there.

use http::{header, HeaderMap};

/// True if `headers` carry `Authorization: Bearer <token>`. The comparison takes a time
/// that depends only on the expected token's length, never on how much of it matched.
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let given = value[SCHEME.len()..].trim_ascii();
    constant_time_eq(given, token.as_bytes())
}

fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= usize::from(g ^ e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn accepts_only_the_exact_token() {
        assert!(authorized(&with("Bearer s3cret"), "s3cret"));
        assert!(authorized(&with("bearer s3cret "), "s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer S3cret",
            "Basic s3cret",
            "Bearer",
            "Bearer ",
            "s3cret",
        ] {
            assert!(!authorized(&with(bad), "s3cret"), "{bad}");
        }
    }

    #[test]
    fn compare_handles_all_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ab\0"));
    }
}
