//! The two wasm engines on real /dev/kvm: the module compiled ahead of time (wasm2c + clang,
//! its own guest image) and the wasmi interpreter (the dust-wasm guest) must answer every
//! request of a corpus byte for byte alike (tests/handlers/corpus.c: each trap kind, exit,
//! deep recursion, memory.grow to the limit, 1 MiB and over-limit output; the examples);
//! compiled images pass the guest ISA scan; a module the compiler refuses fails its
//! service's creation with a clear message and leaves nothing behind; a second service of
//! the same module reuses the cached image.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{dust, example, guest, http_get, root, TempDir};
use summoner::config::{Engine, Workload};
use summoner::{ServiceConfig, Summoner};

/// `dust run --wasm` of `module` for `path?query` with `engine`, caching images in `cache`.
fn run(engine: &str, module: &Path, path: &str, query: &str, cache: &Path) -> Output {
    dust()
        .env("DUST_AOT_CACHE", cache)
        .args([
            "run",
            "--wasm",
            module.to_str().unwrap(),
            "--engine",
            engine,
        ])
        .args(["--fuel", "20000000", "--timeout", "120s"])
        .args(["--env", &format!("PATH_INFO={path}")])
        .args(["--env", &format!("QUERY_STRING={query}")])
        .output()
        .expect("spawn dust")
}

fn status_line(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines().next().unwrap_or_default().to_string()
}

#[test]
fn both_engines_answer_every_corpus_request_byte_for_byte_alike() {
    require_kvm!();
    let tmp = TempDir::new("wasm-engines");
    let cache = tmp.path().join("cache");
    // (module, path, query, the status both must answer, what the AOT log must say)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        ("corpus", "/", "", "200", ""),
        ("corpus", "/unreachable", "", "502", "unreachable"),
        ("corpus", "/oob", "", "502", "out of bounds"),
        ("corpus", "/oob-load", "", "502", "out of bounds"),
        ("corpus", "/div0", "", "502", "integer divide by zero"),
        ("corpus", "/overflow", "", "502", "integer overflow"),
        ("corpus", "/indirect", "", "502", "indirect call"),
        ("corpus", "/null", "", "502", "indirect call"),
        ("corpus", "/exit", "7", "502", "exited with status 7"),
        ("corpus", "/recurse", "500", "200", ""),
        // The deepest recursion both engines allow, and one frame more: the AOT call-depth
        // counter must stop where wasmi stops.
        ("corpus", "/recurse", "994", "200", ""),
        ("corpus", "/recurse", "995", "502", "call stack exhausted"),
        (
            "corpus",
            "/recurse",
            "100000",
            "502",
            "call stack exhausted",
        ),
        ("corpus", "/widths", "", "200", ""),
        ("corpus", "/grow", "", "200", ""),
        ("corpus", "/out", "", "200", ""),
        (
            "corpus",
            "/out",
            "2000000",
            "502",
            "more than 1048576 bytes",
        ),
        ("hello-c", "/sqrt", "2", "200", ""),
        ("hello-rust", "/sqrt", "2", "200", ""),
        ("hello-rust", "/missing", "", "404", ""),
        ("compute", "/", "2000+2", "200", ""),
    ];
    for &(module, path, query, status, says) in cases {
        let m = example(module);
        let aot = run("aot", &m, path, query, &cache);
        let interp = run("interpreter", &m, path, query, &cache);
        let what = format!("{module} {path}?{query}");
        let aot_err = String::from_utf8_lossy(&aot.stderr);
        assert_eq!(aot.status.code(), Some(0), "{what}: {aot_err}");
        assert_eq!(
            interp.status.code(),
            Some(0),
            "{what}: {}",
            String::from_utf8_lossy(&interp.stderr)
        );
        assert!(
            status_line(&aot).contains(status),
            "{what}: {}",
            status_line(&aot)
        );
        assert!(
            aot.stdout == interp.stdout,
            "{what}: the engines differ:\naot: {:.300}\ninterpreter: {:.300}",
            String::from_utf8_lossy(&aot.stdout),
            String::from_utf8_lossy(&interp.stdout)
        );
        assert!(
            aot_err.contains(says),
            "{what}: the log lacks {says:?}: {aot_err}"
        );
    }
    let img = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path());
    let images: Vec<PathBuf> = img
        .filter(|p| p.extension() == Some("img".as_ref()))
        .collect();
    assert_eq!(images.len(), 4, "one image per module: {images:?}");
    let scan = std::process::Command::new(root().join("scripts/check-guest-isa"))
        .args(&images)
        .output()
        .unwrap();
    assert!(
        scan.status.success(),
        "ISA scan: {}",
        String::from_utf8_lossy(&scan.stderr)
    );
}

#[test]
fn a_looping_handler_ends_at_the_timeout_with_exit_242() {
    require_kvm!();
    let tmp = TempDir::new("wasm-loop");
    let out = dust()
        .env("DUST_AOT_CACHE", tmp.path())
        .args([
            "run",
            "--wasm",
            example("corpus").to_str().unwrap(),
            "--timeout",
            "3s",
        ])
        .args(["--env", "PATH_INFO=/loop"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(242),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

/// A module wasm2c (wabt 1.0.32) refuses but wasmparser accepts: a tail call.
fn tail_call_module() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]); // type 0: () -> ()
    m.extend_from_slice(&[3, 3, 2, 0, 0]); // two functions of type 0
    m.extend_from_slice(&[7, 10, 1, 6]);
    m.extend_from_slice(b"_start");
    m.extend_from_slice(&[0, 0]); // exports function 0
                                  // function 0: return_call 1; function 1: nothing
    m.extend_from_slice(&[10, 9, 2, 4, 0, 0x12, 1, 0x0b, 2, 0, 0x0b]);
    m
}

fn aot_service(name: &str, module: &Path) -> ServiceConfig {
    let mut c = ServiceConfig::wasm(name, "127.0.0.1:0".parse().unwrap(), module);
    assert!(
        matches!(&c.workload, Workload::Wasm(w) if w.engine == Engine::Aot),
        "aot is the default"
    );
    c.pool_size = 1;
    c.request_deadline = Duration::from_secs(30);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiler_failures_are_clear_and_the_cache_is_reused() {
    require_kvm!();
    let tmp = TempDir::new("wasm-aot-svc");
    let cache = tmp.path().join("cache");
    let s = Summoner::new(
        PathBuf::from(env!("CARGO_BIN_EXE_dust")),
        tmp.path().join("run"),
    )
    .unwrap()
    .with_log_dir(tmp.path().to_path_buf())
    .with_aot_cache(cache.clone());
    let hello = ServiceConfig::new("hello", "127.0.0.1:0".parse().unwrap(), guest("http-hello"));
    let hello = s.add(hello).await.unwrap();

    let bad = tmp.file("tail.wasm", &tail_call_module());
    let e = s
        .add(aot_service("tail", &bad))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("wasm2c failed on the module"), "{e}");
    assert!(e.contains("engine = \"interpreter\""), "{e}");
    let left: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert!(left.is_empty(), "the failed compile left {left:?}");
    assert!(s.list().iter().all(|(c, _)| c.name == "hello"));
    let get = |addr, path: &'static str| {
        tokio::task::spawn_blocking(move || http_get(addr, path).unwrap())
    };
    assert_eq!(get(hello, "/").await.unwrap().status, 200);

    // Two services of one module: one compile, one image.
    let module = example("hello-c");
    let a = s.add(aot_service("a", &module)).await.unwrap();
    let image = |dir: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let first = image(&cache);
    assert_eq!(first.len(), 2, "an image and its digest: {first:?}");
    let stamp = std::fs::metadata(&first[0]).unwrap().modified().unwrap();
    let b = s.add(aot_service("b", &module)).await.unwrap();
    assert_eq!(image(&cache), first);
    assert_eq!(
        std::fs::metadata(&first[0]).unwrap().modified().unwrap(),
        stamp,
        "rebuilt"
    );
    for addr in [a, b] {
        let r = get(addr, "/hi?x").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(String::from_utf8_lossy(&r.body).contains("args=x body=0"));
    }
    // A corrupt entry is rebuilt, never used.
    let img = first
        .iter()
        .find(|p| p.extension() == Some("img".as_ref()))
        .unwrap();
    std::fs::write(img, b"\x7fELF not really").unwrap();
    let c = s.add(aot_service("c", &module)).await.unwrap();
    assert_eq!(get(c, "/").await.unwrap().status, 200);
    assert_ne!(std::fs::read(img).unwrap(), b"\x7fELF not really");
    s.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn the_daemon_log_says_when_a_second_service_reuses_the_compiled_image() {
    require_kvm!();
    let tmp = TempDir::new("wasm-aot-log");
    let module = example("hello-c");
    let mut toml = format!(
        "run_dir = \"{0}/run\"\nlog_dir = \"{0}/log\"\nstate_dir = \"{0}/state\"\n[api]\nsocket = \"{0}/api.sock\"\n",
        tmp.path().display()
    );
    for name in ["one", "two"] {
        toml.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nwasm = \"{}\"\n",
            module.display()
        ));
    }
    let conf = tmp.file("dust.toml", toml.as_bytes());
    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let mut daemon = dust()
        .env("DUST_LOG", "info")
        .env("DUST_AOT_CACHE", tmp.path().join("cache"))
        .args(["serve", "--config", conf.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let text = loop {
        let text = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap();
        if text.contains("serving two") || std::time::Instant::now() > deadline {
            break text;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("dust serve ended ({status}):\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: a plain signal to the daemon this test started.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    assert!(text.contains("serving two"), "{text}");
    assert_eq!(text.matches("aot: compiled").count(), 1, "{text}");
    assert_eq!(
        text.matches("aot: reusing the cached image").count(),
        1,
        "{text}"
    );
}
