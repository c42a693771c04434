//! What an operator watches of a running daemon: the systemd unit, the access log (one line
//! per request, refused ones included), and the metrics (promtool-clean, OpenMetrics on
//! request).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{daemon, metric, Daemon};
use common::{http_get, read_reply, TempDir};

/// The first line of the daemon's log that holds every one of `needles` (waits up to 10 s).
fn log_line(d: &Daemon, needles: &[&str]) -> String {
    let t = Instant::now();
    loop {
        let found = d
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned();
        if let Some(l) = found {
            return l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no log line with {needles:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("systemd-analyze is required (scripts/install-deps installs systemd)");
        }
        eprintln!("*** SKIPPED: systemd-analyze not installed ***");
        return;
    };
    assert!(probe.status.success());
    // Verify the shipped unit, pointing ExecStart at the binary under test (the unit's
    // /usr/local/bin/dust need not exist on a build machine).
    let dir = TempDir::new("unit");
    let unit = std::fs::read_to_string(common::root().join("dist/dust.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/dust", env!("CARGO_BIN_EXE_dust"));
    let path = dir.file("dust.service", unit.as_bytes());
    let o = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let own: Vec<&str> = err.lines().filter(|l| l.contains("dust.service")).collect();
    assert!(
        o.status.success() && own.is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn each_request_gets_one_plain_access_log_line() {
    require_kvm!();
    let (d, addr) = daemon("logged", "http-hello", &[]);
    let r = http_get(addr, "/some/path").unwrap();
    assert_eq!(r.status, 200);
    let vm = r.header("x-dust-vm").unwrap().to_string();
    let t = Instant::now();
    let line = loop {
        let found = d
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(&vm))
            .cloned();
        if let Some(l) = found {
            break l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no access-log line for {vm}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for field in [
        "service=logged",
        "method=GET",
        "path=\"/some/path\"",
        "status=200",
    ] {
        assert!(line.contains(field), "{field} missing from {line:?}");
    }
    let log = d.log.lock().unwrap().join("\n");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
}

#[test]
fn requests_the_front_door_refuses_cost_no_vm_and_are_logged() {
    require_kvm!();
    let (d, addr) = daemon("door", "http-hello", &[]);
    // 40 header fields: more than the guest runtime takes (dust_abi::http::MAX_HEADERS).
    let mut s = TcpStream::connect(addr).unwrap();
    let fields: String = (0..40).map(|i| format!("X-F{i}: v\r\n")).collect();
    write!(s, "GET /big HTTP/1.1\r\nHost: t\r\n{fields}\r\n").unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 431);
    assert!(
        r.header("x-dust-vm").is_none(),
        "a VM served a refused request"
    );
    let line = log_line(&d, &["dust::access", "status=431"]);
    for field in [
        "service=door",
        "vm=\"-\"",
        "path=\"/big\"",
        "outcome=refused",
    ] {
        assert!(line.contains(field), "{field} missing from {line:?}");
    }
    // Not HTTP at all: hyper answers 400 itself, and the log says so.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"NOT HTTP\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply:?}");
    let line = log_line(&d, &["dust::access", "status=400"]);
    assert!(line.contains("outcome=refused"), "{line:?}");
    // Neither request reached a VM: a normal one is still the first to be served.
    let r = http_get(addr, "/").unwrap();
    assert_eq!(r.status, 200);
    let text = d.call("GET", "/metrics", None);
    let text = String::from_utf8_lossy(&text.body);
    let served = "dust_request_duration_seconds_count{service=\"door\"}";
    assert_eq!(metric(&text, served), 1.0, "{text}");
}

/// Whether `promtool` (Debian package `prometheus`, installed by scripts/install-deps) runs.
/// Without it the test says so loudly and passes, except under CI (`CI=true`), where a
/// missing promtool fails the run.
fn promtool_available() -> bool {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        r => {
            let why = match r {
                Ok(o) => format!("promtool --version failed: {}", o.status),
                Err(e) => format!("cannot run promtool: {e}"),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("this test needs promtool and CI=true: {why}");
            }
            eprintln!(
                "\n*** SKIPPED: this test needs promtool ({why}); run scripts/install-deps ***\n"
            );
            false
        }
    }
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text: &[u8]) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text).unwrap();
    let o = child.wait_with_output().unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

#[test]
fn metrics_pass_promtool_and_openmetrics_is_served_on_request() {
    require_kvm!();
    if !promtool_available() {
        return;
    }
    let (d, addr) = daemon("web", "http-hello", &[]);
    for _ in 0..3 {
        assert_eq!(http_get(addr, "/").unwrap().status, 200);
    }
    // The counters are settled after the response is sent: wait until the scrape shows all.
    let t = Instant::now();
    let text = loop {
        let text = String::from_utf8(d.call("GET", "/metrics", None).body).unwrap();
        if metric(
            &text,
            "dust_requests_total{service=\"web\",outcome=\"ok\",code=\"200\"}",
        ) >= 3.0
            || t.elapsed() > Duration::from_secs(10)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    // The default: Prometheus text 0.0.4 that promtool accepts (HELP and TYPE named after
    // the counters' _total samples, no # EOF).
    let r = d.call("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    if let Err(e) = promtool_check(&r.body) {
        panic!(
            "promtool check metrics: {e}\n{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(
        text.contains("# TYPE dust_requests_total counter\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    assert_eq!(
        metric(
            &text,
            "dust_request_duration_seconds_count{service=\"web\"}"
        ),
        3.0,
        "{text}"
    );
    // The end-to-end time is not a phase: summing the phases must not count it.
    assert!(!text.contains("phase=\"total\""), "{text}");
    assert_eq!(
        metric(
            &text,
            &format!(
                "dust_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0,
        "{text}"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds") > 0.0, "{text}");
    assert!(metric(&text, "process_threads") >= 1.0, "{text}");
    assert!(
        metric(&text, "process_max_fds") >= metric(&text, "process_open_fds"),
        "{text}"
    );
    assert!(metric(&text, "process_start_time_seconds") > 1e9, "{text}");

    // OpenMetrics when the scraper asks for it, as Prometheus does by default.
    let r = d.call_with(
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let om = String::from_utf8(r.body).unwrap();
    assert!(om.ends_with("\n# EOF\n"), "{om}");
    assert!(om.contains("# TYPE dust_requests counter\n"), "{om}");
    assert!(om.contains("# TYPE process_cpu_seconds counter\n"), "{om}");
    assert!(om.contains("\nprocess_cpu_seconds_total "), "{om}");
}
