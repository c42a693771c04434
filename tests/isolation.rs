//! Worker isolation end to end (docs/security.md): real workers, real guests on /dev/kvm.
//! Each test runs its own summoner in this process, one test at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{child_pids, guest, http_get, TempDir};
use summoner::{ServiceConfig, Summoner};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    summoner: Summoner,
    dir: TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn env() -> Env {
    let serial = ONE_AT_A_TIME.lock().await;
    let dir = TempDir::new("isolation");
    let summoner = Summoner::new(
        PathBuf::from(env!("CARGO_BIN_EXE_dust")),
        dir.path().join("run"),
    )
    .expect("summoner");
    Env {
        summoner,
        dir,
        _serial: serial,
    }
}

fn service(name: &str, image: &str) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), guest(image));
    s.pool_size = 1;
    s
}

async fn get(addr: SocketAddr) -> common::HttpReply {
    tokio::task::spawn_blocking(move || http_get(addr, "/").expect("http"))
        .await
        .unwrap()
}

impl Env {
    /// Shut down and check that nothing is left: no workers, no files in the run dir.
    async fn finish(self) {
        self.summoner.shutdown(Duration::from_secs(5)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !child_pids().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(child_pids(), Vec::<u32>::new(), "workers left behind");
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("run"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "files left in the run dir: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_syscall_kills_the_worker_with_sigsys_and_the_client_gets_502() {
    require_kvm!();
    let env = env().await;
    let mut bad = service("bad", "http-hello");
    // Test-only hook (cargo feature `test-hooks`, on for the integration tests only).
    bad.cmdline = vmm::seccomp::test_hooks::ARM.into();
    let bad_addr = env.summoner.add(bad).unwrap();
    let good_addr = env.summoner.add(service("good", "http-hello")).unwrap();
    for _ in 0..3 {
        let r = get(bad_addr).await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 502, "{body}");
        assert!(
            body.contains("seccomp: forbidden syscall socket (41) on the main thread"),
            "{body}"
        );
        // The daemon keeps serving, the other service untouched.
        let ok = get(good_addr).await;
        assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    }
    env.finish().await;
}
