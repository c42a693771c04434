//! What happens when a filtered thread makes a forbidden syscall: the filter answers
//! `SECCOMP_RET_TRAP`, the kernel sends SIGSYS to that thread, and this handler reports
//! the syscall and ends the process with SIGSYS.
//!
//! Async-signal-safe only: no allocation, no lock; a fixed buffer and `write(2)`.

use std::cell::Cell;

use libc::{c_int, c_void, siginfo_t};

/// Syscall names by number, one a line (from the kernel's `asm/unistd_64.h`).
use super::NAMES;

thread_local! {
    /// The calling thread's filter, for the report.
    static KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// Remember which filter this thread runs under (for the report).
pub(super) fn set_kind(kind: &'static str) {
    KIND.with(|k| k.set(kind));
}

/// Install the SIGSYS handler for the whole process.
pub(super) fn install() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" value to fill in.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    // No SA_NODEFER: SIGSYS stays blocked while the handler runs, which the exit path
    // below relies on.
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa` is a valid sigaction; the old action is not wanted.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A tiny no-alloc writer into a fixed buffer.
struct Buf {
    bytes: [u8; 256],
    len: usize,
}

impl Buf {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn number(&mut self, v: u64) {
        self.push(dust_abi::decimal(v, &mut [0; 20]));
    }

    fn write_to(&self, fd: c_int) {
        // SAFETY: writes `len` initialised bytes of our buffer; the result does not matter.
        unsafe { libc::write(fd, self.bytes.as_ptr().cast(), self.len) };
    }
}

/// "socket (41) on the events thread".
fn describe(buf: &mut Buf, nr: i32) {
    let name = usize::try_from(nr)
        .ok()
        .and_then(|n| NAMES.lines().nth(n))
        .unwrap_or("?");
    buf.push(b"forbidden syscall ");
    buf.push(name.as_bytes());
    buf.push(b" (");
    buf.number(u64::from(nr.unsigned_abs()));
    buf.push(b") on the ");
    buf.push(KIND.with(Cell::get).as_bytes());
    buf.push(b" thread");
}

extern "C" fn on_sigsys(_sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    // SAFETY: for SIGSYS the kernel fills the `_sigsys` member of siginfo's union, whose
    // `int _syscall` sits at byte offset 24 on x86_64 (after signo, errno, code, padding
    // and the 8-byte call address). `info` points at a live siginfo for this call.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() };
    let mut line = Buf {
        bytes: [0; 256],
        len: 0,
    };
    line.push(b"dust worker: seccomp: ");
    describe(&mut line, nr);
    line.push(b"\n");
    line.write_to(2);
    let mut event = Buf {
        bytes: [0; 256],
        len: 0,
    };
    event.push(br#"{"event":"error","message":"seccomp: "#);
    describe(&mut event, nr);
    event.push(b"\"}\n");
    event.write_to(crate::CONTROL_FD);
    // SAFETY: `ctx` is the ucontext the kernel passed to this SA_SIGINFO handler; the
    // registers hold the trapped call's arguments.
    let regs = unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    let arg = |r: c_int| regs[r as usize];
    // The same call with the same arguments traps again; with SIGSYS blocked (we are in
    // its handler) the kernel resets it to its default action and the process dies of
    // SIGSYS, which is what the summoner sees.
    // SAFETY: the filter stops this call before the kernel runs it.
    unsafe {
        libc::syscall(
            libc::c_long::from(nr),
            arg(libc::REG_RDI),
            arg(libc::REG_RSI),
            arg(libc::REG_RDX),
            arg(libc::REG_R10),
            arg(libc::REG_R8),
            arg(libc::REG_R9),
        );
        libc::_exit(128 + libc::SIGSYS);
    }
}
