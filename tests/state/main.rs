//! The daemon's state directory on real /dev/kvm: services created through the control API
//! (one from an uploaded wasm module, one from an image path) answer again after SIGTERM
//! and after kill -9; a corrupt state file stops the start with a message naming it; a
//! corrupt artifact fails only its service.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

#[path = "../common/mod.rs"]
mod common;
mod crash;
mod daemon;
mod remote;

use std::path::PathBuf;

use common::{guest, http_get, root, TempDir};
use daemon::{start, Daemon};

fn handler() -> Vec<u8> {
    let p = root().join("examples/wasm/target/hello-rust.wasm");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-examples", p.display()))
}

/// Both API services answer a request.
fn both_answer(d: &Daemon) {
    for name in ["img", "w"] {
        let addr = d
            .address(name)
            .unwrap_or_else(|| panic!("{name} not restored: {}", d.log.lock().unwrap().join("\n")));
        let r = http_get(addr, "/").unwrap();
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// A daemon over `dir` with `w` (uploaded wasm) and `img` (image path) added by the API.
fn with_two_services(dir: &TempDir) -> (Daemon, String) {
    let d = start(dir.path(), &[]).unwrap();
    let (status, digest) = d.upload(&handler());
    assert_eq!(status, 201);
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        d.upload(&handler()),
        (200, digest.clone()),
        "a second upload"
    );
    let w = format!(r#"{{"listen":"127.0.0.1:0","wasm":"{digest}"}}"#);
    let (status, v) = d.json("PUT", "/v1/services/w", &w);
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["wasm"],
        digest.as_str(),
        "clients see the reference, not a path"
    );
    let img = format!(
        r#"{{"listen":"127.0.0.1:0","image":"{}"}}"#,
        guest("http-hello").display()
    );
    let (status, v) = d.json("PUT", "/v1/services/img", &img);
    assert_eq!(status, 201, "{v}");
    both_answer(&d);
    (d, digest)
}

fn state_file(dir: &TempDir) -> PathBuf {
    dir.path().join("state/services.json")
}

#[test]
fn api_services_survive_sigterm_and_kill_9() {
    require_kvm!();
    let dir = TempDir::new("state-survive");
    let (d, _) = with_two_services(&dir);
    assert!(d.stop().success());
    let d = start(dir.path(), &[]).unwrap();
    assert_eq!(d.names(), ["base", "img", "w"]);
    both_answer(&d);
    d.kill9();
    let d = start(dir.path(), &[]).unwrap();
    assert_eq!(d.names(), ["base", "img", "w"]);
    both_answer(&d);
    // A removal is durable too, and the service leaves /metrics.
    let metrics = |d: &Daemon| {
        String::from_utf8_lossy(&d.call("GET", "/metrics", "text/plain", b"").body).into_owned()
    };
    assert!(metrics(&d).contains("service=\"img\""));
    assert_eq!(d.json("DELETE", "/v1/services/img", "").0, 204);
    let text = metrics(&d);
    assert!(
        !text.contains("service=\"img\"") && text.contains("service=\"w\""),
        "{text}"
    );
    d.kill9();
    let d = start(dir.path(), &[]).unwrap();
    assert_eq!(d.names(), ["base", "w"]);
    drop(d);
}

#[test]
fn a_corrupt_state_file_stops_the_start_and_a_corrupt_artifact_only_its_service() {
    require_kvm!();
    let dir = TempDir::new("state-corrupt");
    let (d, digest) = with_two_services(&dir);
    assert!(d.stop().success());

    let file = state_file(&dir);
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let e = start(dir.path(), &[])
        .err()
        .expect("a half state file must stop the start");
    assert!(
        e.contains(&file.display().to_string()) && e.contains("move it away"),
        "{e}"
    );
    std::fs::write(&file, &good).unwrap();

    let hex = digest.trim_start_matches("sha256:");
    let artifact = dir.path().join(format!("state/artifacts/sha256-{hex}"));
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let d = start(dir.path(), &[]).unwrap();
    assert_eq!(d.names(), ["base", "img"], "w's artifact is corrupt");
    let log = d.log.lock().unwrap().join("\n");
    assert!(
        log.contains("service w (state file): not started") && log.contains("corrupt"),
        "{log}"
    );
    // Uploading it again repairs it, and a PUT brings the service back.
    assert_eq!(d.upload(&handler()), (201, digest.clone()));
    let w = format!(r#"{{"listen":"127.0.0.1:0","wasm":"{digest}"}}"#);
    assert_eq!(d.json("PUT", "/v1/services/w", &w).0, 201);
    both_answer(&d);
}

#[test]
fn a_name_in_the_config_file_and_the_state_file_stops_the_start() {
    require_kvm!();
    let dir = TempDir::new("state-both");
    let d = start(dir.path(), &[]).unwrap();
    let body = format!(
        r#"{{"listen":"127.0.0.1:0","image":"{}"}}"#,
        guest("http-hello").display()
    );
    assert_eq!(d.json("PUT", "/v1/services/dup", &body).0, 201);
    assert!(d.stop().success());
    let toml = dir.path().join("dust.toml");
    std::fs::write(
        &toml,
        format!(
            "[[service]]\nname = \"dup\"\nlisten = \"127.0.0.1:0\"\nimage = \"{}\"\n",
            guest("http-hello").display()
        ),
    )
    .unwrap();
    let e = dust_config_start(&dir, &toml);
    assert!(
        e.contains(&toml.display().to_string())
            && e.contains(&state_file(&dir).display().to_string()),
        "{e}"
    );
}

/// `dust serve --config toml` over `dir`'s state: must fail; its stderr.
fn dust_config_start(dir: &TempDir, toml: &std::path::Path) -> String {
    let out = common::dust()
        .args(["serve", "--config"])
        .arg(toml)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--api-socket")
        .arg(dir.path().join("api.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}
