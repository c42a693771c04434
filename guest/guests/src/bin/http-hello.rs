//! HTTP/1.1 on vsock port 80: answers every request with `200 Hello from dust VM <id>` and,
//! when the request had a body, how many bytes it read. `<id>` comes from the VM info page,
//! read per request, so a VM restored from a snapshot names itself, not its template (the
//! `vm=<id>` argument the summoner appends is the fallback under QEMU or Firecracker).
//! `dust_guest::http::serve` does the rest: 400 for a malformed request, 431 / 413 when the
//! header block / body is too large, chunked bodies, one response per connection. Signals
//! ready once listening.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use dust_guest::http::{self, Response};

dust_guest::entry!(main);

fn main() -> Result<(), dust_guest::vsock::Error> {
    http::serve(80, |req| {
        let mut id = [0u8; dust_abi::vminfo::ID_MAX];
        let vm = match dust_guest::vminfo::id(&mut id) {
            "" => dust_guest::arg_value("vm").unwrap_or("(unnamed)"),
            id => id,
        };
        // Pieces pushed onto a String, not format!: core::fmt costs about a millisecond
        // per request in a fresh VM on an emulating KVM. Only a request with a body, the
        // rare case here, pays it for its byte count.
        let mut text = String::with_capacity(64);
        text.push_str("Hello from dust VM ");
        text.push_str(vm);
        text.push('\n');
        if let n @ 1.. = req.body().len() {
            text.push_str(&format!("read {n} bytes\n"));
        }
        Response::text(200, text)
    })
}
