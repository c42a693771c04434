//! `dust run` end to end: real guests on /dev/kvm through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::time::{Duration, Instant};

use common::{dust_run, guest};
use dust_abi::status;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn hello_prints_greeting_and_arguments() {
    require_kvm!();
    let hello = guest("hello");
    let o = dust_run(&[hello.to_str().unwrap(), "--cmdline", "alpha beta 42"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Hello from dust"), "stdout: {out}");
    assert!(out.contains("alpha beta 42"), "stdout: {out}");
}

#[test]
fn a_long_line_leaves_the_guest_in_one_console_write() {
    require_kvm!();
    // 300 characters of arguments: the greeting and the argument line are two console
    // writes, the ready signal and the exit two more. Through the UART alone it would be
    // one exit per byte.
    let args = vec!["abcdefghi"; 30].join(" ");
    let o = dust_run(&[
        guest("hello").to_str().unwrap(),
        "--cmdline",
        &args,
        "--timings",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(stdout(&o).contains(&args), "stdout: {}", stdout(&o));
    let exits: u64 = stderr(&o)
        .lines()
        .find_map(|l| l.strip_prefix("exits"))
        .expect("--timings lists exits")
        .trim()
        .parse()
        .unwrap();
    assert!(
        exits <= 6,
        "{exits} exits: the console-write port was not used"
    );
}

#[test]
fn exit_code_passes_through() {
    require_kvm!();
    let g = guest("exit-code");
    for code in [0, 7, 239] {
        let o = dust_run(&[g.to_str().unwrap(), "--cmdline", &code.to_string()]);
        assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(&o));
    }
}

#[test]
fn timings_lists_every_phase() {
    require_kvm!();
    let o = dust_run(&[guest("hello").to_str().unwrap(), "--timings"]);
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    for phase in [
        "create_vm",
        "memory",
        "load",
        "vcpu_setup",
        "first_entry",
        "ready",
        "run",
        "guest",
        "teardown",
    ] {
        assert!(err.contains(phase), "missing {phase} in: {err}");
    }
    assert!(!err.contains("never"), "hello must signal ready: {err}");
}

#[test]
fn crash_reports_triple_fault() {
    require_kvm!();
    let o = dust_run(&[guest("crash").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(i32::from(status::GUEST_CRASH)));
    assert!(
        stderr(&o).contains("guest crashed: triple fault"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn spin_is_killed_at_its_timeout() {
    require_kvm!();
    let start = Instant::now();
    let o = dust_run(&[guest("spin").to_str().unwrap(), "--timeout", "2s"]);
    let took = start.elapsed();
    assert_eq!(
        o.status.code(),
        Some(i32::from(status::TIMEOUT)),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    // Correctness, not speed: the kill must not wait for an exit that never comes.
    assert!(took >= Duration::from_secs(2), "killed early: {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "kill did not interrupt the guest: {took:?}"
    );
}

/// Whether process `pid` has a handler for `signal` (the `SigCgt` mask of its status).
fn catches(pid: u32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (signal - 1)) != 0)
}

#[test]
fn sigterm_kills_the_vm_not_the_process() {
    require_kvm!();
    // vCPU 0 runs on the main thread, which takes the signal itself: it must interrupt the
    // guest (a loop without exits) and let dust tear it down. A signal that comes during
    // the build waits, blocked, until the vCPU runs.
    let mut child = common::dust()
        .args(["run", guest("spin").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dust");
    // Once dust has a handler for SIGTERM, the signal is blocked or taken by the vCPU's
    // thread (it is blocked before the handler is installed).
    while !catches(child.id(), libc::SIGTERM) {
        let ended = child.try_wait().expect("poll dust");
        assert!(
            ended.is_none(),
            "dust ended before it could be signalled: {ended:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().expect("wait for dust");
    assert_eq!(
        o.status.code(),
        Some(i32::from(status::KILLED)),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("VM killed"), "{}", stderr(&o));
}

#[test]
fn usage_errors_have_their_own_status() {
    let o = dust_run(&[]);
    assert_eq!(o.status.code(), Some(i32::from(status::USAGE)));
    let o = dust_run(&["x", "--timeout", "soon"]);
    assert_eq!(o.status.code(), Some(i32::from(status::USAGE)));
    let o = common::dust().arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("run"));
}
