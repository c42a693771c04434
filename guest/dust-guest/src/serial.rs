//! The serial console: COM1 (an 8250 at [`COM1`]), transmit only. dust's UART never
//! blocks, so bytes go straight to the transmit register without polling the line status.

use core::fmt;

use dust_abi::devices::COM1;

/// The console as a [`fmt::Write`] sink.
pub struct Serial;

impl Serial {
    /// Writes raw bytes. Every byte is one I/O exit (~10 us on the emulating KVM): keep
    /// serial output off hot paths.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        // `rep outsb` is one instruction for the whole buffer (measured ~15% cheaper per
        // byte than an `out` loop). Short writes use single `out`s, because a VMM may see a
        // 2-4 byte `rep outsb` as one wide port access, which a UART ignores.
        if bytes.len() <= 4 {
            for &b in bytes {
                crate::devices::outb(COM1, b);
            }
            return;
        }
        // SAFETY: reads `bytes` only; port writes to the UART touch no guest memory.
        unsafe {
            core::arch::asm!(
                "rep outsb",
                inout("rcx") bytes.len() => _,
                inout("rsi") bytes.as_ptr() => _,
                in("dx") COM1,
                options(nostack, readonly, preserves_flags),
            );
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

#[doc(hidden)]
pub fn _println(args: fmt::Arguments) {
    _print(args);
    Serial.write_bytes(b"\n");
}

/// Prints to the serial console, like `std::print!`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console, like `std::println!`.
#[macro_export]
macro_rules! println {
    () => { $crate::serial::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::_println(format_args!($($arg)*)) };
}
