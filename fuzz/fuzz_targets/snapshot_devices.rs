//! Restoring devices from a snapshot's saved state (JSON, as in the state file): the UART's
//! registers and FIFO, the virtio-mmio transport's registers and every queue's addresses
//! and indices, then the vsock device activated on them and given a turn. A tampered
//! snapshot must be refused or run, never panic the host.
#![no_main]

use std::sync::Arc;

use devices::legacy::{Serial, SerialSink, SerialSnapshot};
use devices::virtio::MmioSnapshot;
use dust_fuzz::Rig;
use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize)]
struct Saved {
    serial: Option<SerialSnapshot>,
    vsock: Option<MmioSnapshot>,
    /// Queues to notify after the restore.
    #[serde(default)]
    kicks: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(saved) = serde_json::from_slice::<Saved>(data) else {
        return;
    };
    if let Some(s) = &saved.serial {
        if let Ok(irq) = devices::EventFdInterrupt::new() {
            if let Ok(mut uart) = Serial::restored(Arc::new(irq), SerialSink::Discard, s) {
                for off in 0..8 {
                    let mut b = [0u8];
                    devices::BusDevice::read(&mut uart, off, &mut b);
                }
            }
        }
    }
    let Some(snap) = &saved.vsock else { return };
    let Some(mut rig) = Rig::new() else { return };
    if rig.transport.restore(snap).is_err() {
        return;
    }
    rig.run();
    for q in saved.kicks.iter().take(8) {
        rig.notify(u32::from(*q % 3));
    }
});
