//! Connects out to the host (CID 2) on the port given as its first argument (default
//! 7000), sends one line, prints the line it gets back on serial, exits 0. For testing
//! guest-initiated connections (the host listens on `<vsock uds>_<port>`).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use dust_guest::println;
use dust_guest::vsock::{Error, HOST_CID, Vsock};

dust_guest::entry!(main);

const DEFAULT_PORT: u32 = 7000;
/// Longest reply line read.
const MAX_REPLY: usize = 4096;

fn main() -> Result<(), Error> {
    let port = dust_guest::args()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PORT);
    let mut vsock = Vsock::open()?;
    let stream = vsock.connect_wait(HOST_CID, port)?;
    vsock.write_all(stream, b"hello from a dust guest\n")?;
    let mut reply = Vec::new();
    while !reply.contains(&b'\n') && reply.len() < MAX_REPLY {
        let room = MAX_REPLY - reply.len();
        match vsock.read_append(stream, &mut reply, room) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Error::WouldBlock) => {
                vsock.wait()?;
            }
            Err(e) => return Err(e),
        }
    }
    let line = reply.split(|&b| b == b'\n').next().unwrap_or(&[]);
    println!(
        "vsock-connect: reply: {}",
        core::str::from_utf8(line).unwrap_or("(not UTF-8)")
    );
    vsock.close(stream)
}
