//! `/healthz` on any machine: services run fake workers (`summoner::fake_worker`), the
//! health listener is real and spoken to over TCP. The daemon-level drain (signals, the drain delay, HAProxy)
//! is in the root crate's `tests/scaleout.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use summoner::fake_worker as fake;
use test_support as host;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use host::{child_pids, read_reply, HttpReply};
use summoner::{ServiceConfig, Summoner};
use tempfile::TempDir;
use tokio::sync::{oneshot, Mutex, MutexGuard};

/// Each test checks that no worker is left, so two tests must never overlap.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// One request on a fresh connection.
async fn call(addr: SocketAddr, method: &str, path: &str) -> HttpReply {
    let method = method.to_string();
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        if method != "HEAD" {
            return read_reply(&mut s).unwrap();
        }
        // A HEAD answer has Content-Length but no body: read to the close, parse the head.
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let text = String::from_utf8(all).unwrap();
        let head = text
            .strip_suffix("\r\n\r\n")
            .expect("a body after a HEAD answer");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        HttpReply {
            status,
            headers,
            body: Vec::new(),
        }
    })
    .await
    .unwrap()
}

fn service(name: &str, behaviour: &str) -> ServiceConfig {
    let image = host::tiny_elf();
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), image);
    s.cmdline = format!("fake={behaviour}");
    s.pool_size = 1;
    s
}

struct Env {
    summoner: Arc<Summoner>,
    health: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

async fn env() -> Env {
    let serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let summoner = Arc::new(
        Summoner::with_worker(
            std::env::current_exe().unwrap(),
            fake::args(),
            dir.path().join("run"),
            fake::no_jail(),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(summoner::health::serve(
        listener,
        summoner.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Env {
        summoner,
        health,
        stop,
        task,
        _dir: dir,
        _serial: serial,
    }
}

impl Env {
    async fn finish(self) {
        self.summoner.shutdown(Duration::from_millis(200)).await;
        let _ = self.stop.send(());
        self.task.await.unwrap();
        for _ in 0..2000 {
            if child_pids().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("workers left behind");
    }
}

/// In a child process this is the fake worker (see `fake::args`); in the test run it checks
/// that a healthy daemon is 200 on every readiness path, for GET and HEAD, and 503 once it
/// drains, while /livez stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_worker() {
    if fake::is_child() {
        fake::serve();
    }
    let env = env().await;
    let r = call(env.health, "GET", "/healthz").await;
    assert_eq!(r.status, 503, "no service yet");
    assert_eq!(r.body, b"no services\n");

    env.summoner.add(service("ok", "answer")).await.unwrap();
    for path in ["/healthz", "/readyz", "/livez"] {
        let r = call(env.health, "GET", path).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok\n"[..]), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    let r = call(env.health, "HEAD", "/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3"));

    let r = call(env.health, "POST", "/healthz").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    assert_eq!(call(env.health, "GET", "/").await.status, 404);

    assert!(env.summoner.drain());
    let r = call(env.health, "GET", "/healthz").await;
    assert_eq!((r.status, &r.body[..]), (503, &b"draining\n"[..]));
    assert_eq!(call(env.health, "HEAD", "/readyz").await.status, 503);
    assert_eq!(call(env.health, "GET", "/livez").await.status, 200);
    // Draining only flips health: the service still answers until the daemon closes it.
    let addr = env.summoner.list()[0].1;
    let r = call(addr, "GET", "/").await;
    assert_eq!(r.status, 200);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_build_vms_is_503_naming_the_service() {
    let env = env().await;
    env.summoner.add(service("ok", "answer")).await.unwrap();
    env.summoner
        .add(service("broken", "build-fails"))
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..500 {
        let r = call(env.health, "GET", "/healthz").await;
        if r.status == 503 {
            last = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = last.expect("health never noticed the failing pool");
    let why = String::from_utf8_lossy(&r.body);
    assert!(why.starts_with("service broken: cannot build VMs"), "{why}");
    // Removing the broken service makes the host healthy again.
    assert!(
        env.summoner
            .remove("broken", Duration::from_millis(100))
            .await
    );
    assert_eq!(call(env.health, "GET", "/healthz").await.status, 200);
    env.finish().await;
}
