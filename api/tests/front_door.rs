//! The front door under a connection flood, in one daemon (summoner + control API, the
//! summoner's fake workers, no /dev/kvm): 1,000 idle connections and a slowloris client
//! are held against a service while other clients and the control API are answered; then
//! the service's timeouts close them all and the fd count returns to where it started.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use summoner::fake_worker as fake;
use test_support as host;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::ApiServer;
use host::{child_pids, fd_count, http_get, read_reply};
use summoner::{ServiceConfig, Summoner};

const IDLE: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_worker() {
    if fake::is_child() {
        fake::serve();
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn api_health(socket: &Path) -> u16 {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    read_reply(&mut s).unwrap().status
}

/// Sends a header line every 100 ms and never ends the head; returns once the server has
/// closed the connection.
fn slowloris(addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n");
        let mut b = [0u8; 64];
        loop {
            match c.read(&mut b) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                _ => return, // EOF, reset, or an answer: the server is done with it
            }
            if c.write_all(b"X-Slow: 1\r\n").is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_cannot_starve_anyone() {
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
    let socket = dir.path().join("api.sock");
    let api = ApiServer::bind(&socket, None).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api.serve(summoner.clone(), async move {
        let _ = stopped.await;
    }));
    let image = host::tiny_elf();
    let mut s = ServiceConfig::new("flood", "127.0.0.1:0".parse().unwrap(), image);
    s.cmdline = "fake=answer".into();
    s.pool_size = 1;
    s.max_connections = IDLE + 100;
    // Long enough to hold the flood while the others are answered, short for the test.
    s.header_timeout = Duration::from_secs(6);
    s.idle_timeout = Duration::from_secs(6);
    let addr = summoner.add(s).await.unwrap();
    let settled = || {
        let st = summoner.stats("flood").unwrap();
        st.idle == 1 && st.running == 0 && st.connections == 0 && summoner.vms().is_empty()
    };
    until("the pool is ready", settled).await;
    let fds_at_start = fd_count();

    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let slow = slowloris(addr);
    until("the flood is accepted", || {
        eprintln!("conns {}", summoner.stats("flood").unwrap().connections);
        summoner.stats("flood").unwrap().connections == IDLE + 1
    })
    .await;
    let sock = socket.clone();
    let (answers, health) = tokio::task::spawn_blocking(move || {
        let answers: Vec<u16> = (0..3)
            .map(|_| http_get(addr, "/").unwrap().status)
            .collect();
        (answers, api_health(&sock))
    })
    .await
    .unwrap();
    assert_eq!(answers, [200, 200, 200]);
    assert_eq!(health, 200);
    assert!(
        summoner.stats("flood").unwrap().connections > IDLE,
        "the flood was still held while the others were answered"
    );

    // The timeouts close every one of them: each reads EOF.
    tokio::task::spawn_blocking(move || {
        for mut c in idle {
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut b = [0u8; 16];
            assert_eq!(c.read(&mut b).unwrap(), 0, "closed by the server");
        }
        slow.join().unwrap();
    })
    .await
    .unwrap();
    until("the service is back to its start", settled).await;
    until("the fd count is back to its start", || {
        fd_count() <= fds_at_start
    })
    .await;

    summoner.shutdown(Duration::from_millis(200)).await;
    let _ = stop.send(());
    api_task.await.unwrap();
    until("every worker is reaped", || child_pids().is_empty()).await;
}
