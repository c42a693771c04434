//! The daemon's configuration file and start-up checks: serial log files, API keys and
//! token files, `api.listen`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::daemon::{daemon, start};
use common::{dust, guest, http_get, read_reply, TempDir};

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
