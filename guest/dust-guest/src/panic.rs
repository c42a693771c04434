//! Panics print their message on serial and end the VM with [`PANIC_STATUS`].

use crate::pseudo::{PANIC_STATUS, exit};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => crate::println!("panicked at {at}: {}", info.message()),
        None => crate::println!("panicked: {}", info.message()),
    }
    exit(PANIC_STATUS)
}
