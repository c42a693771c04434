//! virtio-mmio from a guest that writes anything: register reads and writes of any width at
//! any offset of the window (config space included), raw guest memory (descriptor tables,
//! rings, buffers wherever the registers point), queue notifications, then the vsock
//! device's turn on the event thread. The host must neither panic nor hang.
#![no_main]

use arbitrary::Arbitrary;
use dust_fuzz::Rig;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Write { offset: u16, value: u64, width: u8 },
    Read { offset: u16, width: u8 },
    Poke { addr: u32, bytes: Vec<u8> },
    Notify { queue: u8 },
    Run,
}

fn width(w: u8) -> usize {
    [1, 2, 4, 8, 3][usize::from(w % 5)]
}

fuzz_target!(|ops: Vec<Op>| {
    let Some(mut rig) = Rig::new() else { return };
    for op in ops.into_iter().take(256) {
        match op {
            Op::Write {
                offset,
                value,
                width: w,
            } => {
                let bytes = value.to_le_bytes();
                let _ = devices::BusDevice::write(
                    &mut rig.transport,
                    u64::from(offset % 0x200),
                    &bytes[..width(w)],
                );
            }
            Op::Read { offset, width: w } => {
                let mut buf = [0u8; 8];
                devices::BusDevice::read(
                    &mut rig.transport,
                    u64::from(offset % 0x200),
                    &mut buf[..width(w)],
                );
            }
            Op::Poke { addr, bytes } => {
                rig.poke(u64::from(addr) % dust_fuzz::MEM_SIZE as u64, &bytes)
            }
            Op::Notify { queue } => rig.notify(u32::from(queue % 4)),
            Op::Run => rig.run(),
        }
    }
});
