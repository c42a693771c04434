//! A failing wasm handler can be diagnosed with default settings (no serial file): the
//! daemon's log says why (the trap) and carries the handler's stderr, with the service and
//! VM id; the access log and `dust_requests_total` carry the status, and the outcome is not
//! `ok`. Real `dust serve` on /dev/kvm with the hello-rust example (scripts/build-examples).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::time::{Duration, Instant};

use common::daemon::{metric, start, Daemon};
use common::{example, http_get, TempDir};

/// The first line of the daemon's log that holds every one of `needles` (waits up to 10 s).
fn log_line(d: &Daemon, needles: &[&str]) -> String {
    let t = Instant::now();
    loop {
        let log = d.log.lock().unwrap();
        if let Some(l) = log.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.clone();
        }
        drop(log);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no log line with {needles:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_trapping_handler_says_why_in_the_daemon_log_without_a_serial_file() {
    require_kvm!();
    // The interpreter needs no compiler toolchain, and its template step shows.
    trap_is_diagnosed("interpreter");
}

#[test]
fn a_trapping_compiled_handler_says_why_too() {
    require_kvm!();
    trap_is_diagnosed("aot");
}

/// Serve hello-rust on `engine` with no serial file; `/trap` must be diagnosable.
fn trap_is_diagnosed(engine: &str) {
    let dir = TempDir::new("wasm-diagnose");
    let api = dir.path().join("api.sock");
    let wasm = example("hello-rust");
    let args: Vec<std::ffi::OsString> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--name".into(),
        "diag".into(),
        "--wasm".into(),
        wasm.into(),
        "--engine".into(),
        engine.into(),
        "--request-deadline".into(),
        "60s".into(),
        "--api-socket".into(),
        api.clone().into(),
    ];
    let (d, addr) = start(dir, api, &args);
    // Creating it said what it did, with durations (plain lines: stderr is a pipe).
    let started = log_line(&d, &["dust: diag: booting the template VM"]);
    assert!(started.ends_with("..."), "{started}");
    let took = log_line(&d, &["dust: diag: template "]);
    assert!(took.contains(" s (") && took.contains("snapshot"), "{took}");
    if engine == "aot" {
        let compiled = log_line(&d, &["dust: diag: compile "]);
        assert!(
            compiled.contains("KB of C") || compiled.contains("cached image"),
            "{compiled}"
        );
    }

    let r = http_get(addr, "/trap").unwrap();
    assert_eq!(r.status, 502);
    let vm = r.header("x-dust-vm").unwrap().to_string();
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !body.contains("trap requested"),
        "stderr reached the client: {body}"
    );
    // The runtime's reason and the handler's own stderr (its panic message), in one line
    // with the service and the VM.
    let vm_field = format!("vm=\"{vm}\"");
    let line = log_line(&d, &["dust::guest", "service=\"diag\"", &vm_field]);
    assert!(line.contains("handler trapped"), "{line}");
    assert!(line.contains("trap requested"), "{line}");
    assert!(line.contains("status=502"), "{line}");

    // The access log and the metric say it failed, with its status.
    let access = log_line(&d, &["dust::access", &vm_field]);
    assert!(access.contains("status=502"), "{access}");
    assert!(access.contains("outcome=crash"), "{access}");
    let text = String::from_utf8_lossy(&d.call("GET", "/metrics", None).body).into_owned();
    let crash = "dust_requests_total{service=\"diag\",outcome=\"crash\",code=\"502\"}";
    assert_eq!(metric(&text, crash), 1.0, "{text}");

    // A request that succeeds logs no guest output.
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
    let ok = "dust_requests_total{service=\"diag\",outcome=\"ok\",code=\"200\"}";
    let text = String::from_utf8_lossy(&d.call("GET", "/metrics", None).body).into_owned();
    assert_eq!(metric(&text, ok), 1.0, "{text}");
    let guest_lines = d
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("dust::guest"))
        .count();
    assert_eq!(guest_lines, 1);
}
