//! The `code` label of `dust_requests_total`: the HTTP status sent to the client, from a
//! fixed set so that a guest answering odd statuses cannot grow the series without bound.

/// Statuses counted under their own number; any other is counted by its class (`2xx`..),
/// and a request that sent no status (TCP mode, or the client left first) as `none`.
const NAMED: [(u16, &str); 24] = [
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (206, "206"),
    (301, "301"),
    (302, "302"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (413, "413"),
    (422, "422"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (505, "505"),
];

/// Label values for statuses outside [`NAMED`], and for no status.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The `code` label value for `status` (`None`: no HTTP status was sent).
pub fn label(status: Option<u16>) -> &'static str {
    let Some(s) = status else { return "none" };
    if let Some((_, name)) = NAMED.iter().find(|(n, _)| *n == s) {
        return name;
    }
    match s {
        100..=199 => CLASSES[0],
        200..=299 => CLASSES[1],
        300..=399 => CLASSES[2],
        400..=499 => CLASSES[3],
        // hyper never lets a status outside 100..=999 through; 600 and up count as 5xx.
        _ => CLASSES[4],
    }
}

/// The outcome of a request the guest answered with `status`: not `ok` when the guest
/// itself says it failed as dust would have (502: a wasm trap or bad output; 504: out of
/// fuel), so that a dashboard of outcomes sees those failures.
pub fn answered(status: u16) -> super::Outcome {
    match status {
        502 => super::Outcome::crash,
        504 => super::Outcome::timeout,
        _ => super::Outcome::ok,
    }
}

/// Every value [`label`] can return (to remove a service's series).
pub fn all() -> impl Iterator<Item = &'static str> {
    NAMED.iter().map(|(_, n)| *n).chain(CLASSES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_into_the_fixed_set() {
        let known: Vec<&str> = all().collect();
        for s in 100..=999u16 {
            assert!(known.contains(&label(Some(s))), "{s}");
        }
        assert!(known.contains(&label(None)));
        assert_eq!(label(Some(200)), "200");
        assert_eq!(label(Some(502)), "502");
        assert_eq!(label(Some(418)), "4xx");
        assert_eq!(label(Some(299)), "2xx");
        assert_eq!(label(None), "none");
        assert_eq!(answered(200), crate::metrics::Outcome::ok);
        assert_eq!(answered(500), crate::metrics::Outcome::ok);
        assert_eq!(answered(502), crate::metrics::Outcome::crash);
        assert_eq!(answered(504), crate::metrics::Outcome::timeout);
        for (n, name) in NAMED {
            assert_eq!(name, n.to_string());
        }
    }
}
