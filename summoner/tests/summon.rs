//! The summoner's request path on any machine: workers are a fake (`summoner::fake_worker`)
//! that speaks the worker protocol and answers the vsock `CONNECT` itself, so pool refill,
//! 502, 503, 504, client-gone teardown and permit release are tested without /dev/kvm. The
//! same paths with real guests are in the root crate's `tests/summoner.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use summoner::fake_worker as fake;
use test_support as host;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use host::{child_pids, http_get, HttpReply};
use summoner::registry::VmPhase;
use summoner::{Mode, ServiceConfig, ServiceStats, Summoner};
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

/// Every test checks that the process has no worker children left, so two tests must never
/// overlap: each holds this for its whole run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Idle workers each test service keeps.
const POOL: usize = 2;

struct Env {
    summoner: Summoner,
    dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

async fn env() -> Env {
    let serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let summoner = Summoner::with_worker(
        std::env::current_exe().unwrap(),
        fake::args(),
        dir.path().join("run"),
        fake::no_jail(),
    )
    .unwrap();
    Env {
        summoner,
        dir,
        _serial: serial,
    }
}

/// A service whose fake guests behave as `behaviour` (see `fake::Behaviour`).
fn service(name: &str, behaviour: &str) -> ServiceConfig {
    let image = host::tiny_elf();
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), image);
    s.cmdline = format!("fake={behaviour}");
    s.pool_size = POOL;
    s
}

/// Poll until `done` holds; the bound only keeps a broken test from hanging forever.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

impl Env {
    async fn add(&self, s: ServiceConfig) -> SocketAddr {
        self.summoner.add(s).await.unwrap()
    }

    /// Add `s` and send it one request.
    async fn add_and_get(&self, s: ServiceConfig) -> HttpReply {
        get(self.add(s).await).await
    }

    fn stats(&self, name: &str) -> ServiceStats {
        self.summoner.stats(name).unwrap()
    }

    /// Wait until `name`'s pool holds `idle` shells and none of its VMs runs.
    async fn settle(&self, name: &str, idle: usize) {
        until("the pool settles", || {
            let s = self.stats(name);
            s.running == 0 && s.idle == idle
        })
        .await;
    }

    /// Requests of all services that ended with `outcome`.
    fn count(&self, outcome: &str) -> usize {
        let needle = format!("outcome=\"{outcome}\"");
        self.summoner
            .metrics_text(summoner::metrics::Format::Prometheus)
            .lines()
            .filter(|l| l.starts_with("dust_requests_total") && l.contains(&needle))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum()
    }

    /// Shut down and check that nothing is left: no workers, no sockets.
    async fn finish(self) {
        self.summoner.shutdown(Duration::from_millis(200)).await;
        until("every worker is reaped", || child_pids().is_empty()).await;
        let run = self.dir.path().join("run");
        until("the run dir is empty", || {
            std::fs::read_dir(&run).unwrap().next().is_none()
        })
        .await;
    }
}

async fn get(addr: SocketAddr) -> HttpReply {
    tokio::task::spawn_blocking(move || http_get(addr, "/").unwrap())
        .await
        .unwrap()
}

/// In a child process this is the fake worker; in the test run it checks the fake speaks
/// the protocol the summoner expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_worker() {
    if fake::is_child() {
        fake::serve();
    }
    let env = env().await;
    let r = env.add_and_get(service("proto", "answer")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-dust-vm").unwrap().as_bytes(), &r.body[..]);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_vm_of_its_own() {
    let env = env().await;
    let addr = env.add(service("fresh", "answer")).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = get(addr).await;
        assert_eq!(r.status, 200);
        assert!(ids.insert(r.body), "a VM served two requests");
    }
    assert_eq!(env.count("ok"), 6);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_names_every_phase_and_the_guest_time() {
    let env = env().await;
    let addr = env.add(service("timing", "answer")).await;
    let r = get(addr).await;
    let timing = r.header("server-timing").unwrap();
    for phase in [
        "queue", "spawn", "boot", "connect", "respond", "guest", "total",
    ] {
        assert!(timing.contains(&format!("{phase};dur=")), "{timing}");
    }
    let guest_ms = fake::GUEST_US as f64 / 1000.0;
    assert!(
        timing.contains(&format!("guest;dur={guest_ms:.3}")),
        "{timing}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_refills_after_each_request_and_serves_warm() {
    let env = env().await;
    let addr = env.add(service("refill", "answer")).await;
    for _ in 0..3 {
        env.settle("refill", POOL).await;
        let r = get(addr).await;
        assert_eq!(r.status, 200);
        assert!(r.header("server-timing").unwrap().contains("desc=\"warm\""));
    }
    env.settle("refill", POOL).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pool_each_vm_is_built_cold() {
    let env = env().await;
    let mut s = service("cold", "answer");
    s.pool_size = 0;
    let r = env.add_and_get(s).await;
    assert_eq!(r.status, 200);
    assert!(r.header("server-timing").unwrap().contains("desc=\"cold\""));
    assert_eq!(env.stats("cold").idle, 0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failure_is_500() {
    let env = env().await;
    let mut s = service("nobuild", "build-fails");
    s.pool_size = 0;
    let r = env.add_and_get(s).await;
    assert_eq!(r.status, 500);
    // The worker's reason (a host matter) is in the log, not in the client's answer.
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("cannot start a VM"), "{body}");
    assert!(!body.contains("fake: no such image"), "{body}");
    assert_eq!(env.count("error"), 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_failures_are_502() {
    let env = env().await;
    for (name, behaviour, says) in [
        ("crash", "crashes", "fake triple fault"),
        ("refuse", "refuses", "not listening on vsock port 80"),
        ("die", "dies", "guest"),
    ] {
        let r = env.add_and_get(service(name, behaviour)).await;
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 502, "{name}: {body}");
        assert!(body.contains(says), "{name}: {body}");
    }
    assert_eq!(env.count("crash"), 3);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_is_504_and_kills_the_vm() {
    let env = env().await;
    for (name, behaviour) in [("slowboot", "never-ready"), ("slowanswer", "never-answers")] {
        let mut s = service(name, behaviour);
        s.request_deadline = Duration::from_millis(300);
        let r = env.add_and_get(s).await;
        assert_eq!(r.status, 504, "{name}");
        assert!(r.header("x-dust-vm").is_some(), "{name}");
        env.settle(name, POOL).await;
    }
    assert_eq!(env.count("timeout"), 2);
    env.finish().await;
}

/// A request to a `never-answers` service that is being served: returns the client's
/// connection once the VM is in the registry as serving.
async fn held_request(env: &Env, addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    until("the VM serves", || {
        env.summoner
            .vms()
            .iter()
            .any(|v| v.phase == VmPhase::Serving)
    })
    .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_service_sheds_with_503_and_retry_after() {
    let env = env().await;
    let mut s = service("full", "never-answers");
    s.max_concurrent = 1;
    s.pool_size = 1;
    s.queue_depth = 0;
    let addr = env.add(s).await;
    let held = held_request(&env, addr).await;
    let r = get(addr).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(env.count("shed"), 1);
    drop(held);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_takes_its_vm_with_it() {
    let env = env().await;
    let addr = env.add(service("gone", "never-answers")).await;
    let held = held_request(&env, addr).await;
    assert_eq!(env.stats("gone").running, 1);
    // A reset: a client that only shuts its write side is still answered (front_door.rs),
    // so a plain close is only noticed when the answer is written, or at the deadline.
    host::reset(held);
    until("the VM is reaped", || env.summoner.vms().is_empty()).await;
    assert_eq!(env.stats("gone").running, 0);
    until("client_gone is counted", || env.count("client_gone") == 1).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permit_is_released_when_the_vm_is_reaped() {
    let env = env().await;
    let mut s = service("permit", "answer");
    s.max_concurrent = 1;
    s.pool_size = 1;
    s.queue_depth = 0;
    let addr = env.add(s).await;
    // With one slot and no queue, each request is admitted only if the last VM's permit
    // came back; a leaked permit turns the next request into a 503.
    for i in 0..5 {
        until("the last VM is reaped", || env.summoner.vms().is_empty()).await;
        let r = get(addr).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(env.stats("permit").max_running, 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_serving_vm_is_502_for_its_client() {
    let env = env().await;
    let addr = env.add(service("kill", "never-answers")).await;
    let mut held = held_request(&env, addr).await;
    let id = env.summoner.vms()[0].id.clone();
    assert!(env.summoner.kill_vm(&id));
    let r = tokio::task::spawn_blocking(move || host::read_reply(&mut held).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-dust-vm"), Some(id.as_str()));
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("stopped by the operator"), "{body}");
    assert!(
        !env.summoner.kill_vm(&id),
        "a second kill finds it stopping or gone"
    );
    assert!(!env.summoner.kill_vm("no-such-vm"));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_splices_a_connection_into_its_own_vm() {
    let env = env().await;
    let mut s = service("splice", "echo");
    s.mode = Mode::Tcp;
    let addr = env.add(s).await;
    let echoed = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"ping").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut back).unwrap();
        back
    })
    .await
    .unwrap();
    assert_eq!(echoed, b"ping");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_in_flight_and_idle_vms() {
    let env = env().await;
    let addr = env.add(service("stop", "never-answers")).await;
    let held = held_request(&env, addr).await;
    // finish() gives in-flight requests a grace period, then kills them, and checks that
    // no worker or socket is left.
    env.finish().await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_closes_its_port() {
    let env = env().await;
    let addr = env.add(service("gone-soon", "answer")).await;
    assert!(
        env.summoner
            .remove("gone-soon", Duration::from_secs(1))
            .await
    );
    assert!(
        !env.summoner
            .remove("gone-soon", Duration::from_secs(1))
            .await
    );
    // The listener is closed by the service's accept task as it ends.
    until("the port is closed", || TcpStream::connect(addr).is_err()).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_mode_restores_every_shell_and_deletes_its_template() {
    let env = env().await;
    let mut s = service("snap", "answer");
    s.snapshot = true;
    let r = env.add_and_get(s).await;
    assert_eq!(r.status, 200);
    let timing = r.header("server-timing").unwrap();
    assert!(timing.contains("desc=\"snapshot\""), "{timing}");
    let run = env.dir.path().join("run");
    let snaps = || {
        std::fs::read_dir(&run)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".snap")
            })
            .count()
    };
    assert_eq!(snaps(), 1, "the template's snapshot is in the run dir");
    assert!(env
        .summoner
        .metrics_text(summoner::metrics::Format::Prometheus)
        .contains("dust_service_start_mode{service=\"snap\",start=\"snapshot\"} 1"));
    assert!(env.summoner.remove("snap", Duration::from_secs(1)).await);
    until("the snapshot is deleted", || snaps() == 0).await;
    // A template that never gets ready fails the service, which never exists.
    let mut bad = service("snap-bad", "crashes");
    bad.snapshot = true;
    let err = env.summoner.add(bad).await.unwrap_err().to_string();
    assert!(err.contains("template"), "{err}");
    assert!(env.summoner.stats("snap-bad").is_none());
    env.finish().await;
}

#[tokio::test]
async fn a_name_whose_socket_paths_cannot_fit_is_refused_at_creation() {
    let e = env().await;
    // 30 bytes: a short name fits below it, a 32-byte one does not.
    let deep = e.dir.path().join("run-dir-thirty-characters-long");
    let s = Summoner::with_worker(
        std::env::current_exe().unwrap(),
        fake::args(),
        deep,
        fake::no_jail(),
    )
    .unwrap();
    let long = "a-service-name-of-32-characters-";
    let err = s.add(service(long, "serve")).await.unwrap_err().to_string();
    assert!(err.contains("socket paths") && err.contains(long), "{err}");
    assert!(
        !err.contains(e.dir.path().to_str().unwrap()),
        "a host path: {err}"
    );
    s.add(service("short", "serve")).await.unwrap();
    s.shutdown(Duration::ZERO).await;
}
