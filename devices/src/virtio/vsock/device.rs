//! The vsock virtio device: config space, activation, and the RX/TX queue loops.
//!
//! TX: every available chain is parsed into a packet (`VsockPacket::from_tx_virtq_chain`),
//! handed to the muxer, and returned used (length 0). RX: while the muxer owes the guest a
//! packet, a chain is popped, parsed (`from_rx_virtq_chain`), filled in place (payload read
//! straight from the host stream into guest memory), and returned used; if nothing was
//! owed after all, the chain goes back. Any malformed chain or ring stops the device for good
//! (until a reset) and is reported through the [`ErrorHandler`].

use std::sync::Arc;

use tracing::{error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{HEADER_SIZE, MAX_PKT_DATA};
use super::unix::VsockMuxer;
use super::{VsockError, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::virtio::{
    ActivateError, ErrorHandler, GuestMem, SnapshotBlocker, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};

/// virtio device ID of vsock.
const VIRTIO_ID_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// Rounds of TX then RX per event, when TX waits for RX to drain control packets.
const MAX_ROUNDS: usize = 4;

/// The queues and memory of an activated device.
struct Active {
    mem: GuestMem,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
}

/// The vsock device. Wrap it in `Arc<Mutex<_>>`: one clone goes to the
/// [`crate::virtio::MmioTransport`], the other to the VMM's event manager.
pub struct Vsock {
    pub(super) muxer: VsockMuxer,
    pub(super) queue_evts: [EventFd; 3],
    /// Wakes the event thread after activation (work may be waiting) and reset (streams to
    /// close).
    pub(super) kick_evt: EventFd,
    acked_features: u64,
    active: Option<Active>,
    on_error: ErrorHandler,
    failed: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("muxer", &self.muxer)
            .field("active", &self.active.is_some())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Outcome of one pass over a queue.
#[derive(Default)]
struct Pass {
    /// Buffers were used: the guest should look.
    used: bool,
    /// TX waits for RX to drain control packets.
    blocked: bool,
    /// The pass stopped at its budget with work left.
    more: bool,
}

impl Vsock {
    /// A vsock device listening on `uds_path` for host-initiated connections (the socket is
    /// created now and removed when the device drops). Guest-initiated connections to host
    /// port P go to `<uds_path>_P`. `on_error` is called once if the guest breaks the device.
    pub fn new(uds_path: std::path::PathBuf, on_error: ErrorHandler) -> Result<Self, VsockError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            queue_evts: [evt()?, evt()?, evt()?],
            kick_evt: evt()?,
            muxer: VsockMuxer::new(uds_path)?,
            acked_features: 0,
            active: None,
            on_error,
            failed: false,
        })
    }

    /// The guest broke the device (it stays stopped until the driver resets it).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Live guest connections (host clients still sending `CONNECT` not included).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Whether the driver has activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub(super) fn fail(&mut self, err: &VsockError) {
        if self.failed {
            return;
        }
        self.failed = true;
        let msg = format!("virtio-vsock: {err}");
        error!("{msg}; device stopped");
        (self.on_error)(&msg);
    }

    /// Move packets both ways and raise the interrupt if the guest has used buffers to look
    /// at. Called by the event handler after every event.
    pub(super) fn process_queues(&mut self) {
        if self.failed {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match run(&mut self.muxer, active) {
            Ok(pass) => {
                if pass.used {
                    if let Err(e) = active.interrupt.signal_used_queue() {
                        warn!("virtio-vsock: cannot raise the interrupt: {e}");
                    }
                }
                // A busy guest (or host) must not keep the event thread from its other
                // sockets: work beyond the budget waits for the next round of the loop.
                if pass.more {
                    if let Err(e) = self.kick_evt.write(1) {
                        warn!("virtio-vsock: cannot reschedule queue work: {e}");
                    }
                }
            }
            Err(e) => self.fail(&e),
        }
    }
}

fn run(muxer: &mut VsockMuxer, active: &mut Active) -> Result<Pass, VsockError> {
    let mut total = Pass::default();
    for _ in 0..MAX_ROUNDS {
        let tx = process_tx(muxer, active)?;
        let rx = process_rx(muxer, active)?;
        total.used |= tx.used | rx.used;
        total.more = tx.more || rx.more;
        if !(tx.blocked && rx.used) {
            break;
        }
    }
    Ok(total)
}

fn process_tx(muxer: &mut VsockMuxer, active: &mut Active) -> Result<Pass, VsockError> {
    let mem = &active.mem;
    let Some(queue) = active.queues.get_mut(TX_QUEUE) else {
        return Ok(Pass::default());
    };
    let mut pass = Pass {
        more: true,
        ..Pass::default()
    };
    for _ in 0..queue.size() {
        if muxer.tx_must_wait() {
            pass.blocked = true;
            pass.more = false;
            break;
        }
        let Some(mut chain) = queue.iter(mem)?.next() else {
            pass.more = false;
            break;
        };
        let head = chain.head_index();
        let pkt = VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA)?;
        muxer.send_pkt(&pkt);
        queue.add_used(mem, head, 0)?;
        pass.used = true;
    }
    Ok(pass)
}

fn process_rx(muxer: &mut VsockMuxer, active: &mut Active) -> Result<Pass, VsockError> {
    let mem = &active.mem;
    let Some(queue) = active.queues.get_mut(RX_QUEUE) else {
        return Ok(Pass::default());
    };
    let mut pass = Pass::default();
    for _ in 0..queue.size() {
        if !muxer.has_pending_rx() {
            return Ok(pass);
        }
        let Some(mut chain) = queue.iter(mem)?.next() else {
            return Ok(pass);
        };
        let head = chain.head_index();
        let mut pkt = VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA)?;
        match muxer.recv_pkt(&mut pkt)? {
            Some(len) => {
                queue.add_used(mem, head, HEADER_SIZE as u32 + len)?;
                pass.used = true;
            }
            None => {
                // Nothing owed after all: the buffer stays available.
                queue.go_to_previous_position();
                return Ok(pass);
            }
        }
    }
    pass.more = muxer.has_pending_rx();
    Ok(pass)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = dust_abi::vsock::GUEST_CID.to_le_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| config.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!(
            offset,
            "virtio-vsock: config space is read-only; write ignored"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMem,
        mut queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != self.queue_evts.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_evts.len(),
                got: queues.len(),
            });
        }
        for index in [RX_QUEUE, TX_QUEUE] {
            if !queues.get(index).is_some_and(|q| q.is_valid(&mem)) {
                return Err(ActivateError::InvalidQueue(index));
            }
        }
        for q in &mut queues {
            q.set_event_idx(false);
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        self.failed = false;
        // Host clients may already be waiting for the guest.
        self.kick_evt.write(1).map_err(ActivateError::Kick)
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(Queue::state).collect())
    }

    fn snapshot_blocker(&self) -> Option<SnapshotBlocker> {
        if self.failed {
            return Some(SnapshotBlocker::Failed);
        }
        match self.muxer.connection_count() {
            0 => None,
            n => Some(SnapshotBlocker::OpenConnections(n)),
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.failed = false;
        self.muxer.reset();
        if let Err(e) = self.kick_evt.write(1) {
            warn!("virtio-vsock: cannot wake the event thread after reset: {e}");
        }
    }
}
