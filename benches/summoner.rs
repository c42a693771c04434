//! The summoner's request path, in process: one HTTP request to an `http-hello` service
//! (accept -> admission -> pre-built shell -> boot -> vsock -> guest answer -> teardown),
//! one client at a time, each request in a fresh VM.
//!
//! Run: `scripts/build-guests && cargo bench --bench summoner`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failure

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use summoner::{ServiceConfig, Summoner};

fn get(addr: SocketAddr) -> usize {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    out.len()
}

fn request_path(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let image = root.join("guest/target/x86_64-unknown-none/release/http-hello");
    let exe = root.join("target/release/dust");
    if !image.is_file() || !exe.is_file() || std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("summoner bench: needs /dev/kvm, scripts/build-guests and cargo build --release; skipped");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("dust-bench-summoner-{}", std::process::id()));
    let summoner = Summoner::new(exe, dir.join("run")).unwrap();
    let mut svc = ServiceConfig::new("bench", "127.0.0.1:0".parse().unwrap(), image);
    svc.pool_size = 2;
    let addr = rt.block_on(summoner.add(svc)).unwrap();
    for _ in 0..20 {
        get(addr);
    }
    let mut g = c.benchmark_group("summoner");
    g.sample_size(100).measurement_time(Duration::from_secs(8));
    g.bench_function("http_request_fresh_vm", |b| b.iter(|| get(addr)));
    g.finish();
    rt.block_on(summoner.shutdown(Duration::from_secs(5)));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, request_path);
criterion_main!(benches);
