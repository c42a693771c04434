//! The front door of a service as real clients use it: half-closed and pipelining clients,
//! silent, slow and idle connections, the per-service connection cap. Workers are the fake
//! of `summoner::fake_worker`, so no /dev/kvm is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use summoner::fake_worker as fake;
use test_support as host;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use host::child_pids;
use summoner::{ServiceConfig, Summoner};
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};

/// Tests check that no worker child is left, so they never overlap.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

struct Env {
    summoner: Summoner,
    dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

async fn env() -> Env {
    env_with(|s| s).await
}

async fn env_with(f: impl FnOnce(Summoner) -> Summoner) -> Env {
    let serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let summoner = f(Summoner::with_worker(
        std::env::current_exe().unwrap(),
        fake::args(),
        run,
        fake::no_jail(),
    )
    .unwrap());
    Env {
        summoner,
        dir,
        _serial: serial,
    }
}

fn service(name: &str) -> ServiceConfig {
    let image = host::tiny_elf();
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), image);
    s.cmdline = "fake=answer".into();
    s.pool_size = 1;
    s
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

impl Env {
    fn connections(&self, name: &str) -> usize {
        self.summoner.stats(name).unwrap().connections
    }

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

/// Send `bytes`, shut the write side (as `nc -N` does), read everything that comes back.
async fn half_closed(addr: SocketAddr, bytes: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(bytes).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        String::from_utf8_lossy(&back).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_worker() {
    if fake::is_child() {
        fake::serve();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_every_answer() {
    let env = env().await;
    let addr = env.summoner.add(service("half")).await.unwrap();
    let one = half_closed(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(one.starts_with("HTTP/1.0 200"), "{one:?}");
    let three = half_closed(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(three.matches("HTTP/1.1 200 OK").count(), 3, "{three:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503() {
    let env = env().await;
    let mut s = service("capped");
    s.max_connections = 2;
    let addr = env.summoner.add(s).await.unwrap();
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    until("both connections are open", || {
        env.connections("capped") == 2
    })
    .await;
    let r = tokio::task::spawn_blocking(move || host::http_get(addr, "/").unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    drop(held);
    until("the connections are closed", || {
        env.connections("capped") == 0
    })
    .await;
    let r = tokio::task::spawn_blocking(move || host::http_get(addr, "/").unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    env.finish().await;
}

/// Read until the server closes the connection; what it sent before.
fn read_until_closed(mut c: TcpStream) -> Vec<u8> {
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed() {
    let env = env().await;
    let mut s = service("timeouts");
    s.header_timeout = Duration::from_millis(300);
    s.idle_timeout = Duration::from_millis(300);
    let addr = env.summoner.add(s).await.unwrap();
    let silent = TcpStream::connect(addr).unwrap();
    let mut half_sent = TcpStream::connect(addr).unwrap();
    half_sent
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (silent, half_sent, idle) = tokio::task::spawn_blocking(move || {
        (
            read_until_closed(silent),
            read_until_closed(half_sent),
            read_until_closed(idle),
        )
    })
    .await
    .unwrap();
    assert!(silent.is_empty() && half_sent.is_empty());
    // The keep-alive connection got its answer, then was closed once idle.
    let idle = String::from_utf8_lossy(&idle);
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");
    until("no connection is open", || env.connections("timeouts") == 0).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_vms_caps_the_workers_of_the_whole_daemon() {
    let env = env_with(|s| s.with_max_vms(1)).await;
    let mut s = service("capvms");
    s.cmdline = "fake=never-answers".into();
    s.max_concurrent = 2;
    s.queue_depth = 0;
    let addr = env.summoner.add(s).await.unwrap();
    until("the one shell is built", || {
        env.summoner.stats("capvms").unwrap().idle == 1
    })
    .await;
    let mut held = TcpStream::connect(addr).unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    until("the VM serves", || env.summoner.vms().len() == 1).await;
    // The service may run two, the daemon only one: the next request is shed.
    let r = tokio::task::spawn_blocking(move || host::http_get(addr, "/").unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(child_pids().len(), 1);
    drop(held);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_larger_than_max_concurrent_is_refused() {
    let env = env().await;
    let mut s = service("bigpool");
    s.pool_size = 40;
    s.max_concurrent = 1;
    let e = env.summoner.add(s).await.unwrap_err().to_string();
    assert!(e.contains("pool_size 40"), "{e}");
    assert!(child_pids().is_empty());
    env.finish().await;
}

fn vsock_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".vsock"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_socket_behind() {
    let env = env().await;
    env.summoner.add(service("sockets")).await.unwrap();
    let run = env.dir.path().join("run");
    until("the shell is built", || vsock_files(&run).len() == 1).await;
    env.summoner.shutdown(Duration::from_millis(100)).await;
    // At once, not eventually: the daemon exits right after this.
    assert_eq!(vsock_files(&run), Vec::<String>::new());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tcp_vm_closes_its_connection_at_once() {
    let env = env().await;
    let mut s = service("tcpkill");
    s.mode = summoner::Mode::Tcp;
    s.cmdline = "fake=echo".into();
    // Only the kill may end the connection, not the deadline.
    s.request_deadline = Duration::from_secs(3600);
    let addr = env.summoner.add(s).await.unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    let id = env.summoner.vms()[0].id.clone();
    assert!(env.summoner.kill_vm(&id));
    // The client keeps its connection open: the VM is reaped and gives back its slot all
    // the same, and the client is told by an EOF.
    until("the VM is gone", || env.summoner.vms().is_empty()).await;
    assert_eq!(env.summoner.stats("tcpkill").unwrap().running, 0);
    let n = tokio::task::spawn_blocking(move || {
        let n = c.read(&mut [0u8; 8]).unwrap();
        drop(c);
        n
    })
    .await
    .unwrap();
    assert_eq!(n, 0);
    assert!(!env.summoner.kill_vm(&id));
    env.finish().await;
}

/// An HTTP/2 client connection (prior knowledge, as `curl --http2-prior-knowledge`), and
/// the task driving it: it ends when the server closes the connection.
async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

/// One HTTP/2 GET: status, headers and body.
async fn h2_get(
    mut send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    uri: String,
) -> (http::StatusCode, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let req = http::Request::get(uri)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_on_one_connection_each_get_a_vm_of_their_own() {
    let env = env().await;
    let mut s = service("h2");
    s.cmdline = "fake=show-head".into();
    s.max_concurrent = 3;
    let addr = env.summoner.add(s).await.unwrap();
    let (send, conn) = h2_client(addr).await;
    let streams: Vec<_> = (0..3)
        .map(|i| tokio::spawn(h2_get(send.clone(), format!("http://{addr}/s/{i}?q=1"))))
        .collect();
    let mut vms = std::collections::HashSet::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let (status, headers, body) = stream.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let vm = headers["x-dust-vm"].to_str().unwrap().to_string();
        // The guest speaks HTTP/1.1 and answers chunked, with a keep-alive header: none of
        // that reaches an HTTP/2 client.
        for h in ["connection", "keep-alive", "transfer-encoding"] {
            assert!(!headers.contains_key(h), "{h}: {headers:?}");
        }
        let (body_vm, head) = body.split_once('\n').unwrap();
        assert_eq!(body_vm, vm);
        // The guest read an HTTP/1.1 request with a path and a Host header.
        assert!(
            head.starts_with(&format!("GET /s/{i}?q=1 HTTP/1.1\r\n")),
            "{head:?}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: {addr}\r\n")),
            "{head:?}"
        );
        vms.insert(vm);
    }
    assert_eq!(vms.len(), 3, "every stream gets its own VM: {vms:?}");
    assert_eq!(env.connections("h2"), 1, "all on one connection");
    drop(send);
    conn.await.unwrap().unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_h2_connections_are_closed() {
    let env = env().await;
    let mut s = service("h2idle");
    s.header_timeout = Duration::from_millis(300);
    s.idle_timeout = Duration::from_millis(300);
    let addr = env.summoner.add(s).await.unwrap();
    // The preface and nothing more: closed by the header timeout.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    // One answered request, then nothing: told GOAWAY and closed once idle, while the
    // client keeps its side open.
    let (send, conn) = h2_client(addr).await;
    let (status, _, _) = h2_get(send.clone(), format!("http://{addr}/")).await;
    assert_eq!(status, 200);
    conn.await.unwrap().unwrap();
    let silent = tokio::task::spawn_blocking(move || read_until_closed(silent))
        .await
        .unwrap();
    // The server's SETTINGS frame came back, and then the close.
    assert!(!silent.is_empty());
    until("no connection is open", || env.connections("h2idle") == 0).await;
    drop(send);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connections_over_the_cap_get_503() {
    let env = env().await;
    let mut s = service("h2capped");
    s.max_connections = 1;
    let addr = env.summoner.add(s).await.unwrap();
    let held = TcpStream::connect(addr).unwrap();
    until("the connection is open", || {
        env.connections("h2capped") == 1
    })
    .await;
    let (send, conn) = h2_client(addr).await;
    let (status, headers, body) = h2_get(send.clone(), format!("http://{addr}/")).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("too many open connections"), "{body}");
    // Told GOAWAY after its answer.
    conn.await.unwrap().unwrap();
    drop((held, send));
    until("the connection is closed", || {
        env.connections("h2capped") == 0
    })
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_whose_guest_dies_gets_502_naming_its_vm() {
    let env = env().await;
    let mut s = service("h2dies");
    s.cmdline = "fake=dies".into();
    let addr = env.summoner.add(s).await.unwrap();
    let (send, conn) = h2_client(addr).await;
    let (status, headers, _) = h2_get(send.clone(), format!("http://{addr}/")).await;
    assert_eq!(status, 502);
    assert!(headers.contains_key("x-dust-vm"), "{headers:?}");
    // The connection outlives the failed stream: the next one is served too.
    let (status, _, _) = h2_get(send.clone(), format!("http://{addr}/")).await;
    assert_eq!(status, 502);
    drop(send);
    conn.await.unwrap().unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_the_client_cancels_takes_its_vm_with_it() {
    let env = env().await;
    let mut s = service("h2cancel");
    s.cmdline = "fake=never-answers".into();
    // Only the cancel may end the VM, not the deadline.
    s.request_deadline = Duration::from_secs(3600);
    let addr = env.summoner.add(s).await.unwrap();
    let (send, conn) = h2_client(addr).await;
    let stream = tokio::spawn(h2_get(send.clone(), format!("http://{addr}/")));
    until("the VM serves", || env.summoner.vms().len() == 1).await;
    // Dropping the request sends RST_STREAM; the connection stays open.
    stream.abort();
    until("the VM is gone", || env.summoner.vms().is_empty()).await;
    assert_eq!(env.connections("h2cancel"), 1);
    drop(send);
    conn.await.unwrap().unwrap();
    env.finish().await;
}
