//! The flat GDT and the identity-mapping page tables, written into guest memory.

use dust_abi::layout::{GDT, IDENTITY_MAPPED, IDT, PAGE_TABLES};
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

/// Identity-map the first 4 GiB with 2 MiB pages: PML4 -> PDPT -> four PDs of 512 entries.
///
/// Every entry is born accessed and every page dirty (as Linux does for its kernel map):
/// otherwise KVM's walker sets those bits in guest memory on first use, a slow path on the
/// emulating KVM (one atomic update of a guest PTE per level per first touch).
pub fn write_page_tables(mem: &GuestMem) -> Result<(), vm_memory::GuestMemoryError> {
    const PRESENT_RW: u64 = 0x3 | ACCESSED;
    const ACCESSED: u64 = 0x20;
    const DIRTY: u64 = 0x40;
    const HUGE: u64 = 0x80 | DIRTY;
    const PD_SPAN: u64 = 1 << 30;
    let (pml4, pdpt, pd0) = (PAGE_TABLES, PAGE_TABLES + 0x1000, PAGE_TABLES + 0x2000);
    mem.write_obj(pdpt | PRESENT_RW, GuestAddress(pml4))?;
    let mut entries = [0u8; 4096];
    for pd_index in 0..IDENTITY_MAPPED / PD_SPAN {
        let pd = pd0 + pd_index * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(pdpt + pd_index * 8))?;
        for (i, e) in entries.chunks_exact_mut(8).enumerate() {
            let addr = pd_index * PD_SPAN + ((i as u64) << 21);
            e.copy_from_slice(&(addr | PRESENT_RW | HUGE).to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

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

    #[test]
    fn identity_map_covers_four_gib() {
        let mem = crate::memory::create(16).unwrap();
        write_page_tables(&mem).unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress(PAGE_TABLES + 0x5000 + 511 * 8))
            .unwrap();
        assert_eq!(last, (0xffe0_0000) | 0xe3);
        let pdpt3: u64 = mem
            .read_obj(GuestAddress(PAGE_TABLES + 0x1000 + 24))
            .unwrap();
        assert_eq!(pdpt3, (PAGE_TABLES + 0x5000) | 0x23);
    }
}
