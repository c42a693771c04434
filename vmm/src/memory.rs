//! Guest RAM: one anonymous mapping from 0, split around the MMIO hole below 4 GiB when the
//! VM is larger than 3 GiB.

use dust_abi::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory as the rest of the VMM uses it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Could not map guest RAM.
#[derive(Debug, thiserror::Error)]
#[error("cannot map {mib} MiB of guest memory: {source}")]
pub struct MemoryError {
    mib: u32,
    #[source]
    source: vm_memory::mmap::FromRangesError,
}

/// The RAM ranges `(start, len)` of a VM with `mib` MiB.
pub fn ram_ranges(mib: u32) -> Vec<(u64, u64)> {
    let size = u64::from(mib) << 20;
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, size - MMIO_HOLE_START),
        ]
    }
}

/// End of the RAM below the MMIO hole: where the initrd goes.
pub fn low_ram_end(mib: u32) -> u64 {
    (u64::from(mib) << 20).min(MMIO_HOLE_START)
}

/// Map guest RAM (zero-filled, pages allocated on first touch).
pub fn create(mib: u32) -> Result<GuestMem, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mib)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_around_the_hole() {
        assert_eq!(ram_ranges(32), vec![(0, 32 << 20)]);
        assert_eq!(
            ram_ranges(4096),
            vec![(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)]
        );
        assert_eq!(low_ram_end(4096), 0xc000_0000);
        assert_eq!(low_ram_end(64), 64 << 20);
    }
}
