//! WebAssembly handlers on real /dev/kvm: both example handlers (examples/wasm, built by
//! scripts/build-examples) served in snapshot mode by each engine (compiled ahead of time,
//! and the dust-wasm interpreter guest), and modules that must be refused when their
//! service is created. tests/wasm_engines.rs compares the engines byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{child_pids, dust, example, guest, http_get, read_reply, HttpReply, TempDir};
use summoner::config::{Engine, Workload};
use summoner::{ServiceConfig, Summoner};

const VMM_ERROR: i32 = 243;

/// `dust run ARGS` with compiled images cached in `cache`.
fn dust_run(cache: &Path, args: &[&str]) -> std::process::Output {
    dust()
        .env("DUST_AOT_CACHE", cache)
        .arg("run")
        .args(args)
        .output()
        .expect("spawn dust")
}

fn summoner(tmp: &TempDir) -> Summoner {
    Summoner::new(
        PathBuf::from(env!("CARGO_BIN_EXE_dust")),
        tmp.path().join("run"),
    )
    .unwrap()
    // The services' serial files are written there.
    .with_log_dir(tmp.path().to_path_buf())
}

fn post(addr: SocketAddr, path: &str, body: &[u8]) -> HttpReply {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    read_reply(&mut s).unwrap()
}

async fn get(addr: SocketAddr, path: &'static str) -> HttpReply {
    tokio::task::spawn_blocking(move || http_get(addr, path).unwrap())
        .await
        .unwrap()
}

fn text(r: &HttpReply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn checksum(body: &[u8]) -> u32 {
    body.iter()
        .fold(0u32, |s, &b| s.wrapping_mul(31).wrapping_add(u32::from(b)))
}

/// The must-show list of one example handler behind a service.
async fn exercise(name: &str, engine: Engine, addr: SocketAddr, log: &Path) {
    let r = get(addr, "/hi?a+b%21").await;
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(r.status, 200, "{name}: {}\nlog:\n{logged}", text(&r));
    let body = text(&r);
    assert!(
        body.contains("method=GET path=/hi query=a+b%21 args=a,b!"),
        "{name}: {body}"
    );
    assert_eq!(r.header("x-handler"), Some(name), "{name}");
    let vm = r.header("x-dust-vm").unwrap().to_string();
    assert!(
        body.contains(&format!("vm={vm}")),
        "{name}: X_DUST_VM: {body}"
    );

    let payload: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = tokio::task::spawn_blocking(move || post(addr, "/upload", &payload))
        .await
        .unwrap();
    let want = format!(
        "body=8192 sum={}",
        checksum(
            &(0..8192u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<_>>()
        )
    );
    assert!(text(&r).contains("method=POST"), "{name}: {}", text(&r));
    assert!(
        text(&r).contains(&want),
        "{name}: {} lacks {want}",
        text(&r)
    );

    let r = get(addr, "/missing").await;
    assert_eq!(r.status, 404, "{name}");
    assert_eq!(r.header("x-handler"), Some(name), "{name}");
    assert!(text(&r).contains("no such page: /missing"), "{name}");

    let r = get(addr, "/log").await;
    assert_eq!(r.status, 200, "{name}");
    let vm = r.header("x-dust-vm").unwrap().to_string();
    let line = format!("[{vm}] {name}: logging for GET /log");
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        logged.contains(&line),
        "{name}: no {line:?} in the log:\n{logged}"
    );

    let r = get(addr, "/sqrt?2").await;
    assert!(
        text(&r).contains("= 1.4142135623730951"),
        "{name}: {}",
        text(&r)
    );

    // A global counter answers 1 on every request; random_get differs in every VM.
    let mut randoms = HashSet::new();
    for _ in 0..3 {
        let body = text(&get(addr, "/").await);
        assert!(body.contains("requests=1 "), "{name}: {body}");
        assert!(body.contains("errno=0"), "{name}: {body}");
        let random = body
            .split("random=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        randoms.insert(random.to_string());
    }
    assert_eq!(randoms.len(), 3, "{name}: random bytes repeat: {randoms:?}");

    // A trap is a 502 whose message goes to the log, not to the client.
    let r = get(addr, "/trap").await;
    assert_eq!(r.status, 502, "{name}: {}", text(&r));
    assert!(!text(&r).contains("unreachable"), "{name}: {}", text(&r));
    let vm = r.header("x-dust-vm").unwrap_or_default().to_string();
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        logged.contains(&format!("[{vm}] handler trapped")),
        "{name}: {logged}"
    );

    // An endless loop runs out of fuel (interpreter) or into the deadline (compiled): 504.
    let r = get(addr, "/loop").await;
    assert_eq!(r.status, 504, "{name}: {}", text(&r));
    if engine == Engine::Interpreter {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        assert!(logged.contains("ran out of fuel"), "{name}: {logged}");
    }

    // And the service goes on serving.
    assert_eq!(get(addr, "/").await.status, 200, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_handlers_serve_wagi_requests_in_fresh_vms() {
    require_kvm!();
    let tmp = TempDir::new("wasm-examples");
    let s = summoner(&tmp).with_aot_cache(tmp.path().join("aot"));
    for engine in [Engine::Aot, Engine::Interpreter] {
        for name in ["hello-c", "hello-rust"] {
            let log = tmp.path().join(format!("{name}-{engine}.log"));
            // Short: the jailed worker's vsock path holds the VM id twice (SUN_LEN).
            let service = format!("{}-{}", &name[6..], &engine.to_string()[..1]);
            let mut c =
                ServiceConfig::wasm(&service, "127.0.0.1:0".parse().unwrap(), example(name));
            let Workload::Wasm(w) = &mut c.workload else {
                unreachable!("a wasm service")
            };
            // Enough for every example path (the C one's 8 KiB upload uses ~0.45 M), and
            // `/loop` runs out of it well within this deadline on an emulating KVM.
            w.fuel = Some(600_000);
            w.engine = engine;
            c.pool_size = 1;
            // Compiled code has no fuel: its `/loop` ends at the deadline.
            c.request_deadline = Duration::from_secs(match engine {
                Engine::Aot => 5,
                Engine::Interpreter => 30,
            });
            c.serial = vmm::SerialConfig::File(log.clone());
            assert!(c.snapshot, "wasm services default to snapshot mode");
            let addr = s.add(c).await.unwrap();
            exercise(name, engine, addr, &log).await;
            assert!(s.remove(&service, Duration::from_secs(5)).await);
        }
    }
    s.shutdown(Duration::from_secs(5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !child_pids().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(child_pids(), Vec::<u32>::new(), "worker processes left");
}

/// A module importing `env::host_fn` and `wasi_snapshot_preview1::sock_accept`.
fn module_with_unsupported_imports() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]); // type 0: () -> ()
    let mut imports = vec![2];
    for (module, name) in [
        ("env", "host_fn"),
        ("wasi_snapshot_preview1", "sock_accept"),
    ] {
        imports.push(module.len() as u8);
        imports.extend_from_slice(module.as_bytes());
        imports.push(name.len() as u8);
        imports.extend_from_slice(name.as_bytes());
        imports.extend_from_slice(&[0, 0]); // a function of type 0
    }
    m.push(2);
    m.push(imports.len() as u8);
    m.extend_from_slice(&imports);
    m.extend_from_slice(&[3, 2, 1, 0]); // one function of type 0
    m.extend_from_slice(&[7, 10, 1, 6]);
    m.extend_from_slice(b"_start");
    m.extend_from_slice(&[0, 2]); // exports function 2
    m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_are_refused_at_creation_and_the_daemon_keeps_serving() {
    require_kvm!();
    let tmp = TempDir::new("wasm-bad");
    let s = summoner(&tmp);
    let hello = ServiceConfig::new("hello", "127.0.0.1:0".parse().unwrap(), guest("http-hello"));
    let addr = s.add(hello).await.unwrap();
    let rust = std::fs::read(example("hello-rust")).unwrap();
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        (
            "imports",
            module_with_unsupported_imports(),
            &["env::host_fn", "wasi_snapshot_preview1::sock_accept"],
        ),
        (
            "component",
            b"\0asm\x0d\0\x01\0".to_vec(),
            &["component for another world", "wasi:http/incoming-handler"],
        ),
        (
            "truncated",
            rust[..rust.len() / 2].to_vec(),
            &["invalid module"],
        ),
        (
            "notwasm",
            std::fs::read(guest("hello")).unwrap(),
            &["not a WebAssembly module"],
        ),
    ];
    for (name, bytes, words) in cases {
        let path = tmp.file(&format!("{name}.wasm"), &bytes);
        let c = ServiceConfig::wasm(name, "127.0.0.1:0".parse().unwrap(), &path);
        let e = s.add(c).await.unwrap_err().to_string();
        for w in words {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
        // The same refusal from `dust run --wasm`, before any VM boots.
        let out = dust_run(tmp.path(), &["--wasm", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(VMM_ERROR), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words[0]), "{name}: {err}");
    }
    assert!(s.list().iter().all(|(c, _)| c.name == "hello"));
    assert_eq!(get(addr, "/").await.status, 200);
    s.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn dust_run_wasm_runs_one_request_and_prints_the_response() {
    require_kvm!();
    let tmp = TempDir::new("wasm-run");
    let body = tmp.file("body", b"0123456789");
    let out = dust_run(
        tmp.path(),
        &[
            "--wasm",
            example("hello-c").to_str().unwrap(),
            "--env",
            "PATH_INFO=/form",
            "--env",
            "QUERY_STRING=x+y",
            "--body",
            body.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 200 OK\r\n"), "{stdout}");
    let want = format!(
        "method=POST path=/form query=x+y args=x,y body=10 sum={}",
        checksum(b"0123456789")
    );
    assert!(stdout.contains(&want), "{stdout}");
}
