//! Prints a greeting and its arguments, signals ready, exits 0.
#![no_std]
#![no_main]

use core::fmt;

use dust_guest::println;

dust_guest::entry!(main);

/// The arguments, each after a space.
struct Args;

impl fmt::Display for Args {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // Plain write_str, not `write!`: each formatted argument costs a few hundred
        // instructions of core::fmt, and every one is emulated on our dev machines.
        dust_guest::args().try_for_each(|arg| {
            f.write_str(" ")?;
            f.write_str(arg)
        })
    }
}

fn main() {
    // One `println!`: one exit to the VMM for the whole greeting.
    println!("Hello from dust!\nargs:{Args}");
    dust_guest::ready();
}
