//! Signals ready, then writes one word into every 4 KiB page of RAM above 4 MiB and exits
//! 0. Restored from a snapshot, it makes its VM copy every page it can: the test that the
//! snapshot's memory file stays untouched and the worker's memory stays bounded.
#![no_std]
#![no_main]

dust_guest::entry!(main);

/// Below this: the image, its stack and heap start; left alone.
const FROM: u64 = 4 << 20;

fn main() {
    dust_guest::ready();
    for region in dust_guest::boot::ram() {
        let mut page = region.addr.max(FROM).next_multiple_of(4096);
        while page + 8 <= region.end() {
            // SAFETY: the page is guest RAM (e820) above everything the runtime uses, and
            // identity-mapped; nothing else reads or writes it.
            unsafe { core::ptr::write_volatile(page as *mut u64, page) };
            page += 4096;
        }
    }
}
