//! Address-range dispatch: the vCPU loop hands every PIO and MMIO exit to a [`Bus`], which
//! finds the device whose range holds the address and calls it with the offset inside that
//! range.

use std::sync::{Arc, Mutex, MutexGuard};

/// What a write asks of the VM, beyond the device's own state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusAction {
    /// Nothing: carry on.
    None,
    /// The guest wrote its exit status (debug-exit port).
    Exit(u32),
    /// The guest pulsed the reset line (i8042): the VM ends.
    Reset,
    /// The guest signalled "ready" on the boot timer.
    Ready,
    /// A device met guest input it cannot tolerate (e.g. a malformed descriptor chain);
    /// the VM is stopped and reported as a device error.
    DeviceError,
}

/// A device that answers reads and writes at offsets inside its bus range.
pub trait BusDevice: Send {
    /// Fill `data` with the value at `offset`. Bytes the device does not define stay as the
    /// bus pre-filled them (all ones for PIO, zeros for MMIO).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handle a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction;
}

/// Errors while placing devices on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The new range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps a device at {other:#x}")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// Start of the device already there.
        other: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping device ranges (one bus for PIO, one for MMIO).
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

fn lock<'a>(device: &'a Mutex<dyn BusDevice + 'static>) -> MutexGuard<'a, dyn BusDevice + 'static> {
    // A device that panicked mid-access left its state as it was; the VM is torn down by the
    // vCPU loop anyway, so reading through the poison is harmless.
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Place `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let pos = self.entries.partition_point(|e| e.base < base);
        let clash = [pos.checked_sub(1), Some(pos)]
            .into_iter()
            .flatten()
            .filter_map(|i| self.entries.get(i))
            .find(|e| e.base < end && base < e.base + e.len);
        if let Some(other) = clash {
            return Err(BusError::Overlap {
                base,
                len,
                other: other.base,
            });
        }
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset.checked_add(size as u64)? <= entry.len).then_some((entry, offset))
    }

    /// Dispatch a read; returns false when no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; `None` when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<BusAction> {
        let (entry, offset) = self.find(addr, data.len())?;
        Some(lock(&entry.device).write(offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> BusAction {
            self.0 = data[0];
            BusAction::None
        }
    }

    fn dev(v: u8) -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(Reg(v)))
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        bus.insert(dev(10), 0x100, 0x10).unwrap();
        bus.insert(dev(20), 0x110, 0x10).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b[0], 15);
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 20);
        assert!(!bus.read(0x120, &mut b));
        assert!(!bus.read(0xff, &mut b));
        assert_eq!(bus.write(0x111, &[7]), Some(BusAction::None));
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 7);
    }

    #[test]
    fn rejects_accesses_straddling_the_end() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x100, 4).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0x100, &mut b));
        assert!(!bus.read(0x101, &mut b));
        assert_eq!(bus.write(0x102, &[0; 4]), None);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(0), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(0), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(0), 0x0, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(0), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(dev(0), 0xf0, 0x10).unwrap();
        bus.insert(dev(0), 0x110, 0x10).unwrap();
    }
}
