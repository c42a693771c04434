//! Debug-exit port (QEMU `isa-debug-exit` compatible at 0xf4): a write ends the VM with the
//! written value as its status. dust reports the value itself; QEMU reports `(v << 1) | 1`.

use crate::{BusAction, BusDevice};

/// The debug-exit port.
#[derive(Default)]
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, _offset: u64, data: &[u8]) -> BusAction {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        BusAction::Exit(u32::from_le_bytes(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_any_width() {
        assert_eq!(DebugExit.write(0, &[7]), BusAction::Exit(7));
        assert_eq!(DebugExit.write(0, &[1, 1, 0, 0]), BusAction::Exit(257));
    }
}
