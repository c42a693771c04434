//! An in-process summoner for the tests that drive real workers (the dust binary) on
//! /dev/kvm, with the end-of-test check that nothing is left behind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use summoner::Summoner;

use super::{child_pids, http_get, HttpReply, TempDir};

/// Every test checks that the whole process has no worker children and no stray files
/// left, so two tests of one binary must never overlap: each holds this for its whole run.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Env {
    pub summoner: Summoner,
    pub dir: TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// A summoner of the dust binary with its run dir in a fresh scratch dir named after `tag`.
pub async fn env(tag: &str) -> Env {
    let serial = ONE_AT_A_TIME.lock().await;
    let dir = TempDir::new(tag);
    let summoner = Summoner::new(super::dust_bin(), dir.path().join("run")).expect("summoner");
    Env {
        summoner,
        dir,
        _serial: serial,
    }
}

impl Env {
    /// Shut down and check that nothing is left: no workers, no files in the run dir.
    pub async fn finish(self) {
        self.summoner.shutdown(Duration::from_secs(5)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !child_pids().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            child_pids(),
            Vec::<u32>::new(),
            "worker processes left behind"
        );
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("run"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "files left in the run dir: {left:?}");
    }
}

/// `GET /` on `addr` from a blocking thread.
pub async fn get(addr: SocketAddr) -> HttpReply {
    tokio::task::spawn_blocking(move || http_get(addr, "/").expect("http"))
        .await
        .unwrap()
}
