//! The i8042 controller, only for its "pulse reset line" command (vm-superio's model).

use std::cell::Cell;

use crate::{BusAction, BusDevice};

/// Records that vm-superio asked for a reset.
#[derive(Default)]
struct ResetFlag(Cell<bool>);

impl vm_superio::Trigger for ResetFlag {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(true);
        Ok(())
    }
}

/// i8042 at ports 0x60..=0x64 (data at offset 0, command at offset 4).
pub struct I8042 {
    dev: vm_superio::I8042Device<ResetFlag>,
}

impl I8042 {
    /// A controller with no pending reset.
    pub fn new() -> Self {
        Self {
            dev: vm_superio::I8042Device::new(ResetFlag::default()),
        }
    }
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            *b = self.dev.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            let _ = self.dev.write(off, *b);
            if self.dev.reset_evt().0.replace(false) {
                return BusAction::Reset;
            }
        }
        BusAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_resets() {
        let mut d = I8042::new();
        assert_eq!(d.write(4, &[0x12]), BusAction::None);
        assert_eq!(d.write(0, &[0xfe]), BusAction::None);
        assert_eq!(d.write(4, &[0xfe]), BusAction::Reset);
        assert_eq!(d.write(4, &[0x00]), BusAction::None);
    }
}
