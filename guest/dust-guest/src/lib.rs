//! `dust-guest`: the no_std runtime of dust unikernel guests (x86_64).
//!
//! It owns everything between the VMM's 64-bit entry and a guest's `main`: the entry stub
//! and stack ([`entry!`]), the boot information (command line, memory map; see [`boot`]),
//! the serial console ([`print!`], [`println!`]), a heap (`alloc` works), the pseudo
//! devices ([`ready`], [`exit`]), the panic handler (message on serial, status
//! [`PANIC_STATUS`]) and the C memory functions the compiler calls. On top of that:
//! virtio-mmio discovery ([`virtio`]), vsock stream sockets ([`vsock`]) and a small
//! HTTP/1.1 server side ([`http`]).
//!
//! The guest/host contract (addresses, ports, magic values) comes from `dust-abi`; see
//! `docs/guest-contract.md` in the repository and `guest/README.md`.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! dust_guest::entry!(main);
//! fn main() {
//!     dust_guest::println!("hello, args: {:?}", dust_guest::args().count());
//!     dust_guest::ready();
//! }
//! ```
//!
//! Built for a hosted target (its unit tests, the fuzz targets in `fuzz/`), the crate leaves
//! out the pieces that own the machine (entry, heap, panic handler, memory functions, the
//! interrupt controller) and keeps the parsers, which are then ordinary host code.
#![cfg_attr(not(test), no_std)]
// Hosted, the machine-owning modules are out, and the constants and helpers only they use
// are unused there.
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

pub mod boot;
mod cell;
pub mod cmdline;
#[cfg(target_os = "none")]
mod heap;
pub mod http;
mod irq;
#[cfg(target_os = "none")]
mod mem;
#[cfg(target_os = "none")]
mod panic;
mod pseudo;
#[cfg(target_os = "none")]
mod pvh;
mod scan;
pub mod serial;
#[cfg(target_os = "none")]
mod start;
pub mod virtio;
pub mod vminfo;
pub mod vsock;

pub use cmdline::{arg_value, args, cmdline, params};
pub use pseudo::{PANIC_STATUS, exit, halt, ready};

/// What a guest's `main` may return; the value becomes the VM's exit status.
pub trait Termination {
    /// The debug-exit status this value stands for.
    fn status(self) -> u32;
}

impl Termination for () {
    fn status(self) -> u32 {
        0
    }
}

impl Termination for u32 {
    fn status(self) -> u32 {
        self
    }
}

/// `Err(e)` prints `error: {e}` on serial and ends the VM with status 1.
impl<E: core::fmt::Display> Termination for Result<(), E> {
    fn status(self) -> u32 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                println!("error: {e}");
                1
            }
        }
    }
}

/// Runs a guest's `main` and ends the VM with its status. Called by [`entry!`].
#[doc(hidden)]
pub fn run<R: Termination>(main: impl FnOnce() -> R) -> ! {
    exit(main().status())
}

/// Declares a guest's `main`: `dust_guest::entry!(main);` in a `#![no_std] #![no_main]`
/// binary. `main` takes no arguments and returns `()`, `u32` or `Result<(), impl Display>`;
/// returning ends the VM with that status (0 for `()` and `Ok`).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The runtime jumps here once the stack and boot information are set up.
        #[unsafe(no_mangle)]
        extern "Rust" fn __dust_guest_main() -> ! {
            $crate::run($main)
        }
    };
}
