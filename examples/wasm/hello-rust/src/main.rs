//! A dust WebAssembly handler (WAGI: the request in the environment and on stdin, the
//! response on stdout). Build: `cargo build --release --target wasm32-wasip1`.
//!
//! - `/missing`: 404 with a header of its own.
//! - `/log`: writes a line to stderr (the service's serial log).
//! - `/sqrt?2`: the square root of the first argument (floats work).
//! - `/trap`: panics (a wasm trap: 502). `/loop`: never ends (out of fuel: 504).
//! - anything else: echoes method, path, query, argv, body length and checksum, how many
//!   requests this instance has served (always 1: every request gets a fresh instance) and
//!   8 bytes from `random_get`.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

static REQUESTS: AtomicU32 = AtomicU32::new(0);

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    /// WASI's entropy source; dust gives every VM its own.
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

fn main() -> std::io::Result<()> {
    let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let (method, path, query) = (var("REQUEST_METHOD"), var("PATH_INFO"), var("QUERY_STRING"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let mut out = std::io::stdout().lock();
    match path.as_str() {
        "/missing" => {
            return write!(
                out,
                "Status: 404 Not Found\nContent-Type: text/plain\nX-Handler: hello-rust\n\nno such page: {path}\n"
            );
        }
        "/log" => eprintln!("hello-rust: logging for {method} {path}"),
        "/trap" => panic!("trap requested"),
        "/loop" => loop {
            std::hint::black_box(n);
        },
        "/sqrt" => {
            let x: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(2.0);
            return write!(out, "Content-Type: text/plain\n\nsqrt({x}) = {}\n", x.sqrt());
        }
        _ => {}
    }
    let mut random = [0u8; 8];
    // SAFETY: the buffer is valid for its length.
    let errno = unsafe { random_get(random.as_mut_ptr(), random.len()) };
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let sum = body.iter().fold(0u32, |s, &b| s.wrapping_mul(31).wrapping_add(u32::from(b)));
    write!(
        out,
        "Content-Type: text/plain\nX-Handler: hello-rust\n\n\
         hello from rust: method={method} path={path} query={query} args={} \
         body={} sum={sum} requests={n} random={hex} errno={errno} vm={}\n",
        args.join(","),
        body.len(),
        var("X_DUST_VM"),
    )
}
