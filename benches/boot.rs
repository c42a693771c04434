//! VM lifecycle benchmarks with the `hello` guest on /dev/kvm:
//! - `create_to_ready`: build() -> start() -> guest writes "ready" (what a client waits for);
//! - `create_boot_destroy`: the whole life, including teardown;
//! - `snapshot/restore_shell`: what a snapshot-mode pool does ahead of a request (load and
//!   check the snapshot, create the VM, map memory copy-on-write, devices, vCPU, set state);
//! - `snapshot/start_to_first_entry`: a pre-built restored shell -> its vCPU enters the guest
//!   right after `ready()` (what is left on a request's path).
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

fn snapshot(c: &mut Criterion) {
    let Some(config) = hello() else { return };
    let dir = std::env::temp_dir().join(format!("dust-bench-snap-{}", std::process::id()));
    vmm::snapshot::take(&config, &dir).expect("take the template");
    let rc = vmm::RestoreConfig {
        snapshot: dir.clone(),
        id: "bench".into(),
        vsock: None,
        serial: vmm::SerialConfig::None,
        timeout: None,
    };
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(200).measurement_time(Duration::from_secs(5));
    g.bench_function("restore_shell", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let vm = vmm::restore(&rc).expect("restore");
                total += t0.elapsed();
                drop(vm);
            }
            total
        })
    });
    g.bench_function("start_to_first_entry", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let vm = vmm::restore(&rc).expect("restore");
                let report = vm.start().expect("start").wait();
                total += Duration::from_micros(report.timings.first_entry_us);
            }
            total
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, lifecycle, snapshot);
criterion_main!(benches);
