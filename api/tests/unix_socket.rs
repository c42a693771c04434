//! The server on real sockets: a Unix socket in a temp dir (mode 0600, stale-socket
//! handling, removed on shutdown), the TCP listener's token, graceful stop, and the real
//! summoner behind it (services with `pool_size = 0`, so no VM is ever started).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support as host;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api::{ApiError, ApiServer, Control, ServiceStatus};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use summoner::registry::VmInfo;
use summoner::{AddError, ServiceConfig, Summoner};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;

const TOKEN: &str = "t0ken-for-tests";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

/// One request on a fresh connection.
async fn send<S>(io: S, method: &str, uri: &str, auth: Option<&str>, body: Option<Value>) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost");
    if let Some(token) = auth {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let payload = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let resp = sender
        .send_request(req.body(Full::new(payload)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn unix(path: &Path, method: &str, uri: &str, body: Option<Value>) -> Answer {
    send(
        UnixStream::connect(path).await.unwrap(),
        method,
        uri,
        None,
        body,
    )
    .await
}

async fn tcp(addr: SocketAddr, uri: &str, auth: Option<&str>) -> Answer {
    send(
        TcpStream::connect(addr).await.unwrap(),
        "GET",
        uri,
        auth,
        None,
    )
    .await
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start<C: Control>(server: ApiServer, control: Arc<C>) -> Self {
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(control, async move {
            let _ = rx.await;
        }));
        Self { stop, task }
    }

    /// Shut down and wait (bounded, so a hang fails instead of blocking CI).
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

#[tokio::test]
async fn serves_the_summoner_on_a_private_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let sock: PathBuf = tmp.path().join("not/yet/api.sock");
    // Never booted: the services here have pool_size = 0.
    let image = host::tiny_elf();
    let summoner =
        Arc::new(Summoner::new(std::env::current_exe().unwrap(), tmp.path().join("run")).unwrap());

    let server =
        ApiServer::bind(&sock, Some(("127.0.0.1:0".parse().unwrap(), TOKEN.into()))).unwrap();
    assert_eq!(server.unix_path(), sock);
    let tcp_addr = server.tcp_addr().unwrap();
    assert_eq!(mode(&sock), 0o600, "socket mode");
    assert_eq!(
        mode(sock.parent().unwrap()),
        0o700,
        "created parent dir mode"
    );
    let running = Running::start(server, summoner.clone());

    // A second daemon on the same socket is refused, and leaves it alone.
    match ApiServer::bind(&sock, None) {
        Err(ApiError::SocketInUse(p)) => assert_eq!(p, sock),
        other => panic!("expected SocketInUse, got {other:?}"),
    }
    assert!(sock.exists());

    let a = unix(&sock, "GET", "/v1/health", None).await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let a = unix(&sock, "GET", "/v1/version", None).await;
    assert_eq!(a.json()["version"], env!("CARGO_PKG_VERSION"));

    // A service through the real summoner.
    let config = json!({"listen": "127.0.0.1:0", "image": image, "pool_size": 0});
    let a = unix(&sock, "PUT", "/v1/services/web", Some(config.clone())).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.headers["location"], "/v1/services/web");
    let body = a.json();
    assert_eq!(body["name"], "web");
    assert_eq!(
        body["stats"],
        json!({"running": 0, "max_running": 0, "idle": 0, "waiting": 0, "connections": 0})
    );
    let first_addr: SocketAddr = body["address"].as_str().unwrap().parse().unwrap();
    TcpStream::connect(first_addr)
        .await
        .expect("the service listens");

    // Replaced live (port 0 again: the new one picks its own port, the old one closes).
    let a = unix(&sock, "PUT", "/v1/services/web", Some(config.clone())).await;
    assert_eq!(a.status, StatusCode::OK, "replaced: {}", a.text);
    let svc_addr: SocketAddr = a.json()["address"].as_str().unwrap().parse().unwrap();
    TcpStream::connect(svc_addr)
        .await
        .expect("the new service listens");
    if svc_addr != first_addr {
        assert!(
            TcpStream::connect(first_addr).await.is_err(),
            "old port closed"
        );
    }
    let list = unix(&sock, "GET", "/v1/services", None).await.json();
    assert_eq!(list["services"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["services"][0]["name"], "web");

    let mut bad = config.clone();
    bad["image"] = json!(tmp.path().join("missing"));
    let a = unix(&sock, "PUT", "/v1/services/other", Some(bad)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert_eq!(a.json()["error"]["code"], "invalid_config");
    assert!(a.text.contains("missing"), "{}", a.text);

    let mut clash = config.clone();
    clash["listen"] = json!(svc_addr);
    let a = unix(&sock, "PUT", "/v1/services/other", Some(clash)).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert_eq!(a.json()["error"]["code"], "address_in_use");

    let a = unix(&sock, "GET", "/v1/vms", None).await;
    assert_eq!((a.status, a.json()), (StatusCode::OK, json!({"vms": []})));
    let a = unix(&sock, "DELETE", "/v1/vms/nope-1", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = unix(&sock, "GET", "/metrics", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        a.headers
    );

    // The port closes with the DELETE.
    let a = unix(&sock, "DELETE", "/v1/services/web", None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert!(TcpStream::connect(svc_addr).await.is_err(), "port closed");
    let a = unix(&sock, "GET", "/v1/services/web", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // TCP needs the token.
    let a = tcp(tcp_addr, "/v1/health", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["error"]["code"], "unauthorized");
    let a = tcp(tcp_addr, "/v1/health", Some("wrong")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = tcp(tcp_addr, "/v1/health", Some(TOKEN)).await;
    assert_eq!(a.status, StatusCode::OK);

    running.stop().await;
    assert!(!sock.exists(), "socket removed on shutdown");
    assert!(TcpStream::connect(tcp_addr).await.is_err(), "TCP closed");
    summoner.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_other_files_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("api.sock");
    // A socket file nobody answers on, as a crashed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let server = ApiServer::bind(&sock, None).unwrap();
    assert_eq!(mode(&sock), 0o600);
    drop(server);
    assert!(
        !sock.exists(),
        "an unserved server removes its socket on drop"
    );

    std::fs::write(&sock, b"precious").unwrap();
    match ApiServer::bind(&sock, None) {
        Err(ApiError::NotASocket(p)) => assert_eq!(p, sock),
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");

    assert!(matches!(
        ApiServer::bind(
            tmp.path().join("b.sock"),
            Some(("127.0.0.1:0".parse().unwrap(), String::new()))
        ),
        Err(ApiError::BadToken)
    ));
    assert!(!tmp.path().join("b.sock").exists());
}

#[test]
fn bind_outside_a_runtime_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        ApiServer::bind(tmp.path().join("api.sock"), None),
        Err(ApiError::NoRuntime)
    ));
}

/// A control whose service removal takes a while, to catch shutdown cutting requests off.
#[derive(Default)]
struct Slow {
    removing: AtomicBool,
}

impl Control for Slow {
    fn services(&self) -> Vec<ServiceStatus> {
        Vec::new()
    }
    async fn add_service(&self, config: ServiceConfig) -> Result<SocketAddr, AddError> {
        Err(AddError::Duplicate(config.name))
    }
    async fn remove_service(&self, _name: &str, _grace: Duration) -> bool {
        self.removing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        true
    }
    fn vms(&self) -> Vec<VmInfo> {
        Vec::new()
    }
    fn kill_vm(&self, _id: &str) -> bool {
        false
    }
    fn metrics_text(&self, _format: summoner::metrics::Format) -> String {
        String::new()
    }
    fn drain(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_closes_idle_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("api.sock");
    let slow = Arc::new(Slow::default());
    let running = Running::start(ApiServer::bind(&sock, None).unwrap(), slow.clone());

    // An idle keep-alive connection must not hold the shutdown up.
    let idle = UnixStream::connect(&sock).await.unwrap();
    let (mut idle_sender, idle_conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(idle))
            .await
            .unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let warm = Request::builder()
        .uri("/v1/health")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        idle_sender.send_request(warm).await.unwrap().status(),
        StatusCode::OK
    );

    let in_flight = tokio::spawn({
        let sock = sock.clone();
        async move { unix(&sock, "DELETE", "/v1/services/x", None).await }
    });
    while !slow.removing.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await;
    assert_eq!(in_flight.await.unwrap().status, StatusCode::NO_CONTENT);
    assert!(!sock.exists());
    tokio::time::timeout(Duration::from_secs(10), idle_conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .unwrap();
}
