//! Waiting for the VMM ([`halt`]) in each interrupt mode, and the interrupt plumbing that the
//! in-kernel irqchip mode needs.
//!
//! - dust without an irqchip (the default): `hlt` with interrupts off exits to the VMM, which
//!   parks the vCPU until a device has work and resumes it after the `hlt`.
//! - dust with the in-kernel irqchip (`--irqchip`): KVM handles `hlt` itself, and with
//!   interrupts off the vCPU would sleep for ever. Devices raise their line (an irqfd on the
//!   IOAPIC pin the command line announces, edge triggered) instead. The runtime installs a
//!   small IDT, software-enables the local APIC, masks the legacy PIC and routes every
//!   virtio-mmio line the guest opened ([`enable_line`]) to [`VECTOR`]; waiting is then
//!   `sti; hlt; cli`. The handler only signals end of interrupt: the wake-up is all that is
//!   needed, the caller polls its queues again after `hlt` returns. It touches no runtime
//!   state and no xmm register.
//! - booted through PVH (QEMU, Firecracker): waiting guests poll; `halt` returns at once.
//!
//! The mode is found on the first [`halt`] (a guest that never waits never pays for it):
//! CPUID.01H:EDX.APIC and a local APIC that answers (its version register reads 0 without an
//! irqchip, where the access reaches dust's MMIO bus, which returns zeroes).

use crate::cell::Global;

/// Vector of the device interrupts.
pub const VECTOR: u8 = 0x30;
/// First vector of external interrupts (0-31 are exceptions).
const FIRST_EXTERNAL: usize = 0x20;
/// The local APIC's spurious-interrupt vector; also the last IDT entry.
const SPURIOUS: usize = 0x3f;
/// Entries of the IDT: exceptions (not present: a fault still ends in a triple fault, as
/// without an irqchip) and vectors 0x20-0x3f, which all end the interrupt and return.
#[cfg_attr(test, allow(dead_code))]
const IDT_ENTRIES: usize = SPURIOUS + 1;

/// Local APIC (xAPIC MMIO, identity mapped by the VMM's 4 GiB map).
#[cfg_attr(test, allow(dead_code))]
mod lapic {
    pub const BASE: usize = 0xfee0_0000;
    pub const VERSION: usize = BASE + 0x30;
    pub const EOI: usize = BASE + 0xb0;
    pub const SVR: usize = BASE + 0xf0;
    /// SVR: APIC software enable.
    pub const SVR_ENABLE: u32 = 1 << 8;
}

/// IOAPIC: an index register and a data window.
#[cfg_attr(test, allow(dead_code))]
mod ioapic {
    pub const IOREGSEL: usize = 0xfec0_0000;
    pub const IOWIN: usize = IOREGSEL + 0x10;
    /// Redirection entry of pin N: registers `REDTBL + 2N` (low) and `REDTBL + 2N + 1` (high).
    pub const REDTBL: u32 = 0x10;
    /// Pins of KVM's IOAPIC.
    pub const PINS: u32 = 24;
}

/// How [`halt`] waits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wait {
    /// Not known yet: found on the first `halt`.
    Unknown,
    /// `hlt` with interrupts off (dust without an irqchip).
    Halt,
    /// `sti; hlt; cli` (dust with the in-kernel irqchip; interrupts set up).
    Interrupt,
    /// Return at once; the caller polls (booted through PVH).
    Poll,
}

static WAIT: Global<Wait> = Global::new(Wait::Unknown);
/// IOAPIC pins to route to [`VECTOR`] (bit N = pin N).
static LINES: Global<u32> = Global::new(0);

/// The low quadword of a present 64-bit interrupt gate (DPL 0, no IST) to `handler` in code
/// segment `cs`; the high quadword holds bits 32-63 of the address.
pub(crate) fn gate_low(handler: u64, cs: u16) -> u64 {
    const PRESENT_INTERRUPT_GATE: u64 = 0x8e;
    (handler & 0xffff)
        | (u64::from(cs) << 16)
        | (PRESENT_INTERRUPT_GATE << 40)
        | (((handler >> 16) & 0xffff) << 48)
}

/// The IOAPIC redirection entry (low, high register) that delivers to `VECTOR` on APIC 0:
/// fixed delivery, physical destination, active high, edge triggered, unmasked.
pub(crate) fn redirection(vector: u8) -> (u32, u32) {
    (u32::from(vector), 0)
}

/// Routes IOAPIC pin `line` (a virtio-mmio device's interrupt) to the runtime's wake-up
/// vector if the guest runs with an irqchip. The virtio transport calls this for each device
/// it opens; it costs nothing until the first [`halt`].
pub(crate) fn enable_line(line: u32) {
    if line >= ioapic::PINS {
        return;
    }
    LINES.set(LINES.get() | 1 << line);
    #[cfg(target_os = "none")]
    if WAIT.get() == Wait::Interrupt {
        route(line);
    }
}

/// Waits until the VMM has work for the guest (see the module docs); returns at once where
/// it cannot wait. The caller polls again afterwards in any case: a return is no promise
/// that anything happened.
pub fn halt() {
    match WAIT.get() {
        Wait::Halt => hlt(),
        Wait::Interrupt => sti_hlt_cli(),
        Wait::Poll => {}
        Wait::Unknown => {
            let wait = detect();
            WAIT.set(wait);
            match wait {
                Wait::Halt => hlt(),
                // No `hlt` this once: an edge that came before the pins were routed is
                // lost, so the caller must poll again before the first real wait.
                #[cfg(target_os = "none")]
                Wait::Interrupt => setup(),
                _ => {}
            }
        }
    }
}

fn hlt() {
    // SAFETY: `hlt` only pauses the vCPU (interrupts stay off).
    unsafe { core::arch::asm!("hlt", options(nomem, nostack, preserves_flags)) }
}

/// Sleeps until an interrupt: `sti` delays interrupts by one instruction, so one that is
/// already pending (raised after the caller's last poll) wakes the `hlt` instead of being
/// taken before it. Not `nostack`: the handler's frame lands below RSP, so the compiler must
/// keep nothing in the red zone across this block.
fn sti_hlt_cli() {
    // SAFETY: interrupts are on only inside this block; the handlers save what they use.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem)) }
}

fn detect() -> Wait {
    if !crate::boot::halt_resumes() {
        return Wait::Poll;
    }
    if has_lapic() {
        Wait::Interrupt
    } else {
        Wait::Halt
    }
}

/// CPUID says there is a local APIC, and it answers at its MMIO address.
#[cfg(target_os = "none")]
fn has_lapic() -> bool {
    const CPUID_1_EDX_APIC: u32 = 1 << 9;
    // The version register first: it alone tells dust's two modes apart, at the price of one
    // exit to the VMM without an irqchip (~20 us here, once), where CPUID would add ~6 us.
    // SAFETY: the identity map covers the LAPIC window; reading the version register has
    // no side effect (without an irqchip the access reaches dust's bus, which answers 0).
    (unsafe { core::ptr::read_volatile(lapic::VERSION as *const u32) } != 0)
        && core::arch::x86_64::__cpuid(1).edx & CPUID_1_EDX_APIC != 0
}

#[cfg(not(target_os = "none"))]
fn has_lapic() -> bool {
    false
}

#[cfg(target_os = "none")]
mod chip {
    use super::*;

    #[repr(C, align(16))]
    struct Idt([[u64; 2]; IDT_ENTRIES]);

    /// In `.bss`: zero, so the exception entries are "not present".
    static mut IDT: Idt = Idt([[0; 2]; IDT_ENTRIES]);

    unsafe extern "C" {
        fn dust_irq_entry();
        fn dust_irq_spurious();
    }

    // The handlers: end of interrupt and return (RAX saved, flags restored by `iretq`);
    // a spurious interrupt needs no EOI.
    core::arch::global_asm!(
        ".pushsection .text.dust_irq, \"ax\"",
        ".global dust_irq_entry",
        ".type dust_irq_entry, @function",
        "dust_irq_entry:",
        "push rax",
        "mov eax, {eoi}",
        "mov dword ptr [rax], 0",
        "pop rax",
        "iretq",
        ".size dust_irq_entry, . - dust_irq_entry",
        ".global dust_irq_spurious",
        ".type dust_irq_spurious, @function",
        "dust_irq_spurious:",
        "iretq",
        ".size dust_irq_spurious, . - dust_irq_spurious",
        ".popsection",
        eoi = const lapic::EOI,
    );

    /// Installs the IDT, enables the local APIC, masks the PIC and routes the lines.
    pub(super) fn setup() {
        let cs: u16;
        // SAFETY: reads CS.
        unsafe {
            core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
        };
        let entry = dust_irq_entry as *const () as u64;
        let spurious = dust_irq_spurious as *const () as u64;
        let idt = &raw mut IDT;
        // SAFETY: the IDT is the runtime's own static, written only here, with interrupts
        // off; the CPU reads it only after `lidt`. Only the low quadwords are written: the
        // small code model puts the handlers below 2 GiB, so the high ones (bits 32-63 of
        // the address) stay zero, as `.bss` starts out.
        unsafe {
            let low = gate_low(entry, cs);
            for v in FIRST_EXTERNAL..SPURIOUS {
                (*idt).0[v][0] = low;
            }
            (*idt).0[SPURIOUS][0] = gate_low(spurious, cs);
        }
        #[repr(C, packed)]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let pointer = Pointer {
            limit: (IDT_ENTRIES * 16 - 1) as u16,
            base: idt as u64,
        };
        // SAFETY: the IDT and its handlers live as long as the guest.
        unsafe {
            core::arch::asm!("lidt [{0}]", in(reg) &raw const pointer, options(readonly, nostack, preserves_flags));
            // Local APIC on (software enable), with the spurious vector.
            core::ptr::write_volatile(lapic::SVR as *mut u32, lapic::SVR_ENABLE | SPURIOUS as u32);
            // The legacy PIC (present with the irqchip) would deliver its lines as vectors
            // 0-15 through LINT0: mask all of them.
            core::arch::asm!(
                "out 0x21, al",
                "out 0xa1, al",
                in("al") 0xffu8,
                options(nomem, nostack, preserves_flags),
            );
        }
        let mut lines = LINES.get();
        while lines != 0 {
            route(lines.trailing_zeros());
            lines &= lines - 1;
        }
    }

    /// Routes IOAPIC pin `line` to [`VECTOR`] on APIC 0.
    pub(super) fn route(line: u32) {
        let (low, high) = redirection(VECTOR);
        let reg = ioapic::REDTBL + 2 * line;
        // SAFETY: IOAPIC registers, identity mapped; the redirection entry only steers
        // interrupts to the handler installed above.
        unsafe {
            for (index, value) in [(reg + 1, high), (reg, low)] {
                core::ptr::write_volatile(ioapic::IOREGSEL as *mut u32, index);
                core::ptr::write_volatile(ioapic::IOWIN as *mut u32, value);
            }
        }
    }
}

#[cfg(target_os = "none")]
use chip::{route, setup};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_splits_the_address() {
        let low = gate_low(0x1234_5678_9abc, 0x08);
        assert_eq!(low & 0xffff, 0x9abc);
        assert_eq!((low >> 16) & 0xffff, 0x08);
        assert_eq!((low >> 32) & 0xff, 0); // IST 0
        assert_eq!((low >> 40) & 0xff, 0x8e); // present, DPL 0, interrupt gate
        assert_eq!(low >> 48, 0x5678);
    }

    #[test]
    fn redirection_is_fixed_physical_edge_unmasked() {
        let (low, high) = redirection(0x30);
        assert_eq!(low, 0x30); // delivery 000, physical, high, edge, mask clear
        assert_eq!(high >> 24, 0); // APIC 0
    }

    #[test]
    fn lines_beyond_the_ioapic_are_ignored() {
        enable_line(24);
        enable_line(31);
        assert_eq!(LINES.get() & !((1 << 24) - 1), 0);
    }
}
