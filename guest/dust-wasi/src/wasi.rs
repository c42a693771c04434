//! The WASI preview 1 imports a WAGI handler needs, and nothing else, for both engines:
//! arguments and environment, stdin (the request body), stdout (the CGI response,
//! buffered), stderr (lines to the serial log, prefixed with the VM id), the clock and
//! entropy of the VM's info page, `sched_yield` and clock-only `poll_oneoff` (`proc_exit`
//! is the engine's: it leaves the wasm code). There are no files: no preopens, `fd_seek`
//! is ESPIPE. Each function takes the instance's memory as a byte slice and returns the
//! wasip1 errno; the engines bind them (dust-wasm to wasmi's linker, dust-aot to the
//! `Z_wasi_snapshot_preview1Z_*` symbols wasm2c calls). The host checks modules against
//! the same list (`summoner/src/wasm`, `IMPORTS`): keep the two in step.

use alloc::vec::Vec;

/// The module every import comes from.
pub const MODULE: &str = dust_abi::wasm::WASI_MODULE;

/// Most bytes a handler may write to stdout.
pub const MAX_STDOUT: usize = 1024 * 1024;
/// Longest stderr line kept; the rest of a longer line is cut.
const MAX_LINE: usize = 1024;

// wasip1 errno values.
/// No error.
pub const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
/// A bad address (also: the module exports no `memory`).
pub const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSPC: i32 = 51;
const ENOTSUP: i32 = 58;
const ESPIPE: i32 = 70;

/// What one run of the handler sees and produces.
#[derive(Default)]
pub struct Ctx {
    /// argv, each without its NUL.
    pub args: Vec<Vec<u8>>,
    /// `NAME=value` entries.
    pub env: crate::strings::Strings,
    /// The request body.
    pub stdin: Vec<u8>,
    /// How much of it was read.
    pub stdin_pos: usize,
    /// What the handler wrote to stdout.
    pub stdout: Vec<u8>,
    /// The stderr line being written.
    pub stderr_line: Vec<u8>,
    /// Prefix of stderr lines in the serial log (`[vm-id] `).
    pub log_prefix: alloc::string::String,
    /// Drop stderr (the template's warm-up run).
    pub quiet: bool,
    /// The handler tried to write more than [`MAX_STDOUT`] to stdout.
    pub stdout_overflow: bool,
    /// Nanoseconds added to the clock on each read, so that it moves forward.
    pub clock_ticks: u64,
}

impl Ctx {
    /// Logs `what` on serial, prefixed with the VM id (unless quiet).
    pub fn log(&self, what: &str) {
        if !self.quiet {
            dust_guest::println!("{}{what}", self.log_prefix);
        }
    }

    /// Log what is left of a stderr line.
    pub fn flush_stderr(&mut self) {
        if !self.stderr_line.is_empty() {
            self.log_line();
        }
    }

    fn log_line(&mut self) {
        if !self.quiet {
            let line = core::str::from_utf8(&self.stderr_line).unwrap_or("(not UTF-8)");
            dust_guest::println!("{}{}", self.log_prefix, line);
        }
        self.stderr_line.clear();
    }

    fn stderr(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.log_line();
            } else if self.stderr_line.len() < MAX_LINE {
                self.stderr_line.push(b);
            }
        }
    }
}

fn range(mem: &[u8], ptr: i32, len: usize) -> Option<core::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len)?;
    (end <= mem.len()).then_some(start..end)
}

fn put(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let r = range(mem, ptr, bytes.len()).ok_or(EFAULT)?;
    mem[r].copy_from_slice(bytes);
    Ok(())
}

fn get_u32(mem: &[u8], ptr: usize) -> Result<u32, i32> {
    let bytes = mem
        .get(ptr..ptr.checked_add(4).ok_or(EFAULT)?)
        .ok_or(EFAULT)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(w))
}

fn get_u64(mem: &[u8], ptr: usize) -> Result<u64, i32> {
    let bytes = mem
        .get(ptr..ptr.checked_add(8).ok_or(EFAULT)?)
        .ok_or(EFAULT)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    Ok(u64::from_le_bytes(w))
}

fn errno(r: Result<(), i32>) -> i32 {
    r.err().unwrap_or(SUCCESS)
}

/// `args_sizes_get` / `environ_sizes_get`.
fn sizes(list: &[Vec<u8>]) -> (u32, u32) {
    let bytes: usize = list.iter().map(|s| s.len() + 1).sum();
    (list.len() as u32, bytes as u32)
}

/// `args_get` / `environ_get`: pointers at `ptrs`, NUL-terminated strings at `buf`.
fn strings(mem: &mut [u8], list: &[Vec<u8>], ptrs: i32, buf: i32) -> Result<(), i32> {
    let mut at = buf as u32;
    for (i, s) in list.iter().enumerate() {
        put(mem, ptrs.wrapping_add(4 * i as i32), &at.to_le_bytes())?;
        put(mem, at as i32, s)?;
        put(mem, at.wrapping_add(s.len() as u32) as i32, &[0])?;
        at = at.wrapping_add(s.len() as u32 + 1);
    }
    Ok(())
}

/// The `(ptr, len)` pairs of an iovec array.
fn iovecs(mem: &[u8], iovs: i32, n: i32) -> Result<Vec<(usize, usize)>, i32> {
    let base = iovs as u32 as usize;
    let mut out = Vec::new();
    for i in 0..n as u32 as usize {
        let at = base.checked_add(8 * i).ok_or(EFAULT)?;
        let (ptr, len) = (get_u32(mem, at)?, get_u32(mem, at + 4)?);
        let r = range(mem, ptr as i32, len as usize).ok_or(EFAULT)?;
        out.push((r.start, r.len()));
    }
    Ok(out)
}

fn fd_read(mem: &mut [u8], ctx: &mut Ctx, fd: i32, iovs: i32, n: i32, nread: i32) -> i32 {
    if fd != 0 {
        return EBADF;
    }
    errno((|| {
        let mut total = 0usize;
        for (ptr, len) in iovecs(mem, iovs, n)? {
            let rest = ctx.stdin.get(ctx.stdin_pos..).unwrap_or(&[]);
            let k = len.min(rest.len());
            mem[ptr..ptr + k].copy_from_slice(&rest[..k]);
            ctx.stdin_pos += k;
            total += k;
        }
        put(mem, nread, &(total as u32).to_le_bytes())
    })())
}

fn fd_write(mem: &mut [u8], ctx: &mut Ctx, fd: i32, iovs: i32, n: i32, nwritten: i32) -> i32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    errno((|| {
        let mut total = 0usize;
        for (ptr, len) in iovecs(mem, iovs, n)? {
            let bytes = &mem[ptr..ptr + len];
            if fd == 1 {
                if ctx.stdout.len() + len > MAX_STDOUT {
                    ctx.stdout_overflow = true;
                    return Err(ENOSPC);
                }
                ctx.stdout.extend_from_slice(bytes);
            } else {
                ctx.stderr(bytes);
            }
            total += len;
        }
        put(mem, nwritten, &(total as u32).to_le_bytes())
    })())
}

/// `fd_fdstat_get`: stdin readable, stdout and stderr writable, none of them seekable or
/// a terminal (filetype unknown, as for a pipe).
fn fdstat(mem: &mut [u8], fd: i32, out: i32) -> i32 {
    const RIGHT_FD_READ: u64 = 1 << 1;
    const RIGHT_FD_WRITE: u64 = 1 << 6;
    const RIGHT_POLL: u64 = 1 << 27;
    let rights = match fd {
        0 => RIGHT_FD_READ | RIGHT_POLL,
        1 | 2 => RIGHT_FD_WRITE | RIGHT_POLL,
        _ => return EBADF,
    };
    let mut stat = [0u8; 24];
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    errno(put(mem, out, &stat))
}

fn now(ctx: &mut Ctx) -> u64 {
    ctx.clock_ticks += 1;
    dust_guest::vminfo::unix_time_ns().saturating_add(ctx.clock_ticks)
}

/// `poll_oneoff` with clock subscriptions only: every clock subscription fires at once
/// (the clock moves by its timeout); fd subscriptions get ENOTSUP.
fn poll(mem: &mut [u8], ctx: &mut Ctx, subs: i32, events: i32, n: i32, nevents: i32) -> i32 {
    const SUB: usize = 48;
    const EVENT: usize = 32;
    errno((|| {
        if n <= 0 {
            return Err(EINVAL);
        }
        for i in 0..n as usize {
            let at = (subs as u32 as usize).checked_add(SUB * i).ok_or(EFAULT)?;
            let userdata = get_u64(mem, at)?;
            let tag = *mem.get(at + 8).ok_or(EFAULT)?;
            let mut event = [0u8; EVENT];
            event[0..8].copy_from_slice(&userdata.to_le_bytes());
            event[10] = tag;
            if tag == 0 {
                let timeout = get_u64(mem, at + 24)?;
                ctx.clock_ticks = ctx.clock_ticks.saturating_add(timeout.min(1 << 40));
            } else {
                event[8..10].copy_from_slice(&(ENOTSUP as u16).to_le_bytes());
            }
            let out = (events as u32 as usize)
                .checked_add(EVENT * i)
                .ok_or(EFAULT)?;
            put(mem, out as i32, &event)?;
        }
        put(mem, nevents, &(n as u32).to_le_bytes())
    })())
}

impl Ctx {
    /// `args_sizes_get`.
    pub fn args_sizes_get(&self, mem: &mut [u8], argc: i32, size: i32) -> i32 {
        let (n, bytes) = sizes(&self.args);
        errno(put(mem, argc, &n.to_le_bytes()).and_then(|()| put(mem, size, &bytes.to_le_bytes())))
    }

    /// `args_get`.
    pub fn args_get(&self, mem: &mut [u8], ptrs: i32, buf: i32) -> i32 {
        errno(strings(mem, &self.args, ptrs, buf))
    }

    /// `environ_sizes_get`.
    pub fn environ_sizes_get(&self, mem: &mut [u8], n: i32, size: i32) -> i32 {
        let (count, bytes) = (self.env.len() as u32, self.env.with_nuls().len() as u32);
        errno(put(mem, n, &count.to_le_bytes()).and_then(|()| put(mem, size, &bytes.to_le_bytes())))
    }

    /// `environ_get`.
    pub fn environ_get(&self, mem: &mut [u8], ptrs: i32, buf: i32) -> i32 {
        errno((|| {
            for (i, &start) in self.env.starts().iter().enumerate() {
                let at = (buf as u32).wrapping_add(start);
                put(mem, ptrs.wrapping_add(4 * i as i32), &at.to_le_bytes())?;
            }
            put(mem, buf, self.env.with_nuls())
        })())
    }

    /// `fd_read`: stdin only.
    pub fn fd_read(&mut self, mem: &mut [u8], fd: i32, iovs: i32, n: i32, out: i32) -> i32 {
        fd_read(mem, self, fd, iovs, n, out)
    }

    /// `fd_write`: stdout and stderr.
    pub fn fd_write(&mut self, mem: &mut [u8], fd: i32, iovs: i32, n: i32, out: i32) -> i32 {
        fd_write(mem, self, fd, iovs, n, out)
    }

    /// `clock_time_get`: every clock is the VM's wall clock, moving forward on each read.
    pub fn clock_time_get(&mut self, mem: &mut [u8], id: i32, out: i32) -> i32 {
        if !(0..4).contains(&id) {
            return EINVAL;
        }
        let t = now(self);
        errno(put(mem, out, &t.to_le_bytes()))
    }

    /// `poll_oneoff`.
    pub fn poll_oneoff(&mut self, mem: &mut [u8], s: i32, e: i32, n: i32, out: i32) -> i32 {
        poll(mem, self, s, e, n, out)
    }
}

/// `fd_fdstat_get`.
pub fn fd_fdstat_get(mem: &mut [u8], fd: i32, out: i32) -> i32 {
    fdstat(mem, fd, out)
}

/// `fd_close`: the three standard descriptors close, nothing else exists.
pub fn fd_close(fd: i32) -> i32 {
    if (0..3).contains(&fd) { SUCCESS } else { EBADF }
}

/// `fd_seek`: nothing is seekable.
pub fn fd_seek(fd: i32) -> i32 {
    if (0..3).contains(&fd) { ESPIPE } else { EBADF }
}

/// `fd_prestat_get` / `fd_prestat_dir_name`: no preopened directories.
pub fn fd_prestat() -> i32 {
    EBADF
}

/// `random_get`: fresh bytes of this VM (never of the snapshot).
pub fn random_get(mem: &mut [u8], buf: i32, len: i32) -> i32 {
    match range(mem, buf, len as u32 as usize) {
        Some(r) => {
            dust_guest::vminfo::random_bytes(&mut mem[r]);
            SUCCESS
        }
        None => EFAULT,
    }
}

/// `sched_yield`.
pub fn sched_yield() -> i32 {
    SUCCESS
}
