//! Legacy and pseudo devices of the guest contract (`dust-abi::devices`):
//! the 8250 UART on COM1 and the i8042 reset line (both vm-superio models), the
//! Firecracker-compatible boot timer, the QEMU-compatible debug-exit port, and dust's
//! console-write port (a whole line of COM1 output in one exit).

mod boot_timer;
mod console_write;
mod debug_exit;
mod i8042;
mod serial;
mod tail;

pub use boot_timer::BootTimer;
pub use console_write::ConsoleWrite;
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use serial::{Serial, SerialRestoreError, SerialSink, SerialSnapshot};
pub use tail::{OutputTail, TAIL_BYTES};
