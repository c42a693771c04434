//! Saving and restoring a virtio-mmio transport with its device: the registers the driver
//! wrote, every queue's configuration, and (once DRIVER_OK activated the device) the
//! device's own queue copies with their progress, so a restored driver and device carry on
//! where they were.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::{lock, MmioTransport};
use crate::virtio::VirtioError;

/// A queue's state (virtio-queue's `QueueState`, which has no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl QueueSnapshot {
    fn queue(&self) -> Result<Queue, VirtioError> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(VirtioError::SavedQueue)
    }
}

/// A transport and its device, as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioSnapshot {
    device_type: u32,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    queues: Vec<QueueSnapshot>,
    /// The active device's queues; `None` if DRIVER_OK was never reached.
    device_queues: Option<Vec<QueueSnapshot>>,
}

impl MmioTransport {
    /// Save the transport and its device. Fails if the device cannot be saved now.
    pub fn snapshot(&self) -> Result<MmioSnapshot, VirtioError> {
        let dev = lock(&self.device);
        if let Some(why) = dev.snapshot_blocker() {
            return Err(VirtioError::SnapshotBlocked(why));
        }
        let device_queues = if self.activated {
            let qs = dev.queue_states().ok_or(VirtioError::NoDeviceQueues)?;
            Some(qs.into_iter().map(QueueSnapshot::from).collect())
        } else {
            None
        };
        Ok(MmioSnapshot {
            device_type: self.device_type,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            device_queues,
        })
    }

    /// Put a freshly built transport (and its device) in the state `snap` describes.
    pub fn restore(&mut self, snap: &MmioSnapshot) -> Result<(), VirtioError> {
        if snap.device_type != self.device_type || snap.queues.len() != self.queues.len() {
            return Err(VirtioError::SnapshotMismatch {
                saved_type: snap.device_type,
                saved_queues: snap.queues.len(),
                device_type: self.device_type,
                queues: self.queues.len(),
            });
        }
        self.queues = snap
            .queues
            .iter()
            .map(QueueSnapshot::queue)
            .collect::<Result<_, _>>()?;
        self.status = snap.status;
        self.device_features_sel = snap.device_features_sel;
        self.driver_features_sel = snap.driver_features_sel;
        self.driver_features = snap.driver_features;
        self.queue_sel = snap.queue_sel;
        self.interrupt.set_status(snap.interrupt_status);
        if let Some(dq) = &snap.device_queues {
            let queues = dq
                .iter()
                .map(QueueSnapshot::queue)
                .collect::<Result<Vec<_>, _>>()?;
            let mut dev = lock(&self.device);
            dev.ack_features(self.driver_features);
            dev.activate(self.mem.clone(), queues, self.interrupt.clone())
                .map_err(VirtioError::Restore)?;
            drop(dev);
            self.activated = true;
        }
        Ok(())
    }
}
