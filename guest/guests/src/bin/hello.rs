//! Prints a greeting and its arguments, signals ready, exits 0.
#![no_std]
#![no_main]

use dust_guest::{print, println};

dust_guest::entry!(main);

fn main() {
    println!("Hello from dust!");
    print!("args:");
    for arg in dust_guest::args() {
        print!(" {arg}");
    }
    println!();
    dust_guest::ready();
}
