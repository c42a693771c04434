//! Test-only (cargo feature `test-hooks`, which only the integration tests turn on): make
//! a worker attempt a forbidden syscall, to prove the filter kills it. A service asks for
//! it by putting `dust.test.forbidden-syscall` in its guest command line; the worker then
//! opens an AF_INET socket on its main thread when told to start the VM, before the
//! vCPU runs.

use std::sync::atomic::{AtomicBool, Ordering};

/// The command-line word that arms the hook.
pub const ARM: &str = "dust.test.forbidden-syscall";

static ARMED: AtomicBool = AtomicBool::new(false);

/// Arm the hook if `cmdline` asks for it.
pub fn arm(cmdline: &str) {
    if cmdline.split_whitespace().any(|w| w == ARM) {
        ARMED.store(true, Ordering::SeqCst);
    }
}

/// If armed, attempt `socket(AF_INET, SOCK_STREAM)`, which no worker filter allows.
pub fn fire() {
    if ARMED.load(Ordering::SeqCst) {
        // SAFETY: a plain syscall with constant arguments; under the filter it never runs.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // Not filtered (the test will fail on the 200 it then gets): do not leak it.
            // SAFETY: `fd` was just returned to us and is closed once.
            unsafe { libc::close(fd) };
        }
    }
}
