//! Intel MultiProcessor Specification 1.4 table, so that a Linux guest finds its secondary
//! vCPUs, the IOAPIC and the ISA interrupt routing. Written only when vcpus > 1.
//!
//! Layout: the floating pointer structure (16 bytes) at `MPTABLE`, then the configuration
//! table: header (44 bytes), one processor entry per vCPU, an ISA bus, the IOAPIC, one I/O
//! interrupt entry per IOAPIC pin and the two local interrupt entries (LINT0 ExtINT, LINT1 NMI).

use dust_abi::layout::MPTABLE;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU, APIC

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The table's bytes for `cpus` vCPUs, to be placed at `MPTABLE`.
pub fn build(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled, boot processor
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for pin in 0..IOAPIC_PINS {
        // Type 3 (I/O interrupt), INT, default polarity/trigger, ISA bus irq -> same pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // Type 4 (local interrupt): ExtINT -> LINT0 and NMI -> LINT1 of every LAPIC (0xff).
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = (44 + entries.len()) as u16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_len.to_le_bytes());
    header.extend_from_slice(&[SPEC_REV, 0]); // checksum patched below
    header.extend_from_slice(b"DUST    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&[0; 4]); // OEM table pointer
    header.extend_from_slice(&[0; 2]); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let config_addr = (MPTABLE + 16) as u32;
    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&config_addr.to_le_bytes());
    floating.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    floating
}

/// Write the table for `cpus` vCPUs into guest memory.
pub fn write(mem: &GuestMem, cpus: u8) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&build(cpus), GuestAddress(MPTABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = build(4);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(checksum(&t[..16]), 0);
        let cfg = &t[16..];
        assert_eq!(&cfg[..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(checksum(cfg), 0);
        assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 4 + 2 + 24 + 2);
        assert!(MPTABLE + t.len() as u64 <= 0xa0000);
        assert!(MPTABLE + build(32).len() as u64 <= 0xa0000);
    }
}
