//! Booting through the library leaks nothing: after 200 VMs the process has the fds and
//! threads it started with.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use common::{fd_count, guest, thread_count};
use vmm::{VmConfig, VmExit};

/// The tests count the whole process's fds and threads, so they must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Wait (briefly) until this process has `fds` fds and `threads` threads again: the test
/// harness's thread of the test that ran before may still be exiting when this one counts.
fn settled(fds: usize, threads: usize) {
    let t = std::time::Instant::now();
    while (fd_count(), thread_count()) != (fds, threads)
        && t.elapsed() < std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(fd_count(), fds, "fds changed");
    assert_eq!(thread_count(), threads, "threads changed");
}

/// `config` with its serial output discarded.
fn quiet(config: VmConfig) -> VmConfig {
    VmConfig {
        serial: vmm::SerialConfig::None,
        ..config
    }
}

fn boot_once(config: &VmConfig) {
    let vm = vmm::build(&quiet(config.clone())).expect("build");
    let report = vm.start().expect("start").wait();
    assert_eq!(report.exit, VmExit::Status(0));
    assert!(
        report.timings.ready_us.is_some(),
        "hello never signalled ready"
    );
}

#[test]
fn two_hundred_boots_leave_fds_and_threads_as_they_were() {
    require_kvm!();
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let config = VmConfig {
        cmdline: "leak check".into(),
        ..VmConfig::new(guest("hello"))
    };
    // The first VM opens /dev/kvm and caches CPUID for the whole process; count after it.
    boot_once(&config);
    let (fds, threads) = (fd_count(), thread_count());
    for _ in 0..200 {
        boot_once(&config);
    }
    assert_eq!(fd_count(), fds, "fd count changed after 200 boots");
    assert_eq!(
        thread_count(),
        threads,
        "thread count changed after 200 boots"
    );
}

#[test]
fn a_killed_vm_is_freed_too() {
    require_kvm!();
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let config = VmConfig::new(guest("spin"));
    boot_once(&VmConfig::new(guest("hello")));
    let (fds, threads) = (fd_count(), thread_count());
    for _ in 0..20 {
        let vm = vmm::build(&quiet(config.clone())).expect("build");
        let handle = vm.start().expect("start");
        let killer = handle.killer();
        while handle.ready_at().is_none() {
            std::thread::yield_now();
        }
        killer.kill();
        assert_eq!(handle.wait().exit, VmExit::Killed);
    }
    settled(fds, threads);
}

#[test]
fn unstarted_and_failed_builds_leave_nothing_behind() {
    require_kvm!();
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    boot_once(&VmConfig::new(guest("hello")));
    let (fds, threads) = (fd_count(), thread_count());
    let dir = common::TempDir::new("lifecycle");
    let junk = dir.file("junk.elf", b"\x7fELF but not really");
    for _ in 0..20 {
        // Built (vCPU threads waiting) and dropped without a start.
        drop(vmm::build(&quiet(VmConfig::new(guest("hello")))).expect("build"));
        // A build that fails after its vCPU threads were started.
        assert!(vmm::build(&quiet(VmConfig::new(&junk))).is_err());
    }
    settled(fds, threads);
}
