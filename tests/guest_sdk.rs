//! `dust guest new` / `dust guest build` as a user outside the repository runs them: a new
//! guest in a temporary directory builds against the dust tree and answers HTTP under
//! `dust serve --image`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{dust, http_get, TempDir};

#[test]
fn a_new_guest_builds_outside_the_tree_and_serves_http() {
    let dir = TempDir::new("guest-sdk");
    assert!(!dir.path().starts_with(common::root()));
    let crate_dir = dir.path().join("Web Hello");
    let out = dust()
        .args(["guest", "new"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(crate_dir.join("README.md").is_file());

    // A second `new` into the same directory is refused.
    let again = dust()
        .args(["guest", "new"])
        .arg(&crate_dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(243));

    // From an unrelated working directory, into the crate's own target directory.
    let out = dust()
        .args(["guest", "build"])
        .arg(&crate_dir)
        .current_dir(dir.path())
        .env_remove("CARGO_TARGET_DIR")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "dust guest build failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let image = PathBuf::from(stdout.lines().last().expect("an image path"));
    assert!(image.is_file(), "{image:?}");
    assert!(image.starts_with(&crate_dir), "{image:?}");
    assert_eq!(image.file_name().unwrap(), "web-hello");

    require_kvm!();
    let mut child = dust()
        .args(["serve", "--listen", "127.0.0.1:0", "--name", "web"])
        .arg("--image")
        .arg(&image)
        .arg("--api-socket")
        .arg(dir.path().join("api.sock"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<SocketAddr>();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .strip_prefix("dust: serving web on http://")
                .and_then(|a| a.parse().ok())
            {
                let _ = tx.send(addr);
            }
            eprintln!("[serve] {line}");
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30));
    let reply = addr.map(|a| http_get(a, "/from-a-test?q=1"));
    child.kill().unwrap();
    child.wait().unwrap();
    let reply = reply.expect("dust serve did not start").unwrap();
    assert_eq!(reply.status, 200);
    let body = String::from_utf8_lossy(&reply.body);
    assert!(
        body.starts_with("Hello from web-hello in VM web-"),
        "{body}"
    );
    assert!(body.ends_with(": GET /from-a-test\n"), "{body}");
}

#[test]
fn a_tree_without_the_runtime_is_refused() {
    let dir = TempDir::new("guest-sdk-bad");
    let out = dust()
        .args(["guest", "build", "--sdk"])
        .arg(dir.path())
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(243));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a dust source tree"), "{err}");
}
