//! `dust-aot`: the Rust half of an ahead-of-time wasm guest. Built as a static archive
//! (`libdust_aot.a`); the host links it with one module's code (wasm2c output compiled by
//! clang together with `c/runtime.c`) into a guest image for that module (docs/wasm.md,
//! "Ahead-of-time engine").
//!
//! It serves HTTP on vsock port 80 like `dust-wasm` and answers alike, byte for byte: the
//! WAGI/WASI layer is the shared `dust-wasi` crate. Before it signals ready the guest
//! instantiates the module once (data segments copied, memory allocated), so a snapshot
//! template holds a fresh instance and each VM runs the handler on it once. There is no
//! fuel: a runaway handler ends at the request deadline. Traps and `proc_exit` long-jump
//! back to the C runtime's protected call (`dust_aot_call`).
//!
//! Command line: `env.NAME=value` (extra environment variables), `vm=<id>` (fallback VM
//! id); `fuel=`, `warmup=` and `verbose=` are the interpreter's and are ignored.
#![no_std]

extern crate alloc;

mod ffi;
mod imports;

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

use dust_guest::http::{self, Request, Response};
use dust_wasi::{End, failure};

dust_guest::entry!(main);

/// vsock port.
const PORT: u32 = 80;
/// Heap kept for the runtime and the request (body, stdout, response) beyond wasm memory,
/// which is reserved whole when the module is instantiated (`c/runtime.c`).
const OVERHEAD: u64 = dust_abi::wasm::OVERHEAD_MIB << 20;

/// Why the guest cannot serve.
enum Error {
    /// The module's initialisation trapped.
    Init(&'static str),
    /// The vsock device failed.
    Vsock(dust_guest::vsock::Error),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Init(e) => write!(f, "dust-aot: initialising the module: {e}"),
            Self::Vsock(e) => write!(f, "dust-aot: vsock: {e}"),
        }
    }
}

/// What the wasm code knows as its WASI instance (`struct
/// Z_wasi_snapshot_preview1_instance_t`, opaque to C): the module instance whose memory
/// the imports use, the run's context and the `proc_exit` status.
pub struct Wasi {
    instance: *mut u8,
    ctx: dust_wasi::Ctx,
    exit: i32,
}

/// A module instance and its WASI side, owned for the VM's life (never freed: the VM
/// ends after its request).
struct Instance(*mut Wasi);

/// Allocates and instantiates the module (data and element segments, memory).
fn instantiate() -> Result<Instance, &'static str> {
    let instance = ffi::alloc_instance().ok_or("no memory for the instance")?;
    let wasi = Box::into_raw(Box::new(Wasi {
        instance,
        ctx: dust_wasi::Ctx::default(),
        exit: 0,
    }));
    match ffi::call(ffi::Step::Instantiate, instance, wasi) {
        ffi::Ended::Returned => Ok(Instance(wasi)),
        ffi::Ended::Exited => Err("proc_exit while instantiating"),
        ffi::Ended::Trap(why) => Err(why),
    }
}

/// Runs the handler once for `req` on `prepared` (or a new instance).
fn handle(req: &Request, prepared: Option<Instance>, extra: &[(&str, &str)]) -> Response {
    let mut id = [0u8; dust_abi::vminfo::ID_MAX];
    let vm = dust_wasi::vm_id(&mut id);
    let ctx = dust_wasi::context(req, vm, extra, false);
    let Instance(wasi) = match prepared.map_or_else(instantiate, Ok) {
        Ok(i) => i,
        Err(e) => {
            ctx.log(&format!("instantiating the module: {e}"));
            return failure(502, "the handler could not be instantiated");
        }
    };
    // SAFETY: `wasi` came from Box::into_raw and is never freed; no other reference to it
    // lives while this one does (the C side only holds the pointer during `ffi::call`).
    let instance = unsafe {
        (*wasi).ctx = ctx;
        (*wasi).instance
    };
    let ended = ffi::call(ffi::Step::Start, instance, wasi);
    // SAFETY: as above; the wasm code has returned, so nothing else uses `wasi`.
    let w = unsafe { &mut *wasi };
    let end = match ended {
        ffi::Ended::Returned => End::Returned,
        ffi::Ended::Exited => End::Exit(w.exit),
        ffi::Ended::Trap(why) => End::Trap(&Reason(why)),
    };
    dust_wasi::respond(&mut w.ctx, end)
}

/// A trap's description, as wasm2c's runtime names it.
struct Reason(&'static str);

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

unsafe extern "C" {
    /// First page after the image (`.bss` included), from the linker script.
    static __image_end: u8;
}

/// Bytes of wasm memory an instance may have: the heap less [`OVERHEAD`].
fn memory_limit() -> u64 {
    let image_end = &raw const __image_end as u64;
    dust_guest::boot::heap_span(image_end, dust_guest::boot::ram(), None)
        .map_or(0, |span| span.size.saturating_sub(OVERHEAD))
}

fn main() -> Result<(), Error> {
    ffi::set_memory_limit(memory_limit());
    match ffi::call(
        ffi::Step::Init,
        core::ptr::null_mut(),
        core::ptr::null_mut(),
    ) {
        ffi::Ended::Returned => {}
        ffi::Ended::Exited => return Err(Error::Init("proc_exit")),
        ffi::Ended::Trap(why) => return Err(Error::Init(why)),
    }
    let extra: Vec<(&str, &str)> = dust_guest::params()
        .filter_map(|(k, v)| Some((k.strip_prefix(dust_abi::wasm::cmdline::ENV_PREFIX)?, v)))
        .collect();
    // As in the interpreter, a module that cannot be instantiated fails the VM.
    let mut prepared = Some(instantiate().map_err(Error::Init)?);
    http::serve(PORT, |req| handle(req, prepared.take(), &extra)).map_err(Error::Vsock)
}
