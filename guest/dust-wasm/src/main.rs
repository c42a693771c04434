//! `dust-wasm`: serves HTTP on vsock port 80 and runs a `wasm32-wasip1` module for each
//! request with the WAGI convention (see `cgi`), in wasmi. The module is the VM's initrd.
//!
//! Before it signals ready, the guest compiles the module and instantiates it. With
//! `warmup=1` on the command line (snapshot services: the template VM) it translates every
//! function of a module up to 512 KiB before the snapshot (otherwise functions are
//! translated on their first call, which costs a request as much as a small handler) and
//! first runs the handler once on a throwaway instance for a `GET /`, then instantiates
//! the instance the request will use. Each VM serves one request on an instance no
//! request used before.
//!
//! Command line: `fuel=N` (wasm fuel per request; out of fuel answers 504), `warmup=1`,
//! `env.NAME=value` (extra environment variables), `verbose=1` (log the fuel each request
//! used), `vm=<id>` (fallback VM id).
//! A trap answers 502; the trap goes to the serial log, prefixed with the VM id.
#![no_std]
#![no_main]

extern crate alloc;

mod wasi;

use alloc::format;
use alloc::vec::Vec;

use dust_guest::http::{self, Request, Response};
use dust_wasi::{End, failure};
use wasmi::TrapCode;
use wasmi::{CompilationMode, Config, Engine, Instance, Linker, Module, Store, StoreLimitsBuilder};

dust_guest::entry!(main);

/// vsock port.
const PORT: u32 = 80;
use dust_abi::wasm::{DEFAULT_FUEL, cmdline as key};
/// The largest module translated whole before the snapshot (about 30 KB a second here:
/// a 100 KB module adds ~3 s to the template's start, which has 120 s).
const EAGER_MAX: usize = 512 << 10;
/// Extra fuel of the warm-up run per byte of module, for translating functions when it is
/// lazy (the C example's first run uses ~180 k more fuel than its later ones, for a 39 KB
/// module).
const WARMUP_FUEL_PER_BYTE: u64 = 8;
/// Guest memory kept for the runtime, the compiled code and the request, beyond the
/// module itself (the host's module check uses the same number).
const OVERHEAD: u64 = dust_abi::wasm::OVERHEAD_MIB << 20;

/// Why the guest cannot serve.
enum Error {
    /// No initrd.
    NoModule,
    /// wasmi refused the module or an instance.
    Wasm(wasmi::Error),
    /// The vsock device failed.
    Vsock(dust_guest::vsock::Error),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoModule => f.write_str("dust-wasm: no module (the VM has no initrd)"),
            Self::Wasm(e) => write!(f, "dust-wasm: {e}"),
            Self::Vsock(e) => write!(f, "dust-wasm: vsock: {e}"),
        }
    }
}

impl From<wasmi::Error> for Error {
    fn from(e: wasmi::Error) -> Self {
        Self::Wasm(e)
    }
}

struct Runner {
    engine: Engine,
    module: Module,
    linker: Linker<wasi::Host>,
    fuel: u64,
    memory_limit: usize,
    extra_env: Vec<(&'static str, &'static str)>,
    /// Log the fuel each run used (`verbose=1`).
    verbose: bool,
}

type Prepared = (Store<wasi::Host>, Instance);

impl Runner {
    fn instantiate(&self) -> Result<Prepared, wasmi::Error> {
        let ctx = wasi::Host {
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory_limit)
                .instances(1)
                .build(),
            ..Default::default()
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|ctx| &mut ctx.limits);
        store.set_fuel(self.fuel)?;
        let instance = self
            .linker
            .instantiate_and_start(&mut store, &self.module)?;
        Ok((store, instance))
    }

    /// Runs the handler on `prepared` (or a new instance) for `req`.
    fn handle(
        &self,
        req: &Request,
        prepared: Option<Prepared>,
        quiet: bool,
        fuel: u64,
    ) -> Response {
        let mut id = [0u8; dust_abi::vminfo::ID_MAX];
        let vm = dust_wasi::vm_id(&mut id);
        let ctx = dust_wasi::context(req, vm, &self.extra_env, quiet);
        let prepared = match prepared.map_or_else(|| self.instantiate(), Ok) {
            Ok(p) => p,
            Err(e) => {
                ctx.log(&format!("instantiating the module: {e}"));
                return failure(502, "the handler could not be instantiated");
            }
        };
        let (mut store, instance) = prepared;
        if let Err(e) = store.set_fuel(fuel) {
            ctx.log(&format!("setting fuel: {e}"));
            return failure(502, "the handler could not be run");
        }
        let start = match instance.get_typed_func::<(), ()>(&store, "_start") {
            Ok(f) => f,
            Err(e) => {
                ctx.log(&format!("no _start: {e}"));
                return failure(502, "the handler has no _start");
            }
        };
        store.data_mut().wasi = ctx;
        let result = start.call(&mut store, ());
        let ctx = &mut store.data_mut().wasi;
        ctx.flush_stderr();
        if self.verbose {
            let left = store.get_fuel().unwrap_or(0);
            store
                .data()
                .wasi
                .log(&format!("fuel used: {} of {fuel}", fuel - left));
        }
        let end = match &result {
            Ok(()) => End::Returned,
            Err(e) => match (e.i32_exit_status(), e.as_trap_code()) {
                (Some(status), _) => End::Exit(status),
                (None, Some(TrapCode::OutOfFuel)) => End::OutOfFuel(fuel),
                (None, _) => End::Trap(e),
            },
        };
        dust_wasi::respond(&mut store.data_mut().wasi, end)
    }
}

/// How wasmi translates the module: for a snapshot template (`warmup`) every function
/// before the snapshot, so that no request pays for translating a function the warm-up
/// did not call; lazily otherwise, or for a module over [`EAGER_MAX`].
fn compilation(warmup: bool, len: usize) -> CompilationMode {
    if warmup && len <= EAGER_MAX {
        CompilationMode::Eager
    } else {
        CompilationMode::Lazy
    }
}

/// Bytes of wasm memory an instance may have: RAM less the module and [`OVERHEAD`].
fn memory_limit(module_len: u64) -> usize {
    let ram: u64 = dust_guest::boot::ram()
        .map(|r| {
            r.end()
                .min(dust_abi::layout::MMIO_HOLE_START)
                .saturating_sub(r.addr)
        })
        .sum();
    ram.saturating_sub(module_len).saturating_sub(OVERHEAD) as usize
}

fn main() -> Result<(), Error> {
    let rd = dust_guest::boot::initrd().ok_or(Error::NoModule)?;
    // SAFETY: the VMM loaded the initrd at this identity-mapped guest-physical range before
    // the guest started; the heap stops below it and nothing writes it.
    let wasm: &'static [u8] =
        unsafe { core::slice::from_raw_parts(rd.addr as *const u8, rd.size as usize) };
    let fuel = dust_guest::arg_value(key::FUEL)
        .and_then(|f| f.parse().ok())
        .unwrap_or(DEFAULT_FUEL);
    let warmup = dust_guest::arg_value(key::WARMUP) == Some("1");
    let mut config = Config::default();
    config
        .consume_fuel(true)
        .compilation_mode(compilation(warmup, wasm.len()));
    let engine = Engine::new(&config);
    let module = Module::new(&engine, wasm)?;
    let mut linker = Linker::new(&engine);
    wasi::define(&mut linker)?;
    let runner = Runner {
        engine,
        module,
        linker,
        fuel,
        memory_limit: memory_limit(rd.size),
        extra_env: dust_guest::params()
            .filter_map(|(k, v)| Some((k.strip_prefix(key::ENV_PREFIX)?, v)))
            .collect(),
        verbose: dust_guest::arg_value(key::VERBOSE) == Some("1"),
    };
    if warmup {
        // Whatever it answers, the functions it called are now translated.
        if let Ok(req) = Request::from_head(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n") {
            // Translating a function costs fuel too (by its size): give the first run room
            // for translating what it calls, on top of what a request may use.
            let fuel = fuel.saturating_add(WARMUP_FUEL_PER_BYTE.saturating_mul(rd.size));
            let _ = runner.handle(&req, None, true, fuel);
        }
    }
    let mut prepared = Some(runner.instantiate()?);
    http::serve(PORT, |req| {
        runner.handle(req, prepared.take(), false, runner.fuel)
    })
    .map_err(Error::Vsock)
}
