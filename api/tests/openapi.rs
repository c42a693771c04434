//! `docs/api/openapi.yaml` is the contract: every route the router serves is in it and
//! every operation in it is served, its `$ref`s resolve, and its error codes are the
//! code's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use api::{ErrorCode, ROUTES};
use yaml_rust2::{Yaml, YamlLoader};

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn spec() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn spec_operations(doc: &Yaml) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_hash().expect("a `paths` map");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path keys are strings");
        for (key, _) in item.as_hash().expect("a path item map") {
            let key = key.as_str().expect("string keys");
            if METHODS.contains(&key) {
                ops.insert((key.to_uppercase(), path.to_string()));
            }
        }
    }
    ops
}

#[test]
fn spec_and_router_have_the_same_routes() {
    let doc = spec();
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "OpenAPI 3.1"
    );
    let in_spec = spec_operations(&doc);
    let in_code: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing_in_spec: Vec<_> = in_code.difference(&in_spec).collect();
    let missing_in_code: Vec<_> = in_spec.difference(&in_code).collect();
    assert!(
        missing_in_spec.is_empty() && missing_in_code.is_empty(),
        "served but not in docs/api/openapi.yaml: {missing_in_spec:?}; \
         in docs/api/openapi.yaml but not served: {missing_in_code:?}"
    );
}

#[test]
fn every_operation_documents_its_responses() {
    let doc = spec();
    for (method, path) in spec_operations(&doc) {
        let op = &doc["paths"][path.as_str()][method.to_lowercase().as_str()];
        let responses = op["responses"]
            .as_hash()
            .unwrap_or_else(|| panic!("{method} {path}: no responses"));
        let codes: Vec<&str> = responses.keys().filter_map(Yaml::as_str).collect();
        assert!(
            codes.iter().any(|c| c.starts_with('2')),
            "{method} {path}: no 2xx response"
        );
        // Every route answers 401 on the TCP listener without a token.
        assert!(codes.contains(&"401"), "{method} {path}: no 401");
        // A named resource that may be absent (PUT creates it instead).
        if path.contains('{') && method != "PUT" {
            assert!(codes.contains(&"404"), "{method} {path}: no 404");
        }
        if method == "PUT" {
            for c in ["400", "409", "413", "415", "422"] {
                assert!(codes.contains(&c), "{method} {path}: no {c}");
            }
        }
    }
}

fn walk_refs<'a>(node: &'a Yaml, out: &mut Vec<&'a str>) {
    match node {
        Yaml::Hash(h) => {
            for (k, v) in h {
                if k.as_str() == Some("$ref") {
                    out.push(v.as_str().expect("$ref is a string"));
                } else {
                    walk_refs(v, out);
                }
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| walk_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves() {
    let doc = spec();
    let mut refs = Vec::new();
    walk_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("only local refs: {r}"));
        let mut node = &doc;
        for part in pointer.split('/') {
            node = &node[part];
            assert!(!node.is_badvalue(), "{r} does not resolve");
        }
    }
}

#[test]
fn error_codes_match_the_code() {
    let doc = spec();
    let listed: BTreeSet<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_vec()
        .expect("Error.error.code has an enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let code: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, code, "Error.code enum in docs/api/openapi.yaml");
}
