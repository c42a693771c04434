//! api/README.md's route table lists exactly the routes the router serves: a route added
//! to `api::ROUTES` without its row (or a row left for a route removed) fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use api::ROUTES;

/// "METHOD /path" of every row of the README's `## Routes` table.
fn readme_routes() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let section = text
        .split("\n## Routes\n")
        .nth(1)
        .expect("a `## Routes` section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(route, _)| route.to_string()))
        .filter(|r| r.contains(' '))
        .collect()
}

#[test]
fn every_route_has_its_row_in_the_readme_and_every_row_is_a_route() {
    let served: BTreeSet<String> = ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let documented = readme_routes();
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "api/README.md's route table: missing {missing:?}, not served {stale:?}"
    );
}
