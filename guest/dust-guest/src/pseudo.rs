//! The pseudo devices every dust guest may use (addresses and values from `dust-abi`):
//! the boot timer, the debug-exit port and the i8042 reset line.

use core::arch::asm;

use dust_abi::devices::{
    BOOT_READY_MAGIC, BOOT_TIMER, DEBUG_EXIT_PORT, I8042_COMMAND_PORT, I8042_RESET,
};

/// Exit status after a panic (as Rust's test harness and `std` processes use).
pub const PANIC_STATUS: u32 = 101;

/// Tells the VMM the guest is ready (listening): the summoner forwards a request only after
/// this. Costs one MMIO exit; call it once.
pub fn ready() {
    // SAFETY: the boot timer is an MMIO register the identity map covers; writing the magic
    // byte has no effect on guest memory.
    unsafe { core::ptr::write_volatile(BOOT_TIMER as *mut u8, BOOT_READY_MAGIC) }
}

/// Ends the VM with `status`: the debug-exit port (dust; QEMU `isa-debug-exit`, which
/// reports `status << 1 | 1`), then an i8042 reset (Firecracker, QEMU pc), then `cli; hlt`
/// forever.
pub fn exit(status: u32) -> ! {
    // SAFETY: port writes to the exit devices; they touch no guest memory.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") DEBUG_EXIT_PORT,
            in("eax") status,
            options(nomem, nostack, preserves_flags),
        );
        asm!(
            "out dx, al",
            in("dx") I8042_COMMAND_PORT,
            in("al") I8042_RESET,
            options(nomem, nostack, preserves_flags),
        );
        loop {
            asm!("cli", "hlt", options(nomem, nostack));
        }
    }
}

/// Waits until the VMM has work for the guest; poll loops call this when a round made no
/// progress, and poll again when it returns. Without an irqchip (dust's default) it is `hlt`
/// with interrupts off: dust parks the vCPU until a device has work and resumes it after the
/// `hlt`. With dust's in-kernel irqchip (`--irqchip`) it is `sti; hlt; cli`, woken by the
/// device interrupts the runtime routes (the first call sets them up and returns at once).
/// Booted through PVH (QEMU, Firecracker) it returns at once, and the caller polls.
pub fn halt() {
    crate::irq::halt()
}

/// Writes `byte` to I/O `port`.
pub(crate) fn outb(port: u16, byte: u8) {
    // SAFETY: the runtime uses this for the serial port only; no guest memory is touched.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") byte, options(nomem, nostack, preserves_flags))
    }
}
