//! The console-write port (`dust-abi::devices::CONSOLE_WRITE_PORT`): a guest hands over a
//! whole line of console output in one exit instead of one UART exit per byte. The bytes go
//! through the same UART, so they reach the same sink, in order with byte-wise output.

use std::sync::{Arc, Mutex};

use dust_abi::devices::{ConsoleWrite as Request, CONSOLE_WRITE_MAX};
use tracing::warn;
use vm_memory::{Bytes, GuestAddress};

use super::Serial;
use crate::virtio::GuestMem;
use crate::{BusAction, BusDevice};

/// The port: reads the request from guest memory and feeds its bytes to `serial`.
pub struct ConsoleWrite {
    mem: GuestMem,
    serial: Arc<Mutex<Serial>>,
}

impl ConsoleWrite {
    /// A port that copies from `mem` to `serial`.
    pub fn new(mem: GuestMem, serial: Arc<Mutex<Serial>>) -> Self {
        Self { mem, serial }
    }

    fn copy(&self, request_addr: u64) -> Result<(), String> {
        let field = |at: u64| -> Result<u64, String> {
            let addr = GuestAddress(request_addr.wrapping_add(at));
            self.mem
                .read_obj::<u64>(addr)
                .map(u64::from_le)
                .map_err(|e| format!("request at {request_addr:#x} is not in guest RAM: {e}"))
        };
        let req = Request {
            addr: field(0)?,
            len: field(8)?,
        };
        if req.len > CONSOLE_WRITE_MAX {
            return Err(format!(
                "{} bytes asked for, at most {CONSOLE_WRITE_MAX} allowed",
                req.len
            ));
        }
        let mut bytes = [0u8; CONSOLE_WRITE_MAX as usize];
        let bytes = &mut bytes[..req.len as usize];
        self.mem
            .read_slice(bytes, GuestAddress(req.addr))
            .map_err(|e| format!("{} bytes at {:#x}: {e}", req.len, req.addr))?;
        let mut serial = self
            .serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        serial.write(0, bytes);
        Ok(())
    }
}

impl BusDevice for ConsoleWrite {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        let request_addr = match (offset, data) {
            (0, [a, b, c, d]) => u64::from(u32::from_le_bytes([*a, *b, *c, *d])),
            _ => {
                warn!(
                    "console-write: a {}-byte write at +{offset}; only a u32 at +0 means anything",
                    data.len()
                );
                return BusAction::DeviceError;
            }
        };
        match self.copy(request_addr) {
            Ok(()) => BusAction::None,
            Err(why) => {
                warn!("console-write: bad request: {why}");
                BusAction::DeviceError
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::serial::capture::{self, Capture};

    fn port() -> (ConsoleWrite, GuestMem, Capture) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (serial, cap) = capture::serial();
        let port = ConsoleWrite::new(mem.clone(), Arc::new(Mutex::new(serial)));
        (port, mem, cap)
    }

    fn request(mem: &GuestMem, at: u64, addr: u64, len: u64) {
        mem.write_obj(addr.to_le_bytes(), GuestAddress(at)).unwrap();
        mem.write_obj(len.to_le_bytes(), GuestAddress(at + 8))
            .unwrap();
    }

    #[test]
    fn copies_the_bytes_to_the_uart_sink() {
        let (mut port, mem, cap) = port();
        mem.write_slice(b"one exit\n", GuestAddress(0x2000))
            .unwrap();
        request(&mem, 0x1000, 0x2000, 9);
        assert_eq!(port.write(0, &0x1000u32.to_le_bytes()), BusAction::None);
        request(&mem, 0x1000, 0x2000, 0);
        assert_eq!(port.write(0, &0x1000u32.to_le_bytes()), BusAction::None);
        assert_eq!(&*cap.0.lock().unwrap(), b"one exit\n");
    }

    #[test]
    fn bad_requests_stop_the_vm_and_write_nothing() {
        let (mut port, mem, cap) = port();
        // Request outside RAM; bytes outside RAM; too long; wrong access width.
        assert_eq!(
            port.write(0, &0xfff9u32.to_le_bytes()),
            BusAction::DeviceError
        );
        request(&mem, 0x1000, 0xfff0, 0x20);
        assert_eq!(
            port.write(0, &0x1000u32.to_le_bytes()),
            BusAction::DeviceError
        );
        request(&mem, 0x1000, 0x2000, CONSOLE_WRITE_MAX + 1);
        assert_eq!(
            port.write(0, &0x1000u32.to_le_bytes()),
            BusAction::DeviceError
        );
        assert_eq!(port.write(0, &[0x10]), BusAction::DeviceError);
        assert!(cap.0.lock().unwrap().is_empty());
    }
}
