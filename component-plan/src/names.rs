//! What a wasi:http component may import from dust: the interfaces of the
//! `wasi:http/proxy` world (WASI 0.2.x) and the `wasi:cli` ones Rust std pulls in, and in
//! them the functions and resources the `dust-component` guest implements.

/// The interfaces a component may import (any 0.2.x version), without the version.
pub const INTERFACES: &[&str] = &[
    "wasi:http/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// The functions dust implements, `interface#name` (interface without its version).
pub const FUNCTIONS: &[&str] = &[
    "wasi:http/types#[constructor]fields",
    "wasi:http/types#[static]fields.from-list",
    "wasi:http/types#[method]fields.get",
    "wasi:http/types#[method]fields.has",
    "wasi:http/types#[method]fields.set",
    "wasi:http/types#[method]fields.delete",
    "wasi:http/types#[method]fields.append",
    "wasi:http/types#[method]fields.entries",
    "wasi:http/types#[method]fields.clone",
    "wasi:http/types#[method]incoming-request.method",
    "wasi:http/types#[method]incoming-request.path-with-query",
    "wasi:http/types#[method]incoming-request.scheme",
    "wasi:http/types#[method]incoming-request.authority",
    "wasi:http/types#[method]incoming-request.headers",
    "wasi:http/types#[method]incoming-request.consume",
    "wasi:http/types#[method]incoming-body.stream",
    "wasi:http/types#[static]incoming-body.finish",
    "wasi:http/types#[method]future-trailers.subscribe",
    "wasi:http/types#[method]future-trailers.get",
    "wasi:http/types#[constructor]outgoing-response",
    "wasi:http/types#[method]outgoing-response.status-code",
    "wasi:http/types#[method]outgoing-response.set-status-code",
    "wasi:http/types#[method]outgoing-response.headers",
    "wasi:http/types#[method]outgoing-response.body",
    "wasi:http/types#[method]outgoing-body.write",
    "wasi:http/types#[static]outgoing-body.finish",
    "wasi:http/types#[static]response-outparam.set",
    "wasi:http/types#http-error-code",
    "wasi:io/error#[method]error.to-debug-string",
    "wasi:io/poll#[method]pollable.ready",
    "wasi:io/poll#[method]pollable.block",
    "wasi:io/poll#poll",
    "wasi:io/streams#[method]input-stream.read",
    "wasi:io/streams#[method]input-stream.blocking-read",
    "wasi:io/streams#[method]input-stream.skip",
    "wasi:io/streams#[method]input-stream.blocking-skip",
    "wasi:io/streams#[method]input-stream.subscribe",
    "wasi:io/streams#[method]output-stream.check-write",
    "wasi:io/streams#[method]output-stream.write",
    "wasi:io/streams#[method]output-stream.blocking-write-and-flush",
    "wasi:io/streams#[method]output-stream.flush",
    "wasi:io/streams#[method]output-stream.blocking-flush",
    "wasi:io/streams#[method]output-stream.subscribe",
    "wasi:io/streams#[method]output-stream.write-zeroes",
    "wasi:io/streams#[method]output-stream.blocking-write-zeroes-and-flush",
    "wasi:io/streams#[method]output-stream.splice",
    "wasi:io/streams#[method]output-stream.blocking-splice",
    "wasi:random/random#get-random-bytes",
    "wasi:random/random#get-random-u64",
    "wasi:random/insecure#get-insecure-random-bytes",
    "wasi:random/insecure#get-insecure-random-u64",
    "wasi:random/insecure-seed#insecure-seed",
    "wasi:clocks/monotonic-clock#now",
    "wasi:clocks/monotonic-clock#resolution",
    "wasi:clocks/monotonic-clock#subscribe-instant",
    "wasi:clocks/monotonic-clock#subscribe-duration",
    "wasi:clocks/wall-clock#now",
    "wasi:clocks/wall-clock#resolution",
    "wasi:cli/environment#get-environment",
    "wasi:cli/environment#get-arguments",
    "wasi:cli/environment#initial-cwd",
    "wasi:cli/exit#exit",
    "wasi:cli/stdin#get-stdin",
    "wasi:cli/stdout#get-stdout",
    "wasi:cli/stderr#get-stderr",
    "wasi:cli/terminal-stdin#get-terminal-stdin",
    "wasi:cli/terminal-stdout#get-terminal-stdout",
    "wasi:cli/terminal-stderr#get-terminal-stderr",
];

/// The resource types dust keeps handle tables for, `interface#name`.
pub const RESOURCES: &[&str] = &[
    "wasi:http/types#fields",
    "wasi:http/types#incoming-request",
    "wasi:http/types#incoming-body",
    "wasi:http/types#future-trailers",
    "wasi:http/types#outgoing-response",
    "wasi:http/types#outgoing-body",
    "wasi:http/types#response-outparam",
    "wasi:http/types#outgoing-request",
    "wasi:http/types#request-options",
    "wasi:http/types#incoming-response",
    "wasi:http/types#future-incoming-response",
    "wasi:io/error#error",
    "wasi:io/poll#pollable",
    "wasi:io/streams#input-stream",
    "wasi:io/streams#output-stream",
    "wasi:cli/terminal-input#terminal-input",
    "wasi:cli/terminal-output#terminal-output",
];

/// The interface a component must export, and its function.
pub const HANDLER: &str = "wasi:http/incoming-handler";
/// The exported function.
pub const HANDLE: &str = "handle";

/// `name` without its `@version`, if the version is a WASI 0.2 one (`0.2.x`).
pub fn unversioned(name: &str) -> Option<&str> {
    match name.split_once('@') {
        Some((base, version)) if version.starts_with("0.2.") => Some(base),
        _ => None,
    }
}

/// Whether dust provides `item` (`interface#name`) from the list `known`.
pub fn provides(known: &[&str], interface: &str, item: &str) -> bool {
    let Some(base) = unversioned(interface) else {
        return false;
    };
    known.iter().any(|k| {
        k.split_once('#')
            .is_some_and(|(i, n)| i == base && n == item)
    })
}
