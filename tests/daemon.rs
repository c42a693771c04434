//! `dust serve` as operators run it: the daemon binary, its control API on a Unix socket,
//! real VMs behind it. Each test starts its own daemon with its own socket and run dir.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{dust, guest, http_get, read_reply, HttpReply, TempDir};

struct Daemon {
    child: Child,
    api: PathBuf,
    services: mpsc::Receiver<(String, SocketAddr)>,
    /// Every line the daemon wrote to stderr so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    dir: TempDir,
}

/// Start `dust serve` with one service from flags; returns once it listens.
fn daemon(name: &str, image: &str, extra: &[&str]) -> (Daemon, SocketAddr) {
    let dir = TempDir::new("daemon");
    let api = dir.path().join("api.sock");
    let mut args: Vec<std::ffi::OsString> = ["serve", "--listen", "127.0.0.1:0", "--name", name]
        .map(Into::into)
        .into();
    args.extend(["--image".into(), guest(image).into()]);
    args.extend(["--api-socket".into(), api.clone().into()]);
    args.extend(extra.iter().map(Into::into));
    start(dir, api, &args)
}

/// Start `dust serve ARGS` (its API socket at `api`, per-VM sockets in `dir`/run); returns
/// once its first service listens.
fn start(dir: TempDir, api: PathBuf, args: &[std::ffi::OsString]) -> (Daemon, SocketAddr) {
    let mut child = dust()
        .args(args)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        // API changes are kept in the test's directory, never in the user's.
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        // The token of a TCP API comes from the test's config, not from its environment.
        .env_remove("DUST_API_TOKEN")
        // Info: the access log is checked; a pipe, as under journald: no colour allowed.
        .env("DUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, services) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line.clone());
            // "dust: serving NAME on http://ADDR" or "... on tcp ADDR"
            if let Some(rest) = line.strip_prefix("dust: serving ") {
                let mut parts = rest.split_whitespace();
                let name = parts.next().unwrap_or_default().to_string();
                let addr = parts
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("http://");
                if let Ok(a) = addr.parse() {
                    let _ = tx.send((name, a));
                }
            }
            eprintln!("[daemon] {line}");
        }
    });
    let (_, addr) = services
        .recv_timeout(Duration::from_secs(30))
        .expect("daemon did not start");
    let t = Instant::now();
    // The socket file appears at bind(), a moment before listen(): wait until it accepts.
    while UnixStream::connect(&api).is_err() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    (
        Daemon {
            child,
            api,
            services,
            log,
            dir,
        },
        addr,
    )
}

impl Daemon {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> HttpReply {
        self.call_with(method, path, &[], body)
    }

    /// [`Daemon::call`] with extra request headers.
    fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpReply {
        let mut s = UnixStream::connect(&self.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.unwrap_or("");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: dust\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        read_reply(&mut s).unwrap()
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let r = self.call("GET", path, None);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: a daemon that shuts down removes its workers' jail directories
        // and cgroups (SIGKILL would leave empty cgroups for the next start to sweep).
        // SAFETY: a signal to our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// Parse Prometheus text into (series, value).
fn metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad metrics line {l:?}"));
            (
                series.to_string(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

fn metric(text: &str, series: &str) -> f64 {
    metrics(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| v)
}

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
        metric(&text, "dust_requests_total{service=\"web\",outcome=\"ok\"}"),
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

#[test]
fn cli_verbs_talk_to_the_daemon() {
    require_kvm!();
    let (d, _) = daemon("base", "spin", &[]);
    let verb = |args: &[&str]| {
        let o = dust()
            .args(args)
            .arg("--socket")
            .arg(&d.api)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, _) = verb(&["services", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("SERVICE") && out.contains("base"), "{out}");
    let image = guest("http-hello");
    let (code, out, err) = verb(&[
        "services",
        "add",
        "web",
        "--image",
        image.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = verb(&[
        "services",
        "add",
        "web",
        "--image",
        image.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    let (code, out, _) = verb(&["services", "show", "web", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "web");

    // A spinning VM to list and kill.
    let base: SocketAddr = d.json("/v1/services/base")["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let slow = std::thread::spawn(move || http_get(base, "/").map(|r| r.status));
    let t = Instant::now();
    let id = loop {
        let (_, out, _) = verb(&["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(vm) = v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["service"] == "base")
        {
            break vm["id"].as_str().unwrap().to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no VM appeared in dust ps"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (_, table, _) = verb(&["ps"]);
    assert!(table.contains(&id), "{table}");
    let (code, out, _) = verb(&["kill", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(slow.join().unwrap().unwrap(), 502);
    let (code, _, err) = verb(&["kill", "no-such-vm"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no-such-vm"), "{err}");
    let (code, _, _) = verb(&["services", "rm", "web"]);
    assert_eq!(code, Some(0));
    let (_, out, _) = verb(&["services", "list"]);
    assert!(!out.contains("web"), "{out}");
}

#[test]
fn cli_add_replace_show_and_json_answers() {
    require_kvm!();
    // No VM ever starts: no pools, and no request reaches a service.
    let (d, _) = daemon("base", "spin", &["--pool", "0"]);
    let image = guest("http-hello");
    let images = image.parent().unwrap().to_path_buf();
    // From the images' directory, with relative paths: the daemon's cwd is not this one.
    let verb = |args: &[&str]| {
        let o = dust()
            .args(args)
            .arg("--socket")
            .arg(&d.api)
            .current_dir(&images)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = verb(&[
        "services",
        "add",
        "web",
        "--image",
        "./http-hello",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "0",
        "--mem",
        "48",
        "--memory-limit",
        "200",
        "--max-concurrent",
        "3",
        "--queue-depth",
        "9",
        "--queue-deadline",
        "1s",
        "--request-deadline",
        "2s",
        "--header-timeout",
        "3s",
        "--idle-timeout",
        "1m 30s",
        "--max-connections",
        "7",
        "--serial",
        "stdout",
        "--cmdline",
        "greeting=hi",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let web = d.json("/v1/services/web");
    let address = web["address"].as_str().unwrap().to_string();
    assert!(!address.ends_with(":0"), "{web}");
    assert_eq!(out, format!("added web on {address}\n"));
    assert_eq!(
        web["image"].as_str().unwrap(),
        summoner::state::Digest::of(&std::fs::read(&image).unwrap()).to_string(),
        "the relative image was read here and uploaded"
    );
    for (field, want) in [
        ("memory_mib", serde_json::json!(48)),
        ("memory_limit_mib", serde_json::json!(200)),
        ("max_concurrent", serde_json::json!(3)),
        ("queue_depth", serde_json::json!(9)),
        ("queue_deadline", serde_json::json!("1s")),
        ("request_deadline", serde_json::json!("2s")),
        ("header_timeout", serde_json::json!("3s")),
        ("idle_timeout", serde_json::json!("1m 30s")),
        ("max_connections", serde_json::json!(7)),
        ("serial", serde_json::json!("stdout")),
        ("cmdline", serde_json::json!("greeting=hi")),
        ("pool_size", serde_json::json!(0)),
    ] {
        assert_eq!(web[field], want, "{field}: {web}");
    }

    let (code, out, _) = verb(&["services", "show", "web"]);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        format!("address           {address}"),
        "listen            127.0.0.1:0".to_string(),
        "memory_mib        48".to_string(),
        "memory_limit_mib  200".to_string(),
        "cmdline           \"greeting=hi\"".to_string(),
        "serial            stdout".to_string(),
        "idle_timeout      1m 30s".to_string(),
        "max_connections   7".to_string(),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in\n{out}");
    }

    // replace is the PUT: the new settings run, the others are back to their defaults.
    let (code, out, err) = verb(&[
        "services",
        "replace",
        "web",
        "--image",
        "http-hello",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "0",
        "--mem",
        "64",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let web = d.json("/v1/services/web");
    assert_eq!(
        out,
        format!("replaced web on {}\n", web["address"].as_str().unwrap())
    );
    assert_eq!(
        (web["memory_mib"].as_u64(), web["max_connections"].as_u64()),
        (Some(64), Some(1024))
    );

    // A missing image is named, and the daemon is not asked.
    let (code, out, err) = verb(&[
        "services",
        "add",
        "nope",
        "--image",
        "no-such-image",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.starts_with("dust: --image no-such-image: "), "{err}");
    assert_eq!(d.call("GET", "/v1/services/nope", None).status, 404);

    // --json: errors, kill and rm answer JSON on stdout.
    let json = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = verb(&all);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?} {err}"));
        (code, v)
    };
    let (code, v) = json(&["services", "show", "nope"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("service_not_found")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
    let (code, v) = json(&["kill", "no-such-vm"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("vm_not_found")),
        "{v}"
    );
    let (code, v) = json(&[
        "services",
        "add",
        "x",
        "--image",
        "missing",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("invalid_argument")),
        "{v}"
    );
    let (code, v) = json(&[
        "services",
        "add",
        "web",
        "--image",
        "http-hello",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("already_exists")),
        "{v}"
    );
    let (code, v) = json(&["services", "rm", "web"]);
    assert_eq!((code, v), (Some(0), serde_json::json!({"removed": "web"})));
    let (code, v) = json(&["services", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["services"].as_array().unwrap().len(), 1, "{v}");
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
        if metric(&text, "dust_requests_total{service=\"web\",outcome=\"ok\"}") >= 3.0
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

/// Start `dust serve --config FILE` (FILE holding `toml`) until it exits; its stderr.
fn serve_config_fails(toml: &str) -> String {
    let dir = TempDir::new("config");
    let file = dir.file("dust.toml", toml.as_bytes());
    let o = dust()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .env_remove("DUST_API_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the daemon started: {err}");
    err
}

#[test]
fn serial_files_go_only_into_the_log_dir() {
    require_kvm!();
    let logs = TempDir::new("logs");
    let log_dir = logs.path().join("serial");
    let (d, _) = daemon(
        "hello",
        "http-hello",
        &["--log-dir", log_dir.to_str().unwrap()],
    );
    let image = guest("http-hello");
    let put = |file: &str| {
        let body = serde_json::json!({
            "listen": "127.0.0.1:0",
            "image": image,
            "pool_size": 0,
            "serial": { "file": file },
        });
        d.call("PUT", "/v1/services/logged", Some(&body.to_string()))
    };
    let etc_x_was_there = std::path::Path::new("/etc/x").exists();
    let outside = logs.file("outside", b"keep");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::os::unix::fs::symlink(&outside, log_dir.join("link.log")).unwrap();
    for (bad, problem) in [
        ("/etc/x", "outside the log directory"),
        ("../x", "must not contain"),
        ("", "empty"),
        ("link.log", "symbolic link"),
    ] {
        let r = put(bad);
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 422, "{bad:?}: {text}");
        assert!(
            text.contains("serial file")
                && text.contains(problem)
                && text.contains(log_dir.to_str().unwrap()),
            "{bad:?}: {text}"
        );
    }
    assert_eq!(std::path::Path::new("/etc/x").exists(), etc_x_was_there);
    assert!(!logs.path().join("x").exists());
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
    let r = put("name.log");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let svc = d.json("/v1/services/logged");
    // Shown as given, not as the daemon resolved it.
    assert_eq!(svc["serial"]["file"], "name.log", "{svc}");
    let file = log_dir.join("name.log");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    // A VM of the service runs with its serial file (bound into the jail as root).
    let addr: SocketAddr = svc["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
    // A replacement whose serial file is a symlink is refused before the running service
    // is touched.
    let r = put("link.log");
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(d.json("/v1/services/logged")["address"], svc["address"]);
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
}

#[test]
fn serial_files_outside_the_log_dir_stop_the_daemon_at_start() {
    let dir = TempDir::new("serial-toml");
    let toml = format!(
        "log_dir = \"{}\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nimage = \"{}\"\nserial = {{ file = \"/etc/x\" }}\n",
        dir.path().display(),
        common::root().join("Cargo.toml").display()
    );
    let err = serve_config_fails(&toml);
    assert!(
        err.contains("serial file is outside the log directory")
            && err.contains(dir.path().to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn api_keys_in_the_config_file_serve_tcp_with_the_token_file() {
    require_kvm!();
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("api-toml");
    let token = dir.file("token", b"  s3cret-token\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let api = dir.path().join("from-toml.sock");
    let toml = format!(
        "[api]\nsocket = \"{}\"\ntcp = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
         [[service]]\nname = \"hello\"\nlisten = \"127.0.0.1:0\"\nimage = \"{}\"\npool_size = 0\n",
        api.display(),
        token.display(),
        guest("http-hello").display()
    );
    let file = dir.file("dust.toml", toml.as_bytes());
    let args: Vec<std::ffi::OsString> = vec!["serve".into(), "--config".into(), file.into()];
    let (d, _) = start(dir, api.clone(), &args);
    // The Unix socket is where [api] socket says.
    assert_eq!(d.json("/v1/health")["status"], "ok");
    let t = Instant::now();
    let tcp: SocketAddr = loop {
        let found = d.log.lock().unwrap().iter().find_map(|l| {
            l.strip_prefix("dust: control API on tcp ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        });
        if let Some(a) = found {
            break a;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no TCP API line");
        std::thread::sleep(Duration::from_millis(10));
    };
    let get = |auth: Option<&str>| {
        let mut s = TcpStream::connect(tcp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "GET /v1/health HTTP/1.1\r\nHost: dust\r\nConnection: close\r\n{auth}\r\n"
        )
        .unwrap();
        read_reply(&mut s).unwrap().status
    };
    // The file's content, trimmed.
    assert_eq!(get(Some("s3cret-token")), 200);
    assert_eq!(get(None), 401);
    assert_eq!(get(Some("wrong")), 401);
}

#[test]
fn a_token_file_every_user_can_read_stops_the_daemon() {
    let dir = TempDir::new("token-mode");
    let token = dir.file("token", b"t\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = format!(
        "[api]\ntcp = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nimage = \"/x\"\n",
        token.display()
    );
    let err = serve_config_fails(&toml);
    assert!(
        err.contains("readable by every user") && err.contains(token.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn api_listen_is_an_alias_of_api_tcp() {
    // Documented by mistake for a while: it must parse, not fail as an unknown flag.
    let o = dust()
        .args([
            "serve",
            "--api-listen",
            "127.0.0.1:1",
            "--config",
            "/nonexistent/dust.toml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("/nonexistent/dust.toml"), "{err}");
}
