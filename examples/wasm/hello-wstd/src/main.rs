//! A dust WebAssembly handler written with `wstd` (async Rust on WASI 0.2), a
//! `wasi:http/proxy` component. Build: `cargo build --release --target wasm32-wasip2`.
//!
//! - `GET /?name=N`       -> `hello from wstd, N` and the method and path the handler saw
//! - `POST /echo`         -> the request body back
//! - `POST /size`         -> the body's length in bytes
//! - `GET /status?code=C` -> status C with a header `x-handler: hello-wstd`

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let route = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let mut body = request.into_body();
    let (status, bytes): (u16, Vec<u8>) = match route.as_str() {
        "/echo" => (200, body.contents().await?.to_vec()),
        "/size" => (200, body.contents().await?.len().to_string().into_bytes()),
        "/status" => (param(&query, "code").parse().unwrap_or(500), b"status\n".to_vec()),
        _ => {
            let name = match param(&query, "name") {
                "" => "world",
                n => n,
            };
            let text = format!("hello from wstd, {name}\n{method} {path}\n");
            (200, text.into_bytes())
        }
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-handler", "hello-wstd")
        .body(bytes.into())?)
}

/// The value of `key` in a query string, or "".
fn param<'a>(query: &'a str, key: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map_or("", |(_, v)| v)
}
