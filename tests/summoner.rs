//! The summoner end to end: real worker processes (the dust binary), real guests on
//! /dev/kvm, a real TCP client. Each test runs its own summoner in this process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{env, fd_count, get, guest, http_get, read_reply, Env};
use summoner::{Mode, ServiceConfig};

/// Idle workers each test service keeps.
const POOL: usize = 2;

fn service(name: &str, image: &str) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), guest(image));
    s.pool_size = POOL;
    s
}

impl Env {
    async fn add(&self, s: ServiceConfig) -> SocketAddr {
        self.summoner.add(s).await.expect("add service")
    }

    /// Wait until the service's pool is full and none of its VMs runs.
    async fn settle(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.summoner.stats(name).expect("service exists");
            if s.running == 0 && s.idle == POOL {
                break;
            }
            assert!(Instant::now() < deadline, "pool never settled: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_five_hundred_vms() {
    require_kvm!();
    let env = env("summoner").await;
    let addr = env.add(service("hello", "http-hello")).await;
    // Count fds only when the pool is full and no VM runs, before and after, so the idle
    // workers' sockets are in both counts.
    env.settle("hello").await;
    let fds = fd_count();
    let mut ids = HashSet::new();
    for i in 0..500 {
        let r = get(addr).await;
        assert_eq!(
            r.status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let id = r.header("x-dust-vm").expect("X-Dust-Vm").to_string();
        let timing = r.header("server-timing").expect("Server-Timing");
        for phase in [
            "queue", "spawn", "boot", "connect", "respond", "guest", "total",
        ] {
            assert!(timing.contains(&format!("{phase};dur=")), "{timing}");
        }
        assert!(
            String::from_utf8_lossy(&r.body).contains(&id),
            "body must name the VM"
        );
        ids.insert(id);
    }
    assert_eq!(ids.len(), 500, "every request must get its own VM");
    env.settle("hello").await;
    // The summoner's own fds must not grow with traffic.
    assert_eq!(fd_count(), fds, "fds changed over 500 requests");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_gets_a_fresh_vm_per_request() {
    require_kvm!();
    let env = env("summoner").await;
    let addr = env.add(service("ka", "http-hello")).await;
    let ids = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let r = read_reply(&mut s).unwrap();
            assert_eq!(r.status, 200);
            ids.push(r.header("x-dust-vm").unwrap().to_string());
        }
        ids
    })
    .await
    .unwrap();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3, "{ids:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_and_queue_drops_nothing() {
    require_kvm!();
    let env = env("summoner").await;
    let mut s = service("busy", "http-hello");
    s.max_concurrent = 4;
    s.queue_depth = 64;
    s.queue_deadline = Duration::from_secs(120);
    s.request_deadline = Duration::from_secs(120);
    let addr = env.add(s).await;
    let clients: Vec<_> = (0..64)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                (0..10)
                    .map(|_| http_get(addr, "/").map(|r| r.status).unwrap_or(0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert_eq!(statuses.len(), 640);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "not all 200: {statuses:?}"
    );
    let stats = env.summoner.stats("busy").unwrap();
    assert!(
        stats.max_running >= 1 && stats.max_running <= 4,
        "{stats:?}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_shed_with_503_and_retry_after() {
    require_kvm!();
    let env = env("summoner").await;
    let mut s = service("spinq", "spin");
    s.max_concurrent = 1;
    s.pool_size = 1;
    s.queue_depth = 0;
    s.request_deadline = Duration::from_secs(3);
    let addr = env.add(s).await;
    let first = tokio::spawn(get(addr));
    // Wait until the first request holds the only slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.summoner.stats("spinq").unwrap().running == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = get(addr).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(first.await.unwrap().status, 504);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guest_gets_504_at_the_deadline() {
    require_kvm!();
    let env = env("summoner").await;
    let mut s = service("spin", "spin");
    s.request_deadline = Duration::from_secs(1);
    let addr = env.add(s).await;
    let t = Instant::now();
    let r = get(addr).await;
    assert_eq!(r.status, 504);
    assert!(t.elapsed() >= Duration::from_secs(1));
    let r = get(addr).await;
    assert_eq!(r.status, 504, "the host keeps serving after a kill");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_guest_gets_502() {
    require_kvm!();
    let env = env("summoner").await;
    let addr = env.add(service("crash", "crash")).await;
    for _ in 0..3 {
        let r = get(addr).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains("crash"));
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_leaves_during_boot_leaves_no_vm() {
    require_kvm!();
    let env = env("summoner").await;
    let mut s = service("gone", "spin");
    s.request_deadline = Duration::from_secs(30);
    let addr = env.add(s).await;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // A reset: a client that only shuts its write side still gets its answer.
        common::reset(s);
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.summoner.stats("gone").unwrap().running > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        env.summoner.stats("gone").unwrap().running,
        0,
        "VM outlived its client"
    );
    assert!(env.summoner.vms().is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_echoes_a_mebibyte_in_a_vm_per_connection() {
    require_kvm!();
    let env = env("summoner").await;
    let mut s = service("echo", "echo");
    s.mode = Mode::Tcp;
    s.guest_port = 5000;
    s.request_deadline = Duration::from_secs(120);
    let addr = env.add(s).await;
    for round in 0..2u8 {
        tokio::task::spawn_blocking(move || {
            let data: Vec<u8> = (0..1 << 20)
                .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8 ^ round)
                .collect();
            let mut s = TcpStream::connect(addr).unwrap();
            let mut reader = s.try_clone().unwrap();
            let expect = data.clone();
            let rx = std::thread::spawn(move || {
                let mut got = vec![0u8; expect.len()];
                reader.read_exact(&mut got).unwrap();
                assert!(got == expect, "echoed bytes differ");
            });
            s.write_all(&data).unwrap();
            rx.join().unwrap();
        })
        .await
        .unwrap();
    }
    let want = "dust_requests_total{service=\"echo\",outcome=\"ok\",code=\"none\"} 2";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env
        .summoner
        .metrics_text(summoner::metrics::Format::Prometheus)
        .contains(want)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = env
        .summoner
        .metrics_text(summoner::metrics::Format::Prometheus);
    assert!(text.contains(want), "{text}");
    // Each connection's time to its spliced VM is the end-to-end histogram, not a phase.
    assert!(
        text.contains("dust_request_duration_seconds_count{service=\"echo\"} 2\n"),
        "{text}"
    );
    assert!(!text.contains("phase=\"total\""), "{text}");
    env.finish().await;
}

/// One `curl --http2-prior-knowledge` GET: the VM named in `X-Dust-Vm`, after checking the
/// answer is an HTTP/2 200 whose body names that VM.
async fn curl_h2c(addr: SocketAddr, path: &str) -> String {
    let url = format!("http://{addr}{path}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-i", "--http2-prior-knowledge", "--max-time", "60"])
            .arg(url)
            .output()
            .expect("curl is required (scripts/install-deps installs it)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {text}\n{log}");
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-dust-vm: "))
        .expect("X-Dust-Vm")
        .trim()
        .to_string();
    let (_, body) = text.split_once("\r\n\r\n").expect("a body");
    assert!(body.contains(&id), "the body names its VM: {text}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_h2c_gets_an_answer_from_a_fresh_vm() {
    require_kvm!();
    let env = env("summoner").await;
    let addr = env.add(service("h2c", "http-hello")).await;
    // One URL per curl: curl 7.88 (Debian 12) fails to reuse a prior-knowledge connection
    // for a second URL ("Error in the HTTP2 framing layer", fixed in curl 8.0). Streams
    // sharing a connection are tested with hyper's client in summoner/tests/front_door.rs.
    let a = curl_h2c(addr, "/a").await;
    let b = curl_h2c(addr, "/b?x=1").await;
    assert_ne!(a, b, "every request gets its own VM");
    env.finish().await;
}
