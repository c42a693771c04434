//! Triple faults on purpose: loads an IDT with limit 0, then `ud2`. The #UD cannot be
//! delivered, nor the #GP that follows, nor the double fault: the CPU shuts down.
#![no_std]
#![no_main]

dust_guest::entry!(main);

/// The operand of `lidt`: a 16-bit limit and a 64-bit base.
#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

fn main() {
    dust_guest::println!("crash: triple faulting");
    let empty = IdtPointer { limit: 0, base: 0 };
    // SAFETY: deliberately fatal: the VM ends here.
    unsafe {
        core::arch::asm!("lidt [{}]", "ud2", in(reg) &empty, options(noreturn, nostack));
    }
}
