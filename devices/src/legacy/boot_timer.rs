//! Boot timer (Firecracker compatible): the guest writes `BOOT_READY_MAGIC` at offset 0 when
//! it is ready to serve; the vCPU loop timestamps it.

use dust_abi::devices::BOOT_READY_MAGIC;

use crate::{BusAction, BusDevice};

/// The boot-timer MMIO window.
#[derive(Default)]
pub struct BootTimer;

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        match (offset, data.first()) {
            (0, Some(&BOOT_READY_MAGIC)) => BusAction::Ready,
            _ => BusAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_is_ready() {
        let mut t = BootTimer;
        assert_eq!(t.write(0, &[BOOT_READY_MAGIC]), BusAction::Ready);
        assert_eq!(t.write(0, &[1]), BusAction::None);
        assert_eq!(t.write(8, &[BOOT_READY_MAGIC]), BusAction::None);
    }
}
