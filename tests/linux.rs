//! Linux on dust: Debian's cloud kernel (fetched by scripts/fetch-linux) prints its banner on
//! dust's serial. On the emulating KVM of our dev machines that is as far as Linux gets
//! (docs/benchmarks.md, the machines), so the test stops the VM as soon as the banner is seen.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use common::{dust, root};

fn kernel(name: &str) -> PathBuf {
    let p = root().join(".dust-test/linux").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-linux (the README's test command does)",
        p.display()
    );
    p
}

/// Boot `image`, return the serial lines up to and including the first that holds `want`
/// (or everything, if the VM ended first), and the exit status after stopping the VM.
fn boot_until(image: &str, extra: &[&str], want: &str) -> (Vec<String>, Option<i32>) {
    let mut child = dust()
        .args([
            "run",
            image,
            "--mem",
            "256",
            "--irqchip",
            // Alone, the banner takes ~35 s of emulated boot here; two of these tests at once
            // on a loaded 2-core machine took over 90 s. The test stops at the banner, so a
            // generous limit costs nothing when things go well.
            "--timeout",
            "300s",
        ])
        .args([
            "--cmdline",
            "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dust");
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        let done = line.contains(want);
        lines.push(line);
        if done {
            break;
        }
    }
    // SAFETY: plain kill(2) of our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait dust");
    (lines, status.code())
}

#[test]
fn vmlinux_prints_the_linux_banner() {
    require_kvm!();
    let k = kernel("vmlinux");
    let (lines, status) = boot_until(k.to_str().unwrap(), &[], "Command line:");
    assert!(
        lines.iter().any(|l| l.contains("Linux version")),
        "no banner; serial: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Command line: console=ttyS0")),
        "{lines:?}"
    );
    // Stopped by SIGTERM: dust kills the VM and reports it as killed.
    assert_eq!(status, Some(i32::from(dust_abi::status::KILLED)));
}

#[test]
fn vmlinux_with_two_vcpus_reads_the_mp_table() {
    require_kvm!();
    let k = kernel("vmlinux");
    let (lines, _) = boot_until(k.to_str().unwrap(), &["--vcpus", "2"], "Linux version");
    assert!(
        lines.iter().any(|l| l.contains("Linux version")),
        "no banner; serial: {lines:?}"
    );
}

#[test]
fn bzimage_loads_and_runs_until_stopped() {
    require_kvm!();
    // The bzImage decompresses itself under emulation, which takes far longer than a test
    // may; what this checks is the loader path: accepted, entered at its 64-bit entry, and
    // still running (no crash, no VMM error) when the timeout stops it.
    let k = kernel("bzImage");
    let o = dust()
        .args([
            "run",
            k.to_str().unwrap(),
            "--mem",
            "256",
            "--irqchip",
            "--timeout",
            "2s",
        ])
        .args(["--cmdline", "console=ttyS0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(i32::from(dust_abi::status::TIMEOUT)),
        "{err}"
    );
}
