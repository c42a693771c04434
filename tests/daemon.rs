//! `dust serve` as operators run it: the daemon binary, its control API on a Unix socket,
//! real VMs behind it. Each test starts its own daemon with its own socket and run dir.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::daemon::{daemon, metric};
use common::{guest, http_get, HttpReply};

#[test]
fn add_serve_observe_and_delete_a_service_over_the_api() {
    require_kvm!();
    let (d, _) = daemon("base", "spin", &[]);
    assert_eq!(d.json("/v1/health")["status"], "ok");
    let image = guest("http-hello");
    let body = format!(
        r#"{{"listen":"127.0.0.1:0","image":"{}","max_concurrent":2}}"#,
        image.display()
    );
    let r = d.call("PUT", "/v1/services/web", Some(&body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let web = d.json("/v1/services/web");
    let addr: SocketAddr = web["address"].as_str().unwrap().parse().unwrap();
    let names: Vec<String> = d.json("/v1/services")["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"web".to_string()) && names.contains(&"base".to_string()),
        "{names:?}"
    );

    for _ in 0..7 {
        assert_eq!(http_get(addr, "/").unwrap().status, 200);
    }
    // A VM of the spin service stays up long enough to be seen in /v1/vms.
    let base = d.json("/v1/services/base")["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let slow = std::thread::spawn(move || http_get(base, "/").map(|r| r.status));
    let t = Instant::now();
    // (VMs of "web" may still be listed for a moment while they are reaped.)
    let vms = loop {
        let vms: Vec<serde_json::Value> = d.json("/v1/vms")["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["service"] == "base")
            .cloned()
            .collect();
        if !vms.is_empty() || t.elapsed() > Duration::from_secs(10) {
            break vms;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(vms[0]["service"], "base");
    let id = vms[0]["id"].as_str().unwrap().to_string();
    assert_eq!(d.json(&format!("/v1/vms/{id}"))["service"], "base");

    let text = String::from_utf8(d.call("GET", "/metrics", None).body).unwrap();
    assert_eq!(
        metric(
            &text,
            "dust_requests_total{service=\"web\",outcome=\"ok\",code=\"200\"}"
        ),
        7.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "dust_phase_seconds_count{service=\"web\",phase=\"boot\"}"
        ),
        7.0,
        "{text}"
    );
    assert!(
        metric(&text, "dust_running_vms{service=\"base\"}") >= 1.0,
        "{text}"
    );

    // Kill the spin VM from the API: its client gets 502 at once, not 504 at the deadline.
    assert_eq!(d.call("DELETE", &format!("/v1/vms/{id}"), None).status, 204);
    assert_eq!(slow.join().unwrap().unwrap(), 502);
    let t = Instant::now();
    while d.call("GET", &format!("/v1/vms/{id}"), None).status != 404 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "killed VM still listed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    assert_eq!(d.call("DELETE", "/v1/services/web", None).status, 204);
    assert!(
        TcpStream::connect(addr).is_err(),
        "the deleted service's port must be closed"
    );
    assert_eq!(d.call("GET", "/v1/services/web", None).status, 404);
}

#[test]
fn bad_requests_get_documented_statuses_and_harm_nothing() {
    require_kvm!();
    let (d, addr) = daemon("hello", "http-hello", &[]);
    let error_code = |r: &HttpReply| -> String {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        v["error"]["code"].as_str().unwrap().to_string()
    };
    let image = guest("http-hello");
    let r = d.call("PUT", "/v1/services/x", Some("{not json"));
    assert_eq!(r.status, 400);
    let r = d.call(
        "PUT",
        "/v1/services/x",
        Some(r#"{"listen":"127.0.0.1:0","image":"/x","bogus":1}"#),
    );
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("bogus"));
    let r = d.call(
        "PUT",
        "/v1/services/x",
        Some(r#"{"listen":"127.0.0.1:0","image":"/nonexistent/img"}"#),
    );
    assert_eq!(r.status, 422);
    assert!(
        String::from_utf8_lossy(&r.body).contains("/nonexistent/img"),
        "{}",
        error_code(&r)
    );
    let taken = format!(r#"{{"listen":"{addr}","image":"{}"}}"#, image.display());
    let r = d.call("PUT", "/v1/services/other", Some(&taken));
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let dup = format!(
        r#"{{"name":"hello","listen":"127.0.0.1:0","image":"{}"}}"#,
        image.display()
    );
    let r = d.call("POST", "/v1/services", Some(&dup));
    assert_eq!(
        r.status,
        409,
        "a duplicate name: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(error_code(&r), "already_exists");
    let r = d.call("GET", "/v1/nowhere", None);
    assert_eq!(r.status, 404);
    let r = d.call("POST", "/v1/health", None);
    assert_eq!(r.status, 405);
    // The daemon and its service are unaffected.
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
    assert_eq!(
        d.json("/v1/services")["services"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() {
    require_kvm!();
    let (mut d, addr) = daemon(
        "echo",
        "echo",
        &["--mode", "tcp", "--guest-port", "5000", "--grace", "20s"],
    );
    // A connection in flight: its VM is up and echoing.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"before ").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    let api = d.api.clone();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    // New connections are refused once the daemon is stopping.
    let t = Instant::now();
    while TcpStream::connect(addr).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The one in flight still completes.
    s.write_all(b"after").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after");
    drop(s);
    let status = d.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!api.exists(), "API socket left behind");
    let _ = &d.services;
}
