//! Snapshot templates on real /dev/kvm: `dust run --snapshot-out` / `--restore`, refusal of
//! damaged snapshots, and snapshot-mode services where every request's VM is restored.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{dust_run, fd_count, guest, http_get, worker_pids, TempDir};
use summoner::{ServiceConfig, Summoner};

const VMM_ERROR: i32 = 243;

fn snapshot_of(image: &str, dir: &Path) {
    let out = dust_run(&[
        guest(image).to_str().unwrap(),
        "--snapshot-out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "--snapshot-out failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn hello_restores_twenty_times_and_the_snapshot_never_changes() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.blocking_lock();
    let tmp = TempDir::new("snap-hello");
    let dir = tmp.path().join("hello.snap");
    snapshot_of("hello", &dir);
    let before = files(&dir);
    assert_eq!(
        before.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["memory", "snapshot"]
    );
    for i in 0..20 {
        let out = dust_run(&["--restore", dir.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "restore {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(files(&dir) == before, "the snapshot files changed");
}

/// `dust run --restore` on `dir` fails with the VMM-error status and a message containing
/// `expect`.
fn refused(dir: &Path, expect: &str) {
    let out = dust_run(&["--restore", dir.to_str().unwrap(), "--timeout", "10s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VMM_ERROR), "stderr: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn damaged_snapshots_are_refused_with_the_reason() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.blocking_lock();
    let tmp = TempDir::new("snap-bad");
    let good = tmp.path().join("good");
    snapshot_of("hello", &good);
    let state = std::fs::read(good.join("snapshot")).unwrap();
    let memory_len = std::fs::metadata(good.join("memory")).unwrap().len();
    let variant = |name: &str, state: &[u8], memory_len: u64| -> PathBuf {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("snapshot"), state).unwrap();
        let m = std::fs::File::create(d.join("memory")).unwrap();
        m.set_len(memory_len).unwrap();
        d
    };
    refused(&tmp.path().join("missing"), "no snapshot at");
    refused(
        &variant("truncated", &state[..state.len() - 100], memory_len),
        "truncated",
    );
    let mut corrupt = state.clone();
    let last = corrupt.len() - 10;
    corrupt[last] ^= 0x55;
    refused(&variant("corrupt", &corrupt, memory_len), "corrupted");
    // In place, byte for byte: the header length before it is binary.
    let key = br#""format_version":1"#;
    let at = state
        .windows(key.len())
        .position(|w| w == key)
        .expect("format_version in the header");
    let mut old = state.clone();
    old[at + key.len() - 1] = b'9';
    refused(&variant("version", &old, memory_len), "format version 9");
    refused(
        &variant("memsize", &state, memory_len / 2),
        "memory file is",
    );
    refused(&variant("notsnap", b"hello world", memory_len), "bad magic");
}

async fn summoner(tmp: &TempDir) -> Summoner {
    Summoner::new(
        PathBuf::from(env!("CARGO_BIN_EXE_dust")),
        tmp.path().join("run"),
    )
    .unwrap()
}

fn counter_service(name: &str) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), guest("counter"));
    s.snapshot = true;
    s.pool_size = 2;
    s
}

fn run_dir_files(tmp: &TempDir) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(tmp.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("cpuid-"))
        .collect();
    v.sort();
    v
}

async fn wait_no_children() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !worker_pids().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(worker_pids(), Vec::<u32>::new(), "worker processes left");
}

/// Serialises the tests below: they count this process's children and fds.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_fresh_restored_vm() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("snap-counter");
    let s = summoner(&tmp).await;
    let addr = s.add(counter_service("counter")).await.unwrap();
    let (mut ids, mut randoms) = (HashSet::new(), HashSet::new());
    for i in 0..100 {
        let r = tokio::task::spawn_blocking(move || http_get(addr, "/").unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {i}");
        let body = String::from_utf8(r.body.clone()).unwrap();
        let fields: Vec<&str> = body.split_whitespace().collect();
        assert_eq!(fields[0], "counter=1", "request {i}: {body}");
        let vm = fields[1].strip_prefix("vm=").unwrap();
        assert_eq!(Some(vm), r.header("x-dust-vm"), "request {i}");
        assert!(r
            .header("server-timing")
            .unwrap()
            .contains("desc=\"snapshot\""));
        ids.insert(vm.to_string());
        randoms.insert(fields[2].to_string());
    }
    assert_eq!(ids.len(), 100, "VM ids repeat");
    assert_eq!(randoms.len(), 100, "random bytes repeat");
    s.shutdown(Duration::from_secs(5)).await;
    wait_no_children().await;
    assert_eq!(run_dir_files(&tmp), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_snapshot_requests_and_a_hundred_replacements_leak_nothing() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("snap-leak");
    let s = summoner(&tmp).await;
    let addr = s.add(counter_service("leak")).await.unwrap();
    let settle = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = s.stats("leak").unwrap();
            if st.running == 0 && st.idle == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "pool never settled: {st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    settle().await;
    // Idle shells' sockets (or, jailed, their per-VM roots) change names as shells are
    // used: count them, and name the snapshots. Roots made ahead for the next shells
    // (jailed) come and go, at most two of one service's shape.
    let shape = || {
        let (ahead, f): (Vec<String>, Vec<String>) = run_dir_files(&tmp)
            .into_iter()
            .partition(|n| n.starts_with("ahead-"));
        assert!(ahead.len() <= 2, "made ahead: {ahead:?}");
        let (snaps, shells): (Vec<String>, Vec<String>) =
            f.into_iter().partition(|n| n.ends_with(".snap"));
        (shells.len(), snaps)
    };
    let (fds, files) = (fd_count(), shape());
    for i in 0..500 {
        let r = tokio::task::spawn_blocking(move || http_get(addr, "/").unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    settle().await;
    assert_eq!(fd_count(), fds, "fds leaked");
    assert_eq!(shape(), files, "run dir changed");
    assert!(s.remove("leak", Duration::from_secs(5)).await);
    for i in 0..100 {
        let mut c = counter_service("swap");
        c.pool_size = 0;
        s.add(c).await.unwrap_or_else(|e| panic!("add {i}: {e}"));
        assert!(s.remove("swap", Duration::from_secs(5)).await);
    }
    wait_no_children().await;
    let left: Vec<_> = run_dir_files(&tmp)
        .into_iter()
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "snapshots left behind");
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_never_gets_ready_fails_the_service_and_leaves_nothing() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("snap-crash");
    let s = summoner(&tmp).await;
    let mut c = counter_service("crash");
    c.workload = summoner::config::Workload::Image(guest("crash"));
    let err = s.add(c).await.unwrap_err().to_string();
    assert!(err.contains("template"), "{err}");
    assert!(s.list().is_empty());
    wait_no_children().await;
    // A jailed template's per-VM root is removed once its worker is reaped, in the
    // background.
    let t = Instant::now();
    while !run_dir_files(&tmp).is_empty() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(run_dir_files(&tmp), Vec::<String>::new());
    // The daemon's own cgroup directory goes with its shutdown.
    s.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_restored_vm_that_writes_all_its_memory_copies_it_privately() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.blocking_lock();
    let tmp = TempDir::new("snap-touch");
    let dir = tmp.path().join("touch.snap");
    let out = dust_run(&[
        guest("memtouch").to_str().unwrap(),
        "--mem",
        "64",
        "--snapshot-out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = files(&dir);
    let out = dust_run(&["--restore", dir.to_str().unwrap(), "--timeout", "60s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The largest child this test process has waited for: the restoring `dust run`.
    // SAFETY: getrusage fills the zeroed struct it is given.
    let maxrss_kib = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    };
    let mib = maxrss_kib / 1024;
    assert!(
        mib >= 55,
        "the guest did not touch its memory ({mib} MiB peak)"
    );
    assert!(mib <= 64 + 40, "peak RSS {mib} MiB for a 64 MiB guest");
    assert!(files(&dir) == before, "the snapshot files changed");
}
