//! Signals ready, then loops forever without a single exit (a plain `jmp`): the VMM must
//! interrupt it to enforce a deadline.
#![no_std]
#![no_main]

dust_guest::entry!(main);

fn main() {
    dust_guest::ready();
    loop {
        core::hint::black_box(());
    }
}
