//! HTTP/1.1 on vsock port 80: answers every request with `200 Hello from dust VM <id>`
//! (`<id>` from the `vm=<id>` argument the summoner appends), 400 on a malformed request;
//! one response per connection (`Connection: close`). Signals ready once listening.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;

use dust_guest::http::{self, Error as HttpError};
use dust_guest::vsock::{Error, Vsock};

dust_guest::entry!(main);

const PORT: u32 = 80;

fn main() -> Result<(), Error> {
    let mut vsock = Vsock::open()?;
    vsock.listen(PORT);
    dust_guest::ready();
    let text = [("Content-Type", "text/plain")];
    loop {
        let stream = vsock.accept_wait()?;
        // The id comes from the VM info page, read per request: a VM restored from a
        // snapshot has its own id, not the template's (the `vm=` argument is the template's).
        let mut id = [0u8; dust_abi::vminfo::ID_MAX];
        let vm = match dust_guest::vminfo::id(&mut id) {
            "" => dust_guest::arg_value("vm").unwrap_or("(unnamed)"),
            id => id,
        };
        let hello = format!("Hello from dust VM {vm}\n");
        let (status, body) = match http::read_request(&mut vsock, stream) {
            Ok(_) => (200, hello.as_bytes()),
            Err(HttpError::Malformed(_)) => (400, &b"bad request\n"[..]),
            Err(HttpError::TooLarge) => (413, &b"request too large\n"[..]),
            Err(HttpError::Closed | HttpError::Vsock(_)) => {
                let _ = vsock.close(stream);
                continue;
            }
        };
        // A client that went away is its own problem; keep serving the others.
        let _ = http::write_response(&mut vsock, stream, status, &text, body);
        let _ = vsock.close(stream);
    }
}
