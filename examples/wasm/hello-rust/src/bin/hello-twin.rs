//! The default route of `hello-component` written for WAGI: the same answer (`hello, N`
//! and the method and path the handler saw, with `content-type` and `x-handler`), so that
//! `scripts/bench-component` compares the two conventions on one handler.

use std::io::Write;

fn main() -> std::io::Result<()> {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let (method, path, query) = (var("REQUEST_METHOD"), var("PATH_INFO"), var("QUERY_STRING"));
    let name = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "name")
        .map_or("", |(_, v)| v);
    let name = if name.is_empty() { "world" } else { name };
    let sep = if query.is_empty() { "" } else { "?" };
    let body = format!("hello, {name}\n{method} {path}{sep}{query}\n");
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "Content-Type: text/plain\nX-Handler: hello-component\n\n{body}"
    )
}
