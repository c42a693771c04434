//! vsock between host and the `echo` guest on /dev/kvm, in both interrupt modes:
//! - `rtt_1byte`: one byte there and back over an established connection;
//! - `echo_1mib`: 1 MiB through the guest and back (throughput).
//!
//! Run: `scripts/build-guests && cargo bench --bench vsock`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failure

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm::{VmConfig, VmHandle, VsockConfig};

fn echo_vm(irqchip: bool, dir: &std::path::Path) -> Option<(VmHandle, UnixStream)> {
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("guest/target/x86_64-unknown-none/release/echo");
    if !image.is_file() || std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("vsock bench: needs /dev/kvm and scripts/build-guests; skipped");
        return None;
    }
    let uds = dir.join(format!("echo-{irqchip}.vsock"));
    let config = VmConfig {
        irqchip,
        vsock: Some(VsockConfig { uds: uds.clone() }),
        serial: vmm::SerialConfig::None,
        ..VmConfig::new(image)
    };
    let h = vmm::build(&config).ok()?.start().ok()?;
    let t = Instant::now();
    while h.ready_at().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut s = UnixStream::connect(&uds).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(dust_abi::vsock::connect_line(5000).as_bytes())
        .ok()?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < dust_abi::vsock::LINE_MAX && s.read(&mut b).ok()? == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    if dust_abi::vsock::parse_ok(&line).is_none() {
        eprintln!("vsock bench: echo guest did not accept (irqchip={irqchip}); skipped");
        return None;
    }
    // Prove the path works before measuring it.
    s.write_all(b"x").ok()?;
    s.read_exact(&mut b).ok()?;
    Some((h, s))
}

fn vsock(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("dust-bench-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for irqchip in [false, true] {
        let mode = if irqchip { "irqchip" } else { "polling" };
        let Some((h, mut s)) = echo_vm(irqchip, &dir) else {
            continue;
        };
        let mut g = c.benchmark_group(format!("vsock_{mode}"));
        g.sample_size(50).measurement_time(Duration::from_secs(5));
        g.bench_function("rtt_1byte", |b| {
            let mut byte = [0u8; 1];
            b.iter(|| {
                s.write_all(b"a").unwrap();
                s.read_exact(&mut byte).unwrap();
            })
        });
        const MIB: usize = 1 << 20;
        g.throughput(Throughput::Bytes(MIB as u64));
        g.sample_size(10);
        g.bench_function("echo_1mib", |b| {
            let data = vec![0x5au8; MIB];
            b.iter(|| {
                let mut reader = s.try_clone().unwrap();
                let rx = std::thread::spawn(move || {
                    let mut got = vec![0u8; MIB];
                    reader.read_exact(&mut got).unwrap();
                });
                s.write_all(&data).unwrap();
                rx.join().unwrap();
            })
        });
        g.finish();
        h.killer().kill();
        h.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, vsock);
criterion_main!(benches);
