//! Exits with the status given as its first argument (`7` -> 7); a missing or invalid
//! argument prints an error and exits 2.
#![no_std]
#![no_main]

use dust_guest::println;

dust_guest::entry!(main);

/// Status for a missing or unparsable argument.
const USAGE: u32 = 2;

fn main() -> u32 {
    match dust_guest::args().next().map(str::parse::<u32>) {
        Some(Ok(status)) => status,
        Some(Err(e)) => {
            println!("exit-code: bad status argument: {e}");
            USAGE
        }
        None => {
            println!("exit-code: usage: exit-code <status>");
            USAGE
        }
    }
}
