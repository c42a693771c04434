//! Echo server on vsock port 5000 (or `port=<n>`): every connection gets its bytes back
//! until the peer shuts down; any number of connections at once. Signals ready once
//! listening.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use dust_guest::vsock::{Error, Stream, Vsock};

dust_guest::entry!(main);

const DEFAULT_PORT: u32 = 5000;
/// Most bytes read from one connection before they are echoed back.
const CHUNK: usize = 64 * 1024;

struct Echo {
    stream: Stream,
    /// Read and not yet written back: `pending[sent..]`.
    pending: Vec<u8>,
    sent: usize,
}

fn main() -> Result<(), Error> {
    let port = dust_guest::arg_value("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PORT);
    let mut vsock = Vsock::open()?;
    vsock.listen(port);
    dust_guest::ready();
    let mut conns: Vec<Echo> = Vec::new();
    loop {
        let mut progress = vsock.poll()?;
        while let Some(stream) = vsock.accept() {
            conns.push(Echo {
                stream,
                pending: Vec::new(),
                sent: 0,
            });
            progress = true;
        }
        let mut i = 0;
        while i < conns.len() {
            match step(&mut vsock, &mut conns[i]) {
                Ok(p) => {
                    progress |= p;
                    i += 1;
                }
                Err(_) => {
                    let _ = vsock.close(conns[i].stream);
                    conns.swap_remove(i);
                    progress = true;
                }
            }
        }
        if !progress {
            dust_guest::halt();
        }
    }
}

/// Moves one connection along: writes back what is pending, then reads more. Returns
/// whether anything moved; `Err` when the connection is finished (end of stream or broken).
fn step(vsock: &mut Vsock, c: &mut Echo) -> Result<bool, Error> {
    let mut progress = false;
    loop {
        if c.sent < c.pending.len() {
            match vsock.write(c.stream, &c.pending[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(Error::WouldBlock) => return Ok(progress),
                Err(e) => return Err(e),
            }
        } else {
            c.pending.clear();
            c.sent = 0;
            match vsock.read_append(c.stream, &mut c.pending, CHUNK) {
                Ok(0) => return Err(Error::NotConnected),
                Ok(_) => {}
                Err(Error::WouldBlock) => return Ok(progress),
                Err(e) => return Err(e),
            }
        }
        progress = true;
    }
}
