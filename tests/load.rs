//! A real HTTP load generator (wrk) against a dust service for 30 s at concurrency 8:
//! zero socket errors and zero non-2xx responses (the queue is deep enough that nothing is
//! shed). The requests/s it reaches is printed; speed is judged by benchmarks, not here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{guest, TempDir};
use summoner::{ServiceConfig, Summoner};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrk_30s_at_concurrency_8_sees_no_errors() {
    require_kvm!();
    let wrk_present = Command::new("wrk").arg("--version").output().is_ok();
    assert!(
        wrk_present,
        "wrk is required (scripts/install-deps installs it)"
    );
    let dir = TempDir::new("load");
    let summoner = Summoner::new(
        PathBuf::from(env!("CARGO_BIN_EXE_dust")),
        dir.path().join("run"),
    )
    .unwrap();
    let mut s = ServiceConfig::new("load", "127.0.0.1:0".parse().unwrap(), guest("http-hello"));
    s.max_concurrent = 4;
    s.queue_depth = 64;
    s.queue_deadline = Duration::from_secs(30);
    let addr = summoner.add(s).await.unwrap();
    let url = format!("http://{addr}/");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .args(["-t2", "-c8", "-d30s", "--timeout", "10s", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Socket errors"),
        "socket errors under load:\n{text}"
    );
    assert!(
        !text.contains("Non-2xx"),
        "non-2xx responses under load:\n{text}"
    );
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("wrk summary line");
    assert!(requests > 0);
    let stats = summoner.stats("load").unwrap();
    assert!(stats.max_running <= 4, "{stats:?}");
    summoner.shutdown(Duration::from_secs(5)).await;
}
