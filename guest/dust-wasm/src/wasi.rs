//! The WASI imports of `dust_wasi::wasi` bound to wasmi's linker: each closure finds the
//! instance's exported `memory` and calls the shared function; `proc_exit` ends the run
//! with wasmi's exit error.

use dust_wasi::wasi::{self as w, EFAULT};
use wasmi::{AsContextMut, Caller, Error, Extern, Linker, StoreLimits};

/// What a store holds: the run's WASI context and the instance's limits.
#[derive(Default)]
pub struct Host {
    /// The shared WASI context.
    pub wasi: dust_wasi::Ctx,
    /// Memory and table limits of the instance.
    pub limits: StoreLimits,
}

/// Runs `f` on the instance's memory and the WASI context, or answers EFAULT when the
/// module exports no `memory`.
fn with_mem(
    c: &mut Caller<'_, Host>,
    f: impl FnOnce(&mut [u8], &mut dust_wasi::Ctx) -> i32,
) -> i32 {
    let mem = match c.get_export("memory") {
        Some(Extern::Memory(m)) => m,
        _ => return EFAULT,
    };
    let (mem, host) = mem.data_and_store_mut(c.as_context_mut());
    f(mem, &mut host.wasi)
}

/// Adds every import the host allows (`summoner::wasm::IMPORTS`) to `linker`.
pub fn define(linker: &mut Linker<Host>) -> Result<(), Error> {
    define_args(linker)?;
    define_fds(linker)?;
    define_process(linker)
}

/// The command line and environment: `args_*`, `environ_*`.
fn define_args(linker: &mut Linker<Host>) -> Result<(), Error> {
    let m = w::MODULE;
    linker.func_wrap(
        m,
        "args_sizes_get",
        |mut c: Caller<'_, Host>, a: i32, b: i32| {
            with_mem(&mut c, |mem, ctx| ctx.args_sizes_get(mem, a, b))
        },
    )?;
    linker.func_wrap(m, "args_get", |mut c: Caller<'_, Host>, a: i32, b: i32| {
        with_mem(&mut c, |mem, ctx| ctx.args_get(mem, a, b))
    })?;
    linker.func_wrap(
        m,
        "environ_sizes_get",
        |mut c: Caller<'_, Host>, a: i32, b: i32| {
            with_mem(&mut c, |mem, ctx| ctx.environ_sizes_get(mem, a, b))
        },
    )?;
    linker.func_wrap(
        m,
        "environ_get",
        |mut c: Caller<'_, Host>, a: i32, b: i32| {
            with_mem(&mut c, |mem, ctx| ctx.environ_get(mem, a, b))
        },
    )?;
    Ok(())
}

/// The file descriptors: stdin, stdout and stderr, and no preopened directories.
fn define_fds(linker: &mut Linker<Host>) -> Result<(), Error> {
    let m = w::MODULE;
    linker.func_wrap(
        m,
        "fd_read",
        |mut c: Caller<'_, Host>, fd: i32, iovs: i32, n: i32, out: i32| {
            with_mem(&mut c, |mem, ctx| ctx.fd_read(mem, fd, iovs, n, out))
        },
    )?;
    linker.func_wrap(
        m,
        "fd_write",
        |mut c: Caller<'_, Host>, fd: i32, iovs: i32, n: i32, out: i32| {
            with_mem(&mut c, |mem, ctx| ctx.fd_write(mem, fd, iovs, n, out))
        },
    )?;
    linker.func_wrap(m, "fd_close", w::fd_close)?;
    linker.func_wrap(
        m,
        "fd_fdstat_get",
        |mut c: Caller<'_, Host>, fd: i32, out: i32| {
            with_mem(&mut c, |mem, _| w::fd_fdstat_get(mem, fd, out))
        },
    )?;
    linker.func_wrap(
        m,
        "fd_seek",
        |fd: i32, _off: i64, _whence: i32, _out: i32| w::fd_seek(fd),
    )?;
    linker.func_wrap(m, "fd_prestat_get", |_fd: i32, _out: i32| w::fd_prestat())?;
    linker.func_wrap(m, "fd_prestat_dir_name", |_fd: i32, _p: i32, _n: i32| {
        w::fd_prestat()
    })?;
    Ok(())
}

/// Clock, randomness, exit, yield and poll.
fn define_process(linker: &mut Linker<Host>) -> Result<(), Error> {
    let m = w::MODULE;
    linker.func_wrap(
        m,
        "clock_time_get",
        |mut c: Caller<'_, Host>, id: i32, _prec: i64, out: i32| {
            with_mem(&mut c, |mem, ctx| ctx.clock_time_get(mem, id, out))
        },
    )?;
    linker.func_wrap(
        m,
        "random_get",
        |mut c: Caller<'_, Host>, buf: i32, len: i32| {
            with_mem(&mut c, |mem, _| w::random_get(mem, buf, len))
        },
    )?;
    linker.func_wrap(m, "proc_exit", |status: i32| -> Result<(), Error> {
        Err(Error::i32_exit(status))
    })?;
    linker.func_wrap(m, "sched_yield", w::sched_yield)?;
    linker.func_wrap(
        m,
        "poll_oneoff",
        |mut c: Caller<'_, Host>, s: i32, e: i32, n: i32, out: i32| {
            with_mem(&mut c, |mem, ctx| ctx.poll_oneoff(mem, s, e, n, out))
        },
    )?;
    Ok(())
}
