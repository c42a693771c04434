//! The serial console: COM1 (an 8250 at [`COM1`]), transmit only. dust's UART never
//! blocks, so bytes go straight to the transmit register without polling the line status.
//! Under dust (its CPUID signature says so) a write of more than one byte goes through the
//! console-write port instead: the whole buffer in one exit, onto the same UART output.

use core::fmt;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, Ordering};

use dust_abi::cpuid::{FEATURE_CONSOLE_WRITE, LEAF_FEATURES, LEAF_SIGNATURE, SIGNATURE};
use dust_abi::devices::{COM1, CONSOLE_WRITE_MAX, CONSOLE_WRITE_PORT, ConsoleWrite};
use dust_abi::layout::IDENTITY_MAPPED;

const UNKNOWN: u8 = 0;
const ABSENT: u8 = 1;
const PRESENT: u8 = 2;
static CONSOLE_WRITE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether the VMM is dust (its CPUID signature) with the features leaf.
pub(crate) fn dust_leaves() -> bool {
    const fn word(i: usize) -> u32 {
        let s = SIGNATURE;
        u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]])
    }
    let sig = core::arch::x86_64::__cpuid(LEAF_SIGNATURE);
    (sig.ebx, sig.ecx, sig.edx) == (word(0), word(4), word(8)) && sig.eax >= LEAF_FEATURES
}

/// Whether the VMM is dust with the console-write port (asked once, by CPUID: two emulated
/// instructions, no exit to the VMM).
fn console_write_present() -> bool {
    match CONSOLE_WRITE.load(Ordering::Relaxed) {
        PRESENT => true,
        ABSENT => false,
        _ => {
            let present = dust_leaves()
                && core::arch::x86_64::__cpuid(LEAF_FEATURES).eax & FEATURE_CONSOLE_WRITE != 0;
            CONSOLE_WRITE.store(if present { PRESENT } else { ABSENT }, Ordering::Relaxed);
            present
        }
    }
}

/// Hands `bytes` to the console-write port; false (nothing written) when the port is absent
/// or the bytes or the request are not where the VMM can find them (outside the low 4 GiB
/// identity map).
fn console_write(bytes: &[u8]) -> bool {
    let end = (bytes.as_ptr() as u64).saturating_add(bytes.len() as u64);
    if end > IDENTITY_MAPPED || !console_write_present() {
        return false;
    }
    for chunk in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
        let req = ConsoleWrite {
            addr: chunk.as_ptr() as u64,
            len: chunk.len() as u64,
        };
        let req_at: *const ConsoleWrite = &req;
        if req_at as u64 > u64::from(u32::MAX) {
            // A stack above 4 GiB: the same slot every round, so nothing was written yet.
            return false;
        }
        // SAFETY: the VMM reads `req` and the bytes it names (identity-mapped, checked
        // above) during the exit. The pointer is an operand of an asm that may read memory,
        // so `req` is in memory before the `out`; the port takes its low 32 bits.
        unsafe {
            core::arch::asm!(
                "out dx, eax",
                in("dx") CONSOLE_WRITE_PORT,
                in("rax") req_at,
                options(nostack, readonly, preserves_flags),
            );
        }
    }
    true
}

/// The console as a [`fmt::Write`] sink.
pub struct Serial;

impl Serial {
    /// Writes raw bytes: one exit under dust (the console-write port), else one I/O exit
    /// per byte (~10 us each on the emulating KVM).
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        if bytes.len() > 1 && console_write(bytes) {
            return;
        }
        // `rep outsb` is one instruction for the whole buffer (measured ~15% cheaper per
        // byte than an `out` loop). Short writes use single `out`s, because a VMM may see a
        // 2-4 byte `rep outsb` as one wide port access, which a UART ignores.
        if bytes.len() <= 4 {
            for &b in bytes {
                crate::pseudo::outb(COM1, b);
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

/// Collects one `print!`'s pieces so that they leave in one write (one exit to the VMM
/// under dust) instead of one per formatted piece; flushes early only when full.
struct Buffered {
    // Not zeroed: on the emulating KVM, clearing 256 bytes costs more than formatting a
    // line (each `rep stosq` step is emulated).
    buf: [MaybeUninit<u8>; 256],
    len: usize,
}

impl Buffered {
    fn new() -> Self {
        Self {
            // SAFETY: an array of MaybeUninit needs no initialisation. (A constant array of
            // uninit bytes is emitted as zeroes, a memset on every print.)
            buf: unsafe { MaybeUninit::<[MaybeUninit<u8>; 256]>::uninit().assume_init() },
            len: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by `write_str`.
        unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.len) }
    }

    fn flush(&mut self) {
        Serial.write_bytes(self.filled());
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
            // SAFETY: `n` bytes fit after `len` (checked above); source and buffer are
            // distinct, and MaybeUninit<u8> has u8's layout.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.buf.as_mut_ptr().add(self.len).cast::<u8>(),
                    n,
                );
            }
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
