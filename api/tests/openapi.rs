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

/// The `pattern` of a schema in `components/schemas` (`field` for a property of
/// `ServiceFields`), compiled.
fn pattern(doc: &Yaml, path: &[&str]) -> regex::Regex {
    let mut node = &doc["components"]["schemas"];
    for p in path {
        node = &node[*p];
    }
    let text = node["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} has a pattern"));
    regex::Regex::new(text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Does the server parse `body` (a `PUT` body) as a service config?
fn parses(body: serde_json::Value) -> bool {
    api::body::service_config("a", body.to_string().as_bytes()).is_ok()
}

#[test]
fn duration_pattern_is_the_servers_grammar() {
    let doc = spec();
    let re = pattern(&doc, &["Duration"]);
    assert_eq!(re.as_str(), summoner::config::DURATION_PATTERN);
    for text in [
        "250ms",
        "5s",
        "1m 30s",
        "1m30s",
        "1h",
        "0s",
        "1s 2ms 3us 4ns",
        "9999999999h",
        "",
        "5",
        "5 s",
        "1.5s",
        "2min",
        "1d",
        " 5s",
        "5s ",
        "5s\n",
        "1s  2s",
        "12345678901s",
        "1s 1s 1s 1s 1s 1s",
        "1s 1s 1s 1s 1s 1s 1s",
        "-1s",
        "１s",
    ] {
        let body =
            serde_json::json!({"listen": "127.0.0.1:1", "image": "/x", "idle_timeout": text});
        assert_eq!(re.is_match(text), parses(body), "{text:?}");
    }
}

#[test]
fn listen_pattern_is_what_the_server_parses() {
    let doc = spec();
    let re = pattern(&doc, &["ServiceFields", "properties", "listen"]);
    for text in [
        "127.0.0.1:8080",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "1.2.3.4:65536",
        "256.1.1.1:1",
        "01.2.3.4:1",
        "1.2.3:1",
        "127.0.0.1",
        "127.0.0.1:080",
        "127.0.0.1:00",
        "127.0.0.1:8080\n",
        " 127.0.0.1:1",
        "localhost:80",
        "[::1]:80",
        "[::]:0",
        "[FE80::1]:1",
        "[1:2:3:4:5:6:7:8]:1",
        "[1:2:3:4:5:6:7::]:1",
        "[::2:3:4:5:6:7:8]:1",
        "[1::8]:1",
        "[1:2:3:4:5:6:7:8:9]:1",
        "[1:::2]:1",
        "[fe80::1%2]:80",
        "[::ffff:1.2.3.4]:80",
        "::1:80",
        "[12345::]:1",
        "[::1]",
    ] {
        let body = serde_json::json!({"listen": text, "image": "/x"});
        assert_eq!(re.is_match(text), parses(body), "{text:?}");
    }
}

#[test]
fn integer_ranges_are_the_servers() {
    let doc = spec();
    let fields = &doc["components"]["schemas"]["ServiceFields"]["properties"];
    let max = |f: &str| fields[f]["maximum"].as_i64().map(|m| m as u64);
    let big = |f: &str| {
        // yaml-rust2 reads integers past i64 as reals.
        fields[f]["maximum"]
            .as_f64()
            .or_else(|| fields[f]["maximum"].as_i64().map(|m| m as f64))
    };
    let count = summoner::config::MAX_COUNT as u64;
    for f in [
        "max_concurrent",
        "queue_depth",
        "pool_size",
        "max_connections",
    ] {
        assert_eq!(max(f), Some(count), "{f}");
    }
    assert_eq!(max("vcpus"), Some(u64::from(vmm::config::MAX_VCPUS)));
    assert_eq!(max("guest_port"), Some(65535));
    for f in ["memory_mib", "memory_limit_mib"] {
        assert_eq!(max(f), Some(u64::from(u32::MAX)), "{f}");
    }
    assert_eq!(big("fuel"), Some(u64::MAX as f64));
    // The server takes every value up to the maximum, and, as JSON Schema, a zero fraction
    // (4159.0 is the integer 4159) but no other.
    for (field, top) in [
        ("memory_mib", serde_json::json!(u32::MAX)),
        ("memory_limit_mib", serde_json::json!(u32::MAX)),
        ("fuel", serde_json::json!(u64::MAX)),
        ("max_connections", serde_json::json!(count)),
    ] {
        let body = |v: serde_json::Value| {
            let mut b = serde_json::json!({"listen": "127.0.0.1:1", "wasm": "/h.wasm"});
            b[field] = v;
            b
        };
        assert!(parses(body(top)), "{field}");
        assert!(parses(body(serde_json::json!(4159.0))), "{field}: 4159.0");
        assert!(!parses(body(serde_json::json!(4159.5))), "{field}: 4159.5");
    }
}
