//! `dust bench` end to end: against the embedded hello service it prints the table and writes
//! a JSON report (schema dust-bench/1) and an SVG a browser can render.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use common::{dust, TempDir};

#[test]
fn bench_against_the_default_hello_service_writes_json_and_svg() {
    require_kvm!();
    let _ = common::guest("http-hello");
    let dir = TempDir::new("bench");
    let json = dir.path().join("r.json");
    let svg = dir.path().join("r.svg");
    let out = dust()
        .args(["bench", "-n", "40", "-c", "2", "--warmup", "5", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "client", "total", "host", "guest", "boot", "p50", "p99.9", "req/s",
    ] {
        assert!(stdout.contains(row), "table lacks {row}: {stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["schema"], "dust-bench/1");
    assert_eq!(report["requests"], 40);
    assert_eq!(report["concurrency"], 2);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["status_counts"]["200"], 40);
    assert!(report["throughput_rps"].as_f64().unwrap() > 0.0);
    for series in [
        "client", "queue", "spawn", "boot", "connect", "respond", "guest", "total", "host",
    ] {
        let s = &report["latency_ms"][series];
        for field in ["count", "mean", "p50", "p90", "p99", "p999", "max"] {
            assert!(
                s[field].is_number(),
                "latency_ms.{series}.{field} missing: {s}"
            );
        }
    }
    assert_eq!(report["samples"].as_array().unwrap().len(), 40);
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG must be well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(
        doc.descendants().filter(|n| n.has_tag_name("rect")).count() > 40,
        "phase bars missing"
    );
    assert!(
        doc.descendants()
            .any(|n| n.has_tag_name("polyline") || n.has_tag_name("path")),
        "CDF line missing"
    );
}

#[test]
fn bench_boot_with_peers_prints_the_ratio() {
    require_kvm!();
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output();
    assert!(
        qemu.is_ok(),
        "QEMU is required (scripts/install-deps installs qemu-system-x86)"
    );
    let out = dust()
        .args(["bench", "boot", "--peers", "-n", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in ["dust", "qemu-microvm", "static-process"] {
        assert!(stdout.contains(row), "missing row {row}: {stdout}");
    }
    // Firecracker is not packaged: without one, the run says it skipped it.
    let has_fc = std::env::var_os("FIRECRACKER").is_some()
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join("firecracker").is_file());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.contains("firecracker "), has_fc, "{stdout}{stderr}");
    if !has_fc {
        assert!(stderr.contains("skipping Firecracker"), "{stderr}");
    }
    let ratio = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ratio qemu/dust spawn->ready: "))
        .and_then(|r| r.trim_end_matches('x').parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no ratio line: {stdout}"));
    assert!(ratio > 0.0);
}
