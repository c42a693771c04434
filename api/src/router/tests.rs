//! The router against the fake [`Control`]: every status code of the contract.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::fake::Fake;

use crate::router::{Router, Settings};
use test_support as host;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// The error code, after checking the error body has exactly `code` and `message`.
    fn code(&self) -> String {
        let v = self.json();
        let err = v["error"].as_object().unwrap();
        assert_eq!(err.len(), 2, "{}", self.text);
        assert!(!err["message"].as_str().unwrap().is_empty());
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "{}",
            self.text
        );
        err["code"].as_str().unwrap().to_string()
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

struct T {
    router: Router<Fake>,
    fake: Arc<Fake>,
}

impl T {
    fn new(fake: Fake) -> Self {
        let fake = Arc::new(fake);
        Self {
            router: Router::new(fake.clone(), Settings::default()),
            fake,
        }
    }

    async fn req(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
        token: Option<&str>,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let resp = self.router.handle(req, token).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.req(Method::GET, path, &[], Bytes::new(), None).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.req(Method::DELETE, path, &[], Bytes::new(), None)
            .await
    }

    async fn put(&self, path: &str, body: &Value) -> Answer {
        self.req(
            Method::PUT,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
            None,
        )
        .await
    }
}

fn image() -> String {
    host::tiny_elf().display().to_string()
}

fn config(listen: &str) -> Value {
    json!({"listen": listen, "image": image(), "pool_size": 0})
}

/// A free loopback port (bound and released).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn health_version_metrics() {
    let t = T::new(Fake::default());
    let a = t.get("/v1/health").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"status": "ok"}));
    let a = t.get("/v1/version").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(a.json()["api"], "v1");
    let a = t.get("/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(a.text.contains("dust_running_vms"), "{}", a.text);
    assert!(!a.text.contains("# EOF"), "{}", a.text);
}

#[tokio::test]
async fn metrics_are_openmetrics_only_when_accept_prefers_it() {
    let t = T::new(Fake::default());
    const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    for (accept, want) in [
        // What Prometheus 2.x sends by default.
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            OPENMETRICS,
        ),
        ("application/openmetrics-text", OPENMETRICS),
        ("text/plain", PROMETHEUS),
        ("text/plain;q=1, application/openmetrics-text;q=0.5", PROMETHEUS),
        ("application/json", PROMETHEUS),
    ] {
        let a = t
            .req(
                Method::GET,
                "/metrics",
                &[("accept", accept)],
                Bytes::new(),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{accept}");
        assert_eq!(a.headers[header::CONTENT_TYPE], want, "{accept}");
        assert_eq!(a.headers[header::VARY], "accept", "{accept}");
        assert_eq!(a.text.ends_with("# EOF\n"), want == OPENMETRICS, "{accept}: {}", a.text);
    }
}

#[tokio::test]
async fn post_drain_is_202_and_only_the_first_starts_it() {
    let t = T::new(Fake::default());
    let a = t.req(Method::POST, "/v1/drain", &[], "", None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json(), json!({"status": "draining", "started": true}));
    let a = t.req(Method::POST, "/v1/drain", &[], "", None).await;
    assert_eq!(a.json(), json!({"status": "draining", "started": false}));
    assert_eq!(t.fake.log(), ["drain", "drain"]);
    let a = t.get("/v1/drain").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405_with_allow() {
    let t = T::new(Fake::default());
    let a = t.get("/v1/nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "not_found");
    assert!(a.message().contains("/v1/nope"));
    let a = t
        .req(Method::DELETE, "/v1/services", &[], Bytes::new(), None)
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.code(), "method_not_allowed");
    assert_eq!(a.headers[header::ALLOW], "GET, POST");
    let a = t
        .req(Method::PATCH, "/v1/services/x", &[], Bytes::new(), None)
        .await;
    assert_eq!(a.headers[header::ALLOW], "GET, PUT, DELETE");
    let a = t.put("/metrics", &json!({})).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn post_creates_and_refuses_a_duplicate_name() {
    let t = T::new(Fake::default());
    let post = |body: Value| {
        t.req(
            Method::POST,
            "/v1/services",
            &[("content-type", "application/json")],
            body.to_string(),
            None,
        )
    };
    let mut body = config("127.0.0.1:0");
    body["name"] = json!("hello");
    let a = post(body.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = post(body).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.code(), "already_exists");
    assert!(a.message().contains("hello"), "{}", a.message());
    let a = post(config("127.0.0.1:0")).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "a POST body must carry the name"
    );
}

#[tokio::test]
async fn create_get_list_delete_a_service() {
    let t = T::new(Fake::default());
    assert_eq!(t.get("/v1/services").await.json(), json!({"services": []}));
    let a = t.put("/v1/services/hello", &config("127.0.0.1:0")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.headers[header::LOCATION], "/v1/services/hello");
    let body = a.json();
    assert_eq!(body["name"], "hello");
    assert_eq!(body["listen"], "127.0.0.1:0");
    assert_eq!(body["pool_size"], 0);
    assert_eq!(body["max_concurrent"], 4, "defaults are filled: {body}");
    assert_eq!(
        body["stats"],
        json!({"running": 1, "max_running": 3, "idle": 2, "waiting": 0, "connections": 0})
    );
    let address: SocketAddr = body["address"].as_str().unwrap().parse().unwrap();
    assert_ne!(address.port(), 0);

    let a = t.get("/v1/services/hello").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), body);
    let list = t.get("/v1/services").await.json();
    assert_eq!(list["services"].as_array().unwrap().len(), 1);

    let a = t.delete("/v1/services/hello").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.text.is_empty());
    // The port is closed: it can be bound again.
    TcpListener::bind(address).unwrap();
    for a in [
        t.get("/v1/services/hello").await,
        t.delete("/v1/services/hello").await,
    ] {
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(a.code(), "service_not_found");
    }
}

#[tokio::test]
async fn put_checks_content_type_size_and_json() {
    let t = T::new(Fake::default());
    let body = config("127.0.0.1:0").to_string();
    for ct in [None, Some("text/plain")] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let a = t
            .req(Method::PUT, "/v1/services/a", &headers, body.clone(), None)
            .await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(a.code(), "unsupported_media_type");
    }
    let mut big = config("127.0.0.1:0");
    big["cmdline"] = json!("x".repeat(crate::body::MAX_BODY_BYTES));
    let a = t.put("/v1/services/a", &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), "payload_too_large");

    let a = t
        .req(
            Method::PUT,
            "/v1/services/a",
            &[("content-type", "application/json")],
            "{\"listen\": ",
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "invalid_json");
    assert!(a.message().contains("EOF"), "{}", a.message());

    let mut unknown = config("127.0.0.1:0");
    unknown["port"] = json!(3);
    let a = t.put("/v1/services/a", &unknown).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "invalid_body");
    assert!(
        a.message().contains("unknown field `port`"),
        "{}",
        a.message()
    );
    assert!(t.fake.log().is_empty(), "{:?}", t.fake.log());
}

#[tokio::test]
async fn invalid_configs_are_422_naming_the_problem() {
    let t = T::new(Fake::default());
    let mut c = config("127.0.0.1:0");
    c["name"] = json!("other");
    let a = t.put("/v1/services/a", &c).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.code(), "name_mismatch");

    let mut c = config("127.0.0.1:0");
    c["image"] = json!("/nonexistent/image");
    let a = t.put("/v1/services/a", &c).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.code(), "invalid_config");
    assert!(
        a.message().contains("/nonexistent/image"),
        "{}",
        a.message()
    );

    let a = t.put("/v1/services/Bad_Name", &config("127.0.0.1:0")).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.message().contains("Bad_Name"), "{}", a.message());

    let mut c = config("127.0.0.1:0");
    c["max_concurrent"] = json!(0);
    let a = t.put("/v1/services/a", &c).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.message().contains("max_concurrent"), "{}", a.message());
    // More idle shells than VMs the service may run.
    let mut c = config("127.0.0.1:0");
    c["pool_size"] = json!(40);
    c["max_concurrent"] = json!(1);
    let a = t.put("/v1/services/a", &c).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.message().contains("pool_size 40"), "{}", a.message());
    assert!(t.fake.log().is_empty(), "{:?}", t.fake.log());
}

#[tokio::test]
async fn a_taken_port_is_409() {
    let t = T::new(Fake::default());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let a = t.put("/v1/services/a", &config(&addr)).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.code(), "address_in_use");
    assert!(a.message().contains(&addr), "{}", a.message());
}

#[tokio::test]
async fn replace_on_the_same_address_stops_then_starts() {
    let t = T::new(Fake::default());
    let addr = free_addr().to_string();
    assert_eq!(
        t.put("/v1/services/a", &config(&addr)).await.status,
        StatusCode::CREATED
    );
    let mut c = config(&addr);
    c["max_concurrent"] = json!(9);
    let a = t.put("/v1/services/a", &c).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.headers.get(header::LOCATION).is_none());
    assert_eq!(a.json()["max_concurrent"], 9);
    assert_eq!(
        t.fake.log(),
        [
            format!("add a {addr}"),
            "remove a".into(),
            format!("add a {addr}")
        ]
    );
}

#[tokio::test]
async fn replace_on_a_new_address_checks_it_first() {
    let t = T::new(Fake::default());
    let old = free_addr().to_string();
    t.put("/v1/services/a", &config(&old)).await;
    // The new address is taken: the old service is not touched.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let a = t.put("/v1/services/a", &config(&busy)).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.code(), "address_in_use");
    assert_eq!(t.fake.log(), [format!("add a {old}")]);
    assert_eq!(t.fake.config("a").unwrap().listen.to_string(), old);
    // A free one: moved.
    let new = free_addr().to_string();
    let a = t.put("/v1/services/a", &config(&new)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["address"], new);
    assert_eq!(t.fake.config("a").unwrap().listen.to_string(), new);
}

#[tokio::test]
async fn a_replacement_that_fails_to_start_rolls_back() {
    let t = T::new(Fake::default());
    let addr = free_addr().to_string();
    t.put("/v1/services/a", &config(&addr)).await;
    t.fake.fail_next_add.store(true, Ordering::SeqCst);
    let mut c = config("127.0.0.1:0");
    c["max_concurrent"] = json!(7);
    let a = t.put("/v1/services/a", &c).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    let back = t.fake.config("a").unwrap();
    assert_eq!(back.listen.to_string(), addr);
    assert_eq!(back.max_concurrent, 4);
    assert_eq!(
        t.fake.log(),
        [
            format!("add a {addr}"),
            "remove a".into(),
            format!("add a {addr}")
        ]
    );
}

/// Poll until `done` holds; the bound only keeps a broken test from hanging forever.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn a_replacement_finishes_when_its_client_disconnects() {
    let t = T::new(Fake::default());
    let addr = free_addr().to_string();
    t.put("/v1/services/a", &config(&addr)).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *t.fake.drain_gate.lock().unwrap() = Some(gate.clone());
    let mut c = config(&addr);
    c["max_concurrent"] = json!(9);
    // The client goes away while the old service drains: its request future is dropped.
    tokio::select! {
        _ = t.put("/v1/services/a", &c) => panic!("the replacement finished through the gate"),
        _ = until("the old service is removed", || t.fake.log().len() == 2) => {}
    }
    gate.add_permits(1);
    until("the new config runs", || {
        t.fake.config("a").is_some_and(|c| c.max_concurrent == 9)
    })
    .await;
    assert_eq!(
        t.fake.log(),
        [
            format!("add a {addr}"),
            "remove a".into(),
            format!("add a {addr}")
        ]
    );
}

#[tokio::test]
async fn a_slow_change_of_one_service_does_not_hold_up_another() {
    let t = T::new(Fake::default());
    let a = free_addr().to_string();
    t.put("/v1/services/a", &config(&a)).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *t.fake.drain_gate.lock().unwrap() = Some(gate.clone());
    let mut slow = config(&a);
    slow["max_concurrent"] = json!(9);
    let b = free_addr().to_string();
    // While a's replacement waits for its drain, b is created.
    tokio::select! {
        _ = t.put("/v1/services/a", &slow) => panic!("the replacement finished through the gate"),
        created = async {
            until("a's old service is removed", || t.fake.log().len() == 2).await;
            // Bounded only so that a regression fails instead of hanging.
            tokio::time::timeout(std::time::Duration::from_secs(10), t.put("/v1/services/b", &config(&b))).await
        } => assert_eq!(created.expect("b waited for a's change").status, StatusCode::CREATED),
    }
    gate.add_permits(1);
    until("a's new config runs", || {
        t.fake.config("a").is_some_and(|c| c.max_concurrent == 9)
    })
    .await;
}

#[tokio::test]
async fn vms_list_get_kill() {
    let t = T::new(Fake::with_vm("hello-1", "hello"));
    let a = t.get("/v1/vms").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        json!({"vms": [{"id": "hello-1", "service": "hello", "phase": "serving", "age_ms": 12, "pid": 4242}]})
    );
    let a = t.get("/v1/vms/hello-1").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["phase"], "serving");
    assert_eq!(
        t.delete("/v1/vms/hello-1").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.fake.log(), ["kill hello-1"]);
    for a in [
        t.get("/v1/vms/hello-1").await,
        t.delete("/v1/vms/hello-1").await,
    ] {
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(a.code(), "vm_not_found");
    }
}

#[tokio::test]
async fn tcp_requests_need_the_bearer_token() {
    let t = T::new(Fake::default());
    let tok = Some("s3cret");
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Basic s3cret")],
    ] {
        for path in ["/v1/health", "/v1/nope", "/metrics"] {
            let a = t.req(Method::GET, path, &headers, Bytes::new(), tok).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path} {headers:?}");
            assert_eq!(a.code(), "unauthorized");
            assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    let auth = [("authorization", "Bearer s3cret")];
    let a = t
        .req(Method::GET, "/v1/health", &auth, Bytes::new(), tok)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = t
        .req(Method::GET, "/v1/nope", &auth, Bytes::new(), tok)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}
