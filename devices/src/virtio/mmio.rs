//! The virtio-mmio transport, modern register layout (virtio 1.2 section 4.2.2, "version 2").
//!
//! Registers are 32 bits wide and must be accessed with aligned 32-bit loads and stores;
//! anything else reads as zero and is ignored on write. The device-specific config space at
//! 0x100 may be accessed with any width. Queue registers configure the queue selected by
//! QueueSel; on DRIVER_OK the transport hands the device a copy of every queue.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{GuestMem, VirtioDevice, VirtioError, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::{BusAction, BusDevice, Interrupt};

/// "virt", little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio layout.
const MMIO_VERSION: u32 = 2;
/// "dust", little endian.
const VENDOR_ID: u32 = u32::from_le_bytes(*b"dust");

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// Offset of the QueueNotify register: a 4-byte write of a queue index here signals that
/// queue's eventfd. A VMM may register the eventfds as KVM ioeventfds at this address.
pub const NOTIFY_REG_OFFSET: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_LEN_HIGH: u64 = 0x0b4;
const SHM_BASE_LOW: u64 = 0x0b8;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// The virtio-mmio window of one device. Put it on the MMIO bus (it is a [`BusDevice`]).
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMem,
    interrupt: Arc<VirtioInterrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    device_type: u32,
    avail_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
}

fn lock(device: &Mutex<dyn VirtioDevice>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    // A device that panicked left its state as it was; the VM is stopped anyway.
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MmioTransport {
    /// Wrap `device`, whose driver lives in `mem` and is interrupted through `irq`.
    pub fn new(
        mem: GuestMem,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<dyn Interrupt>,
    ) -> Result<Self, VirtioError> {
        let (device_type, avail_features, queues, queue_evts) = {
            let dev = lock(&device);
            let sizes = dev.queue_max_sizes();
            let evts = dev.queue_events();
            if evts.len() != sizes.len() {
                return Err(VirtioError::QueueEventCount {
                    queues: sizes.len(),
                    events: evts.len(),
                });
            }
            let queues = sizes
                .iter()
                .map(|&max| Queue::new(max).map_err(|_| VirtioError::QueueSize(max)))
                .collect::<Result<Vec<_>, _>>()?;
            let queue_evts = evts
                .iter()
                .map(|e| e.try_clone().map_err(VirtioError::QueueEvent))
                .collect::<Result<Vec<_>, _>>()?;
            (dev.device_type(), dev.avail_features(), queues, queue_evts)
        };
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            queue_evts,
            queues,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
        })
    }

    /// One eventfd per queue (index = queue index), signalled on a QueueNotify write. The VMM
    /// may register them as KVM ioeventfds at `base + NOTIFY_REG_OFFSET`, 4 bytes, with
    /// datamatch = queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt line shared with the device (InterruptStatus lives here).
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device status register (section 2.1).
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC => MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device_type,
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            // No shared memory regions: a length of -1 says "no such region".
            SHM_LEN_LOW | SHM_LEN_HIGH => u32::MAX,
            SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            // The vsock config space never changes.
            CONFIG_GENERATION => 0,
            _ => {
                debug!(
                    offset,
                    "virtio-mmio: read of a write-only or reserved register"
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) -> BusAction {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, value),
            QUEUE_READY => self.write_queue_ready(value),
            NOTIFY_REG_OFFSET => self.notify(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => return self.write_status(value),
            SHM_SEL => {}
            _ => debug!(
                offset,
                value, "virtio-mmio: write to a read-only or reserved register"
            ),
        }
        BusAction::None
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            warn!("virtio-mmio: driver features written after FEATURES_OK; ignored");
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => debug!(value, "virtio-mmio: driver features beyond bit 63 ignored"),
        }
    }

    fn queue_config_allowed(&self) -> bool {
        if self.activated || self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            debug!("virtio-mmio: queue configuration after DRIVER_OK ignored");
            return false;
        }
        true
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        if !self.queue_config_allowed() {
            return;
        }
        let Some(q) = self.selected_queue() else {
            debug!("virtio-mmio: queue register write with QueueSel out of range");
            return;
        };
        if q.ready() {
            debug!("virtio-mmio: queue register write while the queue is ready ignored");
            return;
        }
        match offset {
            QUEUE_NUM => q.set_size(value as u16),
            QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(value), None),
            QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(value)),
            QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(value), None),
            QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        // Clearing QueueReady is honoured even after DRIVER_OK, so that a driver tearing a
        // queue down reads back 0 (virtio-drivers waits for it); the active device keeps its
        // own copy until reset.
        if value != 0 && !self.queue_config_allowed() {
            return;
        }
        if let Some(q) = self.selected_queue() {
            q.set_ready(value == 1);
        }
    }

    fn notify(&self, value: u32) {
        match self.queue_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!(
                        queue = value,
                        "virtio-mmio: cannot signal queue eventfd: {e}"
                    );
                }
            }
            None => debug!(
                queue = value,
                "virtio-mmio: notify of a queue that does not exist"
            ),
        }
    }

    fn write_status(&mut self, value: u32) -> BusAction {
        if value == 0 {
            self.reset();
            return BusAction::None;
        }
        let old = self.status;
        if value & old != old {
            warn!(
                old,
                value, "virtio-mmio: driver cleared status bits without a reset; ignored"
            );
            return BusAction::None;
        }
        let mut new = value;
        let added = value & !old;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.accept_features() {
            new &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if new & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                warn!("virtio-mmio: DRIVER_OK without FEATURES_OK; ignored");
                new &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else if new & VIRTIO_CONFIG_S_FAILED == 0 {
                self.status = new;
                return self.activate();
            }
        }
        self.status = new;
        BusAction::None
    }

    /// FEATURES_OK: accept the driver's features if they are a subset of ours and modern.
    fn accept_features(&mut self) -> bool {
        let needed = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        if self.status & needed != needed {
            warn!("virtio-mmio: FEATURES_OK before ACKNOWLEDGE|DRIVER; refused");
            return false;
        }
        let unknown = self.driver_features & !self.avail_features;
        if unknown != 0 {
            warn!(
                unknown,
                "virtio-mmio: driver accepted features the device does not offer"
            );
            return false;
        }
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)");
            return false;
        }
        lock(&self.device).ack_features(self.driver_features);
        true
    }

    fn activate(&mut self) -> BusAction {
        let mut copies = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return self.fail_activation(&format!("queue {index} lies outside guest memory"));
            }
            match Queue::try_from(q.state()) {
                Ok(copy) => copies.push(copy),
                Err(e) => return self.fail_activation(&format!("queue {index}: {e}")),
            }
        }
        let result = lock(&self.device).activate(self.mem.clone(), copies, self.interrupt.clone());
        match result {
            Ok(()) => {
                self.activated = true;
                BusAction::None
            }
            Err(e) => self.fail_activation(&e.to_string()),
        }
    }

    fn fail_activation(&mut self, why: &str) -> BusAction {
        warn!(
            "virtio-mmio: device {} not activated: {why}",
            self.device_type
        );
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            warn!("virtio-mmio: cannot raise the config interrupt: {e}");
        }
        BusAction::DeviceError
    }

    fn reset(&mut self) {
        if self.activated || self.status != 0 {
            lock(&self.device).reset();
        }
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
    }
}

/// A register access must be 4 bytes wide and 4-byte aligned.
fn reg_access(offset: u64, len: usize) -> bool {
    len == 4 && offset.is_multiple_of(4)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
        } else if reg_access(offset, data.len()) {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            debug!(
                offset,
                len = data.len(),
                "virtio-mmio: bad register read width"
            );
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if offset >= CONFIG_SPACE {
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
            return BusAction::None;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if reg_access(offset, data.len()) => {
                self.write_reg(offset, u32::from_le_bytes(bytes))
            }
            _ => {
                debug!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: bad register write width"
                );
                BusAction::None
            }
        }
    }
}

mod snapshot;
pub use snapshot::{MmioSnapshot, QueueSnapshot};

#[cfg(test)]
mod tests;
