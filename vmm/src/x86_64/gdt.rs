//! The flat GDT (code, data, TSS) and an empty IDT, written into guest memory.

use dust_abi::layout::{GDT, IDT};
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// Code, data and TSS descriptors (access byte + flags nibble, as in the descriptor's bits
/// 40..56), after the mandatory null descriptor.
const CODE64: u16 = 0xa09b; // present, ring 0, code exec/read accessed; G=1, L=1
const DATA: u16 = 0xc093; // present, ring 0, data read/write accessed; G=1, D/B=1
const TSS: u16 = 0x808b; // present, busy 64-bit TSS; G=1

/// Selectors of the entries above.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// Task register selector.
pub const TSS_SELECTOR: u16 = 0x18;

fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of a descriptor, as the CPU would cache it after loading `selector`.
fn segment(flags: u16, selector: u16) -> kvm_segment {
    let g = (flags >> 15) & 1;
    kvm_segment {
        base: 0,
        limit: if g == 1 { 0xffff_ffff } else { 0xfffff },
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: g as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Segments loaded at entry.
pub struct Segments {
    /// CS.
    pub code: kvm_segment,
    /// DS, ES, FS, GS, SS.
    pub data: kvm_segment,
    /// TR.
    pub tss: kvm_segment,
}

/// Write the GDT and an empty IDT; returns the segments to load.
pub fn write_gdt(mem: &GuestMem) -> Result<Segments, vm_memory::GuestMemoryError> {
    let table = [
        0u64,
        descriptor(CODE64, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS, 0, 0xfffff),
    ];
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT))?;
    Ok(Segments {
        code: segment(CODE64, CODE_SELECTOR),
        data: segment(DATA, DATA_SELECTOR),
        tss: segment(TSS, TSS_SELECTOR),
    })
}

/// Size of the GDT in bytes (for GDTR.limit + 1).
pub const GDT_SIZE: u16 = 4 * 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_architecture_manual() {
        assert_eq!(descriptor(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let cs = segment(CODE64, CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.type_), (1, 0, 1, 1, 0xb));
    }
}
