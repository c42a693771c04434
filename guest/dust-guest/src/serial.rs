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

/// Collects one `print!`'s pieces so that they leave in one `rep outsb` (one exit to the
/// VMM) instead of one per formatted piece; flushes early only when full.
struct Buffered {
    buf: [u8; 256],
    len: usize,
}

impl Buffered {
    const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    fn flush(&mut self) {
        Serial.write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl fmt::Write for Buffered {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            if self.len == self.buf.len() {
                self.flush();
            }
            let n = bytes.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let mut out = Buffered::new();
    let _ = fmt::Write::write_fmt(&mut out, args);
    out.flush();
}

#[doc(hidden)]
pub fn _println(args: fmt::Arguments) {
    let mut out = Buffered::new();
    let _ = fmt::Write::write_fmt(&mut out, args);
    let _ = fmt::Write::write_str(&mut out, "\n");
    out.flush();
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
