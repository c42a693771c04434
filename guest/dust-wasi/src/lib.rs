//! `dust-wasi`: the WAGI/WASI layer of dust's wasm guests, one piece for both engines (the
//! wasmi interpreter in `dust-wasm` and the ahead-of-time images of `dust-aot`), so that
//! both answer byte for byte alike: the request as CGI environment, argv and stdin
//! ([`cgi`]), the WASI imports ([`wasi`]), and how the end of a run becomes the response
//! ([`respond`]).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cgi;
pub mod strings;
pub mod wasi;

use alloc::format;
use alloc::vec::Vec;

use dust_guest::http::{Request, Response};
pub use wasi::Ctx;

/// Bytes of stdout reserved before a run.
const STDOUT_START: usize = 4096;

/// How one run of the handler ended, as the engine saw it.
pub enum End<'a> {
    /// `_start` returned.
    Returned,
    /// `proc_exit(status)`.
    Exit(i32),
    /// A trap, as the engine describes it.
    Trap(&'a dyn core::fmt::Display),
    /// The fuel given ran out (the interpreter's limit).
    OutOfFuel(u64),
}

/// This VM's id (from its info page, else `vm=` on the command line).
pub fn vm_id(buf: &mut [u8; dust_abi::vminfo::ID_MAX]) -> &str {
    match dust_guest::vminfo::id(buf) {
        "" => dust_guest::arg_value("vm").unwrap_or("(unnamed)"),
        id => id,
    }
}

/// The context of one run for `req` in VM `vm`, plus `extra` environment variables (from
/// the command line); `quiet` drops stderr and the run's log lines (the warm-up).
pub fn context(req: &Request, vm: &str, extra: &[(&str, &str)], quiet: bool) -> Ctx {
    let inv = cgi::invocation(req, vm, extra);
    Ctx {
        args: inv.args,
        env: inv.env,
        stdin: req.body().to_vec(),
        // Room for a typical response, so that writing it moves no bytes (each copy is
        // emulated step by step here).
        stdout: Vec::with_capacity(STDOUT_START),
        log_prefix: ["[", vm, "] "].concat(),
        quiet,
        ..Default::default()
    }
}

/// A response for a run that failed: `status`, and a line saying `why`.
pub fn failure(status: u16, why: &str) -> Response {
    Response::text(
        status,
        format!("dust: {why} (details in the service log)\n"),
    )
}

/// The response for a run that ended with `end`; why it failed goes to the log.
pub fn respond(ctx: &mut Ctx, end: End<'_>) -> Response {
    ctx.flush_stderr();
    let exit = match end {
        End::OutOfFuel(fuel) => {
            ctx.log(&format!("handler ran out of fuel ({fuel} units)"));
            return failure(504, "the handler ran out of fuel");
        }
        _ if ctx.stdout_overflow => {
            ctx.log(&format!(
                "handler wrote more than {} bytes to stdout",
                wasi::MAX_STDOUT
            ));
            return failure(502, "the handler's response is larger than 1 MiB");
        }
        End::Trap(e) => {
            ctx.log(&format!("handler trapped: {e}"));
            return failure(502, "the handler trapped");
        }
        End::Returned => 0,
        End::Exit(status) => status,
    };
    if exit != 0 {
        ctx.log(&format!("handler exited with status {exit}"));
        return failure(502, "the handler exited with an error");
    }
    match cgi::response(&ctx.stdout) {
        Ok(r) => r,
        Err(e) => {
            ctx.log(&format!("handler's response: {e}"));
            failure(502, "the handler's response is not a CGI response")
        }
    }
}
