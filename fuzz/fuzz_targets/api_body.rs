//! The API's request parsing: the route table's matcher on a method and path, and the JSON
//! bodies of `POST /v1/services` and `PUT /v1/services/{name}` (status codes, never panics).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = api::body::name_in(data);
    if let Ok(cfg) = api::body::service_config("svc", data) {
        // What the daemon writes back must read back the same, whatever the durations
        // (fuzz/regressions/api_body-days-duration: 70 hours were written as days once).
        let json = serde_json::to_vec(&cfg).expect("a parsed config serializes");
        let again = api::body::service_config("svc", &json).expect("a written config parses");
        assert_eq!(
            serde_json::to_value(&cfg).ok(),
            serde_json::to_value(&again).ok()
        );
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let (method, path) = s.split_once(' ').unwrap_or(("GET", s));
        let _ = api::routes::find(method, path);
    }
});
