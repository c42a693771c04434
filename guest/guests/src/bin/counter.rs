//! HTTP/1.1 on vsock port 80: a counter kept in guest memory, incremented per request, with
//! the VM's id and 16 random bytes from the runtime: `counter=1 vm=<id> random=<32 hex>`.
//! Under a snapshot-mode service every request's VM starts from the template's memory, so
//! every answer says `counter=1`, with a different id and different random bytes.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use dust_guest::http::{self, Error as HttpError};
use dust_guest::vsock::{Error, Vsock};

dust_guest::entry!(main);

const PORT: u32 = 80;

static mut COUNTER: u64 = 0;

fn main() -> Result<(), Error> {
    let mut vsock = Vsock::open()?;
    vsock.listen(PORT);
    dust_guest::ready();
    let text = [("Content-Type", "text/plain")];
    loop {
        let stream = vsock.accept_wait()?;
        let body = match http::read_request(&mut vsock, stream) {
            Ok(_) => answer(),
            Err(HttpError::Closed | HttpError::Vsock(_)) => {
                let _ = vsock.close(stream);
                continue;
            }
            Err(_) => String::from("bad request\n"),
        };
        let _ = http::write_response(&mut vsock, stream, 200, &text, body.as_bytes());
        let _ = vsock.close(stream);
    }
}

fn answer() -> String {
    // SAFETY: one vCPU, no interrupts touching it: the only access is here.
    let n = unsafe {
        COUNTER += 1;
        COUNTER
    };
    let mut id = [0u8; dust_abi::vminfo::ID_MAX];
    let id = dust_guest::vminfo::id(&mut id);
    let mut random = [0u8; 16];
    dust_guest::vminfo::random_bytes(&mut random);
    let mut hex = String::with_capacity(32);
    for b in random {
        let _ = write!(hex, "{b:02x}");
    }
    format!("counter={n} vm={id} random={hex}\n")
}
