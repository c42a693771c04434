//! Writes every 4 KiB page of its RAM above 16 MiB (a zero, so the heap's never-written
//! memory stays zero), then serves like http-hello. Its worker's memory grows with its
//! RAM: under a cgroup memory limit smaller than that, the kernel kills the worker before
//! the guest signals ready.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;

use dust_guest::vsock::{Error, Vsock};

dust_guest::entry!(main);

const FROM: u64 = 16 << 20;
const PAGE: u64 = 4096;

fn main() -> Result<(), Error> {
    for r in dust_guest::boot::ram() {
        let mut addr = r.addr.max(FROM).next_multiple_of(PAGE);
        while addr + PAGE <= r.end() {
            // SAFETY: guest RAM above 16 MiB, identity-mapped; nothing is allocated there
            // yet and writing zero keeps the heap's "never written" memory as it was.
            unsafe { core::ptr::write_volatile(addr as *mut u8, 0) };
            addr += PAGE;
        }
    }
    let mut vsock = Vsock::open()?;
    vsock.listen(80);
    dust_guest::ready();
    let vm = dust_guest::arg_value("vm").unwrap_or("(unnamed)");
    let hello = format!("Hello from dust VM {vm}\n");
    loop {
        let stream = vsock.accept_wait()?;
        let _ = dust_guest::http::read_request(&mut vsock, stream);
        let text = [("Content-Type", "text/plain")];
        let _ = dust_guest::http::write_response(&mut vsock, stream, 200, &text, hello.as_bytes());
        let _ = vsock.close(stream);
    }
}
