//! The entry point: the VMM jumps to `_start` (the ELF entry, first in `.text`) in 64-bit
//! mode with RSI = zero page and a tiny boot stack (the PVH entry for other VMMs is in
//! `pvh.rs`). `_start` switches to the runtime's
//! stack in `.bss` (zeroed by the VMM, never cleared here), records the boot information
//! and calls the guest's `main` (declared with [`entry!`](crate::entry)).

/// Size of the guest's stack.
pub(crate) const STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(4096))]
pub(crate) struct Stack([u8; STACK_SIZE]);

/// The stack. Only the entry stubs name it; it lives in `.bss`, so it costs no image bytes.
pub(crate) static mut STACK: Stack = Stack([0; STACK_SIZE]);

core::arch::global_asm!(
    ".section .text.dust_entry, \"ax\"",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "lea rsp, [rip + {stack} + {stack_size}]",
    "xor ebp, ebp",
    "mov rdi, rsi",
    "call {start}",
    "ud2",
    ".size _start, . - _start",
    stack = sym STACK,
    stack_size = const STACK_SIZE,
    start = sym start_linux,
);

unsafe extern "Rust" {
    /// Defined by [`entry!`](crate::entry) in the guest binary.
    fn __dust_guest_main() -> !;
}

/// Rust side of the Linux-protocol entry.
extern "C" fn start_linux(zero_page: usize) -> ! {
    // SAFETY: called once by `_start` with the RSI the VMM set: the zero page.
    unsafe { crate::boot::init_linux(zero_page) };
    run_main()
}

/// Calls the guest's `main`, once the boot information is recorded.
pub(crate) fn run_main() -> ! {
    // SAFETY: the guest binary defines it with `entry!`; the runtime is set up.
    unsafe { __dust_guest_main() }
}
