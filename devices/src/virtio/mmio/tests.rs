use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::testing::{r32, reg, status, w32, FakeDriver};
use crate::virtio::{ActivateError, GuestMem, INT_CONFIG, INT_VRING};
use crate::EventFdInterrupt;

/// A device that records what the transport does to it.
struct FakeDevice {
    evts: Vec<EventFd>,
    acked: u64,
    activated: Option<Vec<Queue>>,
    resets: usize,
    config: [u8; 8],
}

impl FakeDevice {
    fn new() -> Self {
        Self {
            evts: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            acked: 0,
            activated: None,
            resets: 0,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        }
    }
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << 3
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 32]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.config.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let start = offset as usize;
        if let Some(dst) = self.config.get_mut(start..start + data.len()) {
            dst.copy_from_slice(data);
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMem,
        queues: Vec<Queue>,
        _interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.activated = Some(queues);
        Ok(())
    }
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        None
    }

    fn snapshot_blocker(&self) -> Option<crate::virtio::SnapshotBlocker> {
        None
    }

    fn reset(&mut self) {
        self.resets += 1;
        self.activated = None;
    }
}

fn transport(drv: &FakeDriver) -> (MmioTransport, Arc<Mutex<FakeDevice>>, Arc<EventFdInterrupt>) {
    let dev = Arc::new(Mutex::new(FakeDevice::new()));
    let irq = Arc::new(EventFdInterrupt::new().unwrap());
    let t = MmioTransport::new(drv.mem.clone(), dev.clone(), irq.clone()).unwrap();
    (t, dev, irq)
}

#[test]
fn identification_registers() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (mut t, _, _) = transport(&drv);
    assert_eq!(r32(&mut t, reg::MAGIC), 0x7472_6976);
    assert_eq!(r32(&mut t, reg::VERSION), 2);
    assert_eq!(r32(&mut t, reg::DEVICE_ID), 42);
    assert_eq!(r32(&mut t, reg::VENDOR), u32::from_le_bytes(*b"dust"));
    w32(&mut t, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(r32(&mut t, reg::DEVICE_FEATURES), 1 << 3);
    w32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r32(&mut t, reg::DEVICE_FEATURES), 1);
    w32(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r32(&mut t, reg::DEVICE_FEATURES), 0);
    assert_eq!(r32(&mut t, reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(r32(&mut t, reg::CONFIG_GENERATION), 0);
    w32(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_NUM_MAX), 32);
    w32(&mut t, reg::QUEUE_SEL, 2);
    assert_eq!(r32(&mut t, reg::QUEUE_NUM_MAX), 0);
}

#[test]
fn full_handshake_activates_with_the_drivers_queues() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (mut t, dev, _) = transport(&drv);
    drv.setup(&mut t);
    let d = dev.lock().unwrap();
    assert_eq!(d.acked, VIRTIO_F_VERSION_1 | 1 << 3);
    let queues = d.activated.as_ref().expect("activated");
    assert_eq!(queues.len(), 2);
    assert!(queues.iter().all(|q| q.ready() && q.size() == 16));
    assert_eq!(queues[1].desc_table(), drv.queues[1].desc);
    assert_eq!(queues[1].avail_ring(), drv.queues[1].avail);
    assert_eq!(queues[1].used_ring(), drv.queues[1].used);
}

#[test]
fn features_ok_needs_version_1_and_known_bits() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (mut t, _, _) = transport(&drv);
    let s = status::ACKNOWLEDGE | status::DRIVER;
    w32(&mut t, reg::STATUS, s);
    // Legacy driver: no VERSION_1.
    w32(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w32(&mut t, reg::DRIVER_FEATURES, 1 << 3);
    w32(&mut t, reg::STATUS, s | status::FEATURES_OK);
    assert_eq!(r32(&mut t, reg::STATUS), s);
    // A bit the device does not offer.
    w32(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w32(&mut t, reg::DRIVER_FEATURES, 1 | 2);
    w32(&mut t, reg::STATUS, s | status::FEATURES_OK);
    assert_eq!(r32(&mut t, reg::STATUS), s);
    w32(&mut t, reg::DRIVER_FEATURES, 1);
    w32(&mut t, reg::STATUS, s | status::FEATURES_OK);
    assert_eq!(r32(&mut t, reg::STATUS), s | status::FEATURES_OK);
    // DRIVER_OK without FEATURES_OK is refused; clearing bits without reset is ignored.
    w32(&mut t, reg::STATUS, s | status::DRIVER_OK);
    assert_eq!(r32(&mut t, reg::STATUS), s | status::FEATURES_OK);
}

#[test]
fn driver_ok_with_a_queue_outside_memory_is_a_device_error() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (mut t, dev, irq) = transport(&drv);
    let s = status::ACKNOWLEDGE | status::DRIVER;
    w32(&mut t, reg::STATUS, s);
    w32(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w32(&mut t, reg::DRIVER_FEATURES, 1);
    w32(&mut t, reg::STATUS, s | status::FEATURES_OK);
    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_NUM, 16);
    w32(&mut t, reg::QUEUE_DESC_LOW, 0xfff0_0000);
    w32(&mut t, reg::QUEUE_READY, 1);
    let action = w32(
        &mut t,
        reg::STATUS,
        s | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_eq!(action, BusAction::DeviceError);
    assert!(dev.lock().unwrap().activated.is_none());
    assert_ne!(r32(&mut t, reg::STATUS) & status::NEEDS_RESET, 0);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
    assert!(irq.take());
}

#[test]
fn notify_signals_the_queue_eventfd_and_interrupts_are_acked() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (mut t, dev, irq) = transport(&drv);
    drv.setup(&mut t);
    w32(&mut t, reg::QUEUE_NOTIFY, 1);
    w32(&mut t, reg::QUEUE_NOTIFY, 7); // no such queue: ignored
    {
        let d = dev.lock().unwrap();
        assert!(d.evts[0].read().is_err());
        assert_eq!(d.evts[1].read().unwrap(), 1);
    }
    // The transport's eventfds are the device's (duplicated), for KVM ioeventfds.
    t.queue_evts()[0].write(1).unwrap();
    assert_eq!(dev.lock().unwrap().evts[0].read().unwrap(), 1);

    t.interrupt().signal_used_queue().unwrap();
    assert!(irq.take());
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
    w32(&mut t, reg::INTERRUPT_ACK, INT_VRING);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn config_space_any_width_registers_only_32_bit() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (mut t, dev, _) = transport(&drv);
    let mut b1 = [0u8; 1];
    t.read(reg::CONFIG + 2, &mut b1);
    assert_eq!(b1, [3]);
    let mut b8 = [0u8; 8];
    t.read(reg::CONFIG, &mut b8);
    assert_eq!(b8, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        r32(&mut t, reg::CONFIG + 4),
        u32::from_le_bytes([5, 6, 7, 8])
    );
    let mut past = [0u8; 4];
    t.read(reg::CONFIG + 6, &mut past);
    assert_eq!(past, [0; 4]);
    t.write(reg::CONFIG + 1, &[9, 9]);
    assert_eq!(dev.lock().unwrap().config[1..3], [9, 9]);

    // Narrow, wide and unaligned register accesses read as zero and do nothing.
    let mut b2 = [0u8; 2];
    t.read(reg::MAGIC, &mut b2);
    assert_eq!(b2, [0, 0]);
    t.read(reg::MAGIC + 1, &mut [0u8; 4]);
    let mut wide = [0u8; 8];
    t.read(reg::MAGIC, &mut wide);
    assert_eq!(wide, [0; 8]);
    assert_eq!(t.write(reg::STATUS, &[1]), BusAction::None);
    assert_eq!(
        t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]),
        BusAction::None
    );
    assert_eq!(t.write(reg::STATUS + 2, &[1, 0, 0, 0]), BusAction::None);
    assert_eq!(r32(&mut t, reg::STATUS), 0);
}

#[test]
fn reset_returns_everything_to_the_initial_state() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (mut t, dev, _) = transport(&drv);
    drv.setup(&mut t);
    t.interrupt().signal_used_queue().unwrap();
    // Queue configuration after DRIVER_OK is ignored, but clearing QueueReady reads back.
    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_NUM, 4);
    w32(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    w32(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);

    w32(&mut t, reg::STATUS, 0);
    assert_eq!(r32(&mut t, reg::STATUS), 0);
    assert_eq!(r32(&mut t, reg::INTERRUPT_STATUS), 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert!(dev.lock().unwrap().activated.is_none());
    w32(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r32(&mut t, reg::QUEUE_READY), 0);
    // And the device can be brought up again.
    drv.setup(&mut t);
    assert!(dev.lock().unwrap().activated.is_some());
}

#[test]
fn a_snapshot_of_another_device_or_with_bad_queues_is_refused_by_kind() {
    let drv = FakeDriver::new(1 << 20, 2, 16);
    let (t, _, _) = transport(&drv);
    // Before DRIVER_OK: the fake device keeps no queues of its own to save.
    let snap = t.snapshot().unwrap();
    let mut json = serde_json::to_value(&snap).unwrap();
    json["device_type"] = 19.into();
    let other: MmioSnapshot = serde_json::from_value(json).unwrap();
    let (mut fresh, _, _) = transport(&drv);
    assert!(matches!(
        fresh.restore(&other),
        Err(VirtioError::SnapshotMismatch {
            saved_type: 19,
            device_type: 42,
            ..
        })
    ));
    // A queue size that is not a power of two is virtio-queue's to refuse.
    let mut json = serde_json::to_value(&snap).unwrap();
    json["queues"][0]["size"] = 3.into();
    let bad: MmioSnapshot = serde_json::from_value(json).unwrap();
    let (mut fresh, _, _) = transport(&drv);
    assert!(matches!(
        fresh.restore(&bad),
        Err(VirtioError::SavedQueue(_))
    ));
    // The good one restores.
    let (mut fresh, _, _) = transport(&drv);
    fresh.restore(&snap).unwrap();
}
