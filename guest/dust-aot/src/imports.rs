//! The WASI imports under the names wasm2c gives them
//! (`Z_wasi_snapshot_preview1Z_<name>`, first argument the WASI instance), each one a call
//! into the shared `dust_wasi::wasi`. The host checks every import's signature against
//! wasip1 before compiling, so these C signatures are the ones the module uses.

use dust_wasi::wasi::{self as w, EFAULT};

use crate::{Wasi, ffi};

/// Runs `f` on the instance's memory and the run's context, or answers EFAULT when the
/// module exports no `memory`.
fn with_mem(wasi: *mut Wasi, f: impl FnOnce(&mut [u8], &mut dust_wasi::Ctx) -> i32) -> u32 {
    // SAFETY: `wasi` is the pointer the guest gave the instance (live for the VM's life);
    // the Rust side holds no reference to it while wasm code runs.
    let wasi = unsafe { &mut *wasi };
    match ffi::memory(wasi.instance) {
        Some(mem) => f(mem, &mut wasi.ctx) as u32,
        None => EFAULT as u32,
    }
}

/// Defines `Z_wasi_snapshot_preview1Z_$name(wasi, $arg: u32...) -> u32` as `$body`.
macro_rules! import {
    ($name:ident ($wasi:ident $(, $arg:ident: $t:ty)*) $body:expr) => {
        #[unsafe(no_mangle)]
        extern "C" fn $name($wasi: *mut Wasi $(, $arg: $t)*) -> u32 {
            $body
        }
    };
}

import!(Z_wasi_snapshot_preview1Z_args_sizes_get(wasi, a: u32, b: u32)
    with_mem(wasi, |m, c| c.args_sizes_get(m, a as i32, b as i32)));
import!(Z_wasi_snapshot_preview1Z_args_get(wasi, a: u32, b: u32)
    with_mem(wasi, |m, c| c.args_get(m, a as i32, b as i32)));
import!(Z_wasi_snapshot_preview1Z_environ_sizes_get(wasi, a: u32, b: u32)
    with_mem(wasi, |m, c| c.environ_sizes_get(m, a as i32, b as i32)));
import!(Z_wasi_snapshot_preview1Z_environ_get(wasi, a: u32, b: u32)
    with_mem(wasi, |m, c| c.environ_get(m, a as i32, b as i32)));
import!(Z_wasi_snapshot_preview1Z_fd_read(wasi, fd: u32, iovs: u32, n: u32, out: u32)
    with_mem(wasi, |m, c| c.fd_read(m, fd as i32, iovs as i32, n as i32, out as i32)));
import!(Z_wasi_snapshot_preview1Z_fd_write(wasi, fd: u32, iovs: u32, n: u32, out: u32)
    with_mem(wasi, |m, c| c.fd_write(m, fd as i32, iovs as i32, n as i32, out as i32)));
import!(Z_wasi_snapshot_preview1Z_fd_close(_wasi, fd: u32) w::fd_close(fd as i32) as u32);
import!(Z_wasi_snapshot_preview1Z_fd_fdstat_get(wasi, fd: u32, out: u32)
    with_mem(wasi, |m, _| w::fd_fdstat_get(m, fd as i32, out as i32)));
import!(Z_wasi_snapshot_preview1Z_fd_seek(_wasi, fd: u32, _off: u64, _whence: u32, _out: u32)
    w::fd_seek(fd as i32) as u32);
import!(Z_wasi_snapshot_preview1Z_fd_prestat_get(_wasi, _fd: u32, _out: u32)
    w::fd_prestat() as u32);
import!(Z_wasi_snapshot_preview1Z_fd_prestat_dir_name(_wasi, _fd: u32, _p: u32, _n: u32)
    w::fd_prestat() as u32);
import!(Z_wasi_snapshot_preview1Z_clock_time_get(wasi, id: u32, _prec: u64, out: u32)
    with_mem(wasi, |m, c| c.clock_time_get(m, id as i32, out as i32)));
import!(Z_wasi_snapshot_preview1Z_random_get(wasi, buf: u32, len: u32)
    with_mem(wasi, |m, _| w::random_get(m, buf as i32, len as i32)));
import!(Z_wasi_snapshot_preview1Z_sched_yield(_wasi) w::sched_yield() as u32);
import!(Z_wasi_snapshot_preview1Z_poll_oneoff(wasi, s: u32, e: u32, n: u32, out: u32)
    with_mem(wasi, |m, c| c.poll_oneoff(m, s as i32, e as i32, n as i32, out as i32)));

/// `proc_exit`: records the status and leaves the wasm code.
#[unsafe(no_mangle)]
extern "C" fn Z_wasi_snapshot_preview1Z_proc_exit(wasi: *mut Wasi, status: u32) -> ! {
    // SAFETY: as in `with_mem`; the reference ends before the jump.
    unsafe { (*wasi).exit = status as i32 };
    // SAFETY: only reached from wasm code, inside a protected call; no Rust frame with a
    // destructor lies between here and it (this function holds none).
    unsafe { ffi::dust_aot_exit() }
}
