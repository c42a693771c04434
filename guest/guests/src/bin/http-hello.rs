//! HTTP/1.1 on vsock port 80: answers every request with `200 Hello from dust VM <id>`
//! (`<id>` from the `vm=<id>` argument the summoner appends) and, when the request had a
//! body, how many bytes it read. `dust_guest::http::serve` does the rest: 400 for a
//! malformed request, 431 / 413 when the header block / body is too large, chunked bodies,
//! one response per connection. Signals ready once listening.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;

use dust_guest::http::{self, Response};

dust_guest::entry!(main);

fn main() -> Result<(), dust_guest::vsock::Error> {
    let vm = dust_guest::arg_value("vm").unwrap_or("(unnamed)");
    http::serve(80, |req| match req.body().len() {
        0 => Response::text(200, format!("Hello from dust VM {vm}\n")),
        n => Response::text(200, format!("Hello from dust VM {vm}\nread {n} bytes\n")),
    })
}
