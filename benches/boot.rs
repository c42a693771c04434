//! VM lifecycle benchmarks with the `hello` guest on /dev/kvm:
//! - `create_to_ready`: build() -> start() -> guest writes "ready" (what a client waits for);
//! - `create_boot_destroy`: the whole life, including teardown.
//!
//! Run: `scripts/build-guests && cargo bench --bench boot`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use vmm::VmConfig;

fn hello() -> Option<VmConfig> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("guest/target/x86_64-unknown-none/release/hello");
    if !p.is_file() || std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("boot bench: needs /dev/kvm and scripts/build-guests; skipped");
        return None;
    }
    Some(VmConfig {
        serial: vmm::SerialConfig::None,
        ..VmConfig::new(p)
    })
}

fn lifecycle(c: &mut Criterion) {
    let Some(config) = hello() else { return };
    let mut g = c.benchmark_group("vm");
    g.sample_size(200).measurement_time(Duration::from_secs(5));
    g.bench_function("create_to_ready", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let vm = vmm::build(&config).expect("build");
                let h = vm.start().expect("start");
                while h.ready_at().is_none() {
                    std::hint::spin_loop();
                }
                total += h.ready_at().expect("ready").duration_since(t0);
                h.wait();
            }
            total
        })
    });
    g.bench_function("create_boot_destroy", |b| {
        b.iter(|| {
            let vm = vmm::build(&config).expect("build");
            vm.start().expect("start").wait()
        })
    });
    g.finish();
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
