//! A dust WebAssembly handler written as a `wasi:http/proxy` component (WASI 0.2), the kind
//! `wasmtime serve` and Spin run. Build: `cargo build --release --target wasm32-wasip2`.
//!
//! - `GET /?name=N`          -> `hello, N` and the method and path the handler saw
//! - `POST /echo`            -> the request body back
//! - `POST /size`            -> the body's length in bytes
//! - `GET /status?code=C`    -> status C with a header `x-handler: hello-component`
//! - `GET /counter`          -> a global counter, incremented per request
//! - `GET /random`           -> a wasi:random number
//! - `GET /trap`, `/loop`, `/silent` -> a trap, an endless loop, no response at all

use std::sync::atomic::{AtomicU64, Ordering};

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};

wasi::http::proxy::export!(Handler);

struct Handler;

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl wasi::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (route, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Post => "POST".to_string(),
            Method::Other(m) => m,
            other => format!("{other:?}").to_uppercase(),
        };
        let (status, body) = match route {
            "/echo" => (200, read_body(&request)),
            "/size" => (200, read_body(&request).len().to_string().into_bytes()),
            "/status" => (param(query, "code").parse().unwrap_or(500), b"status\n".to_vec()),
            "/counter" => {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
                (200, format!("counter {n}\n").into_bytes())
            }
            "/random" => {
                let r = wasi::random::random::get_random_u64();
                (200, format!("random {r:016x}\n").into_bytes())
            }
            "/trap" => panic!("the handler trapped on purpose"),
            "/loop" => loop {
                std::hint::black_box(COUNTER.load(Ordering::Relaxed));
            },
            "/silent" => return,
            _ => {
                let name = param(query, "name");
                let name = if name.is_empty() { "world" } else { name };
                (200, format!("hello, {name}\n{method} {path}\n").into_bytes())
            }
        };
        respond(out, status, &body);
    }
}

/// The value of `key` in a query string, or "".
fn param<'a>(query: &'a str, key: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map_or("", |(_, v)| v)
}

/// The whole request body.
fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let Ok(body) = request.consume() else { return Vec::new() };
    let mut bytes = Vec::new();
    if let Ok(stream) = body.stream() {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            bytes.extend_from_slice(&chunk);
        }
    }
    IncomingBody::finish(body);
    bytes
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
    let _ = headers.set("x-handler", &[b"hello-component".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        // blocking_write_and_flush takes at most 4096 bytes a call.
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
