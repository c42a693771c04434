//! The identity map the 64-bit entry starts with: the first 4 GiB (RAM, the virtio-mmio
//! window, LAPIC and IOAPIC) mapped 1:1 by 2 MiB pages.

use dust_abi::layout::{IDENTITY_MAPPED, PAGE_TABLES};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

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
