//! `dust-component`: serves HTTP on vsock port 80 and runs a `wasi:http/proxy` component
//! (the VM's initrd) for each request, in wasmi: it plans the component (the same code the
//! host checked it with), compiles its core modules and replays the plan; each request
//! calls `wasi:http/incoming-handler.handle` on an instance no request used before, which
//! is freed only after the answer went out.
//!
//! `warmup=1` (snapshot templates): the core modules are translated whole (up to 512 KiB
//! of component; lazily otherwise) and, as in `dust-wasm`, a `GET /` is answered on a
//! throwaway instance before the snapshot;
//! `fuel=N` per request (out of fuel answers 504); a trap, an exit or a handler that sets
//! no response answers 502, with the reason in the serial log prefixed with the VM id.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use dust_abi::wasm::{DEFAULT_FUEL, cmdline as key};
use dust_component::engine::{Component, Ctx, Error as RunError, Instantiated};
use dust_guest::http::{self, Request, Response};
use wasmi::{CompilationMode, Config, Engine, Store, StoreLimitsBuilder, TrapCode};

dust_guest::entry!(main);

/// vsock port.
const PORT: u32 = 80;
/// The largest component translated whole before the snapshot (about 30 KB a second
/// here: an 87 KB component adds ~3 s to the template's start, which has 120 s; the
/// translated code of a much bigger one would also crowd [`OVERHEAD`]).
const EAGER_MAX: usize = 512 << 10;
/// Extra fuel of the warm-up run per byte of component, for translating functions.
const WARMUP_FUEL_PER_BYTE: u64 = 8;
/// Guest memory kept for the runtime, the compiled code and the request.
const OVERHEAD: u64 = dust_abi::wasm::OVERHEAD_MIB << 20;
/// Request headers that belong to one connection, not to the handler (as `wasmtime serve`).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why the guest cannot serve.
enum Error {
    NoComponent,
    Plan(dust_component_plan::PlanError),
    Run(RunError),
    Vsock(dust_guest::vsock::Error),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoComponent => f.write_str("dust-component: no component (no initrd)"),
            Self::Plan(e) => write!(f, "dust-component: {e:?}"),
            Self::Run(e) => write!(f, "dust-component: {e}"),
            Self::Vsock(e) => write!(f, "dust-component: vsock: {e}"),
        }
    }
}

struct Runner {
    engine: Engine,
    component: Component,
    fuel: u64,
    memory_limit: usize,
}

impl Runner {
    fn instantiate(&self) -> Result<Instantiated, RunError> {
        let ctx = Ctx {
            host: None,
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory_limit)
                .build(),
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|ctx| &mut ctx.limits);
        store.set_fuel(self.fuel).map_err(RunError::Wasm)?;
        self.component.instantiate(store)
    }

    /// Answers `req` on `ready` (or a new instance); returns the answer and the instance
    /// it used, for the caller to drop once the answer is out.
    fn handle(
        &self,
        req: &Request,
        ready: Option<Instantiated>,
        quiet: bool,
        fuel: u64,
    ) -> (Response, Option<Instantiated>) {
        let mut id = [0u8; dust_abi::vminfo::ID_MAX];
        let vm = match dust_guest::vminfo::id(&mut id) {
            "" => dust_guest::arg_value("vm").unwrap_or("(unnamed)"),
            id => id,
        };
        let log = |what: &str| {
            if !quiet {
                dust_guest::println!("[{vm}] {what}");
            }
        };
        let mut ready = match ready.map_or_else(|| self.instantiate(), Ok) {
            Ok(r) => r,
            Err(e) => {
                log(&format!("instantiating the component: {e}"));
                return (failure(502, "the handler could not be instantiated"), None);
            }
        };
        if ready.store.set_fuel(fuel).is_err() {
            return (failure(502, "the handler could not be run"), Some(ready));
        }
        let mut seed = [0u8; 8];
        dust_guest::vminfo::random_bytes(&mut seed);
        let now = dust_guest::vminfo::unix_time_ns();
        let (result, output) = ready.serve(request(req), u64::from_le_bytes(seed), now);
        if dust_guest::arg_value(key::VERBOSE) == Some("1") {
            let left = ready.store.get_fuel().unwrap_or(0);
            log(&format!(
                "fuel used: {} of {fuel}",
                fuel.saturating_sub(left)
            ));
        }
        for line in output.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            log(core::str::from_utf8(line).unwrap_or("(not UTF-8)"));
        }
        let answer = match result {
            Ok(r) => response(r),
            Err(RunError::Wasm(e)) if e.as_trap_code() == Some(TrapCode::OutOfFuel) => {
                log(&format!("handler ran out of fuel ({fuel} units)"));
                failure(504, "the handler ran out of fuel")
            }
            Err(e) => {
                log(&format!("handler failed: {e}"));
                failure(502, "the handler failed")
            }
        };
        (answer, Some(ready))
    }
}

/// The request as `wasmtime serve` gives it to a handler.
fn request(req: &Request) -> dust_component::Request {
    let headers: Vec<(String, Vec<u8>)> = req
        .headers()
        .filter(|(n, _)| !HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h)))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
        .collect();
    let authority = req
        .header("host")
        .and_then(|h| core::str::from_utf8(h).ok())
        .unwrap_or("localhost");
    dust_component::Request {
        method: req.method().into(),
        path_with_query: req.target().into(),
        scheme: "http".into(),
        authority: authority.into(),
        headers,
        body: req.body().to_vec(),
    }
}

fn response(r: dust_component::Response) -> Response {
    let mut out = Response::new(r.status).body(r.body);
    for (name, value) in r.headers {
        let framing = ["content-length", "transfer-encoding", "connection"];
        if !framing.contains(&name.as_str()) {
            out = out.header(name, String::from_utf8_lossy(&value).into_owned());
        }
    }
    out
}

fn failure(status: u16, why: &str) -> Response {
    Response::text(
        status,
        format!("dust: {why} (details in the service log)\n"),
    )
}

/// How wasmi translates the core modules: for a snapshot template (`warmup`) every
/// function before the snapshot, so that no request pays for translating a function the
/// warm-up did not call (translating one costs as much as a small handler here); lazily
/// otherwise, or for a component over [`EAGER_MAX`].
fn compilation(warmup: bool, len: usize) -> CompilationMode {
    if warmup && len <= EAGER_MAX {
        CompilationMode::Eager
    } else {
        CompilationMode::Lazy
    }
}

/// Bytes of wasm memory an instance may have: RAM less the component and [`OVERHEAD`].
fn memory_limit(len: u64) -> usize {
    let ram: u64 = dust_guest::boot::ram()
        .map(|r| {
            r.end()
                .min(dust_abi::layout::MMIO_HOLE_START)
                .saturating_sub(r.addr)
        })
        .sum();
    ram.saturating_sub(len).saturating_sub(OVERHEAD) as usize
}

fn main() -> Result<(), Error> {
    let rd = dust_guest::boot::initrd().ok_or(Error::NoComponent)?;
    // SAFETY: the VMM loaded the initrd at this identity-mapped guest-physical range before
    // the guest started; the heap stops below it and nothing writes it.
    let bytes: &'static [u8] =
        unsafe { core::slice::from_raw_parts(rd.addr as *const u8, rd.size as usize) };
    let plan = dust_component_plan::plan(bytes).map_err(Error::Plan)?;
    let fuel = dust_guest::arg_value(key::FUEL)
        .and_then(|f| f.parse().ok())
        .unwrap_or(DEFAULT_FUEL);
    let warmup = dust_guest::arg_value(key::WARMUP) == Some("1");
    let mut config = Config::default();
    config
        .consume_fuel(true)
        .compilation_mode(compilation(warmup, bytes.len()));
    let engine = Engine::new(&config);
    let component = Component::new(&engine, bytes, plan).map_err(Error::Run)?;
    let runner = Runner {
        engine,
        component,
        fuel,
        memory_limit: memory_limit(rd.size),
    };
    // Whatever it answers, the functions it called are now translated.
    if dust_guest::arg_value(key::WARMUP) == Some("1")
        && let Ok(req) = Request::from_head(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    {
        let fuel = fuel.saturating_add(WARMUP_FUEL_PER_BYTE.saturating_mul(rd.size));
        drop(runner.handle(&req, None, true, fuel));
    }
    let mut ready = Some(runner.instantiate().map_err(Error::Run)?);
    let mut spent = None;
    http::serve(PORT, |req| {
        // The instance the last request used goes only now, after its answer was sent:
        // freeing a store (thousands of blocks on a long free list) costs more than
        // running the handler, and a VM usually serves one request.
        drop(spent.take());
        let (answer, used) = runner.handle(req, ready.take(), false, runner.fuel);
        spent = used;
        answer
    })
    .map_err(Error::Vsock)
}
