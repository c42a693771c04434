//! virtio devices (virtio 1.2): the virtio-mmio transport (section 4.2, the modern "version 2"
//! register layout) and the vsock device (section 5.10), with split virtqueues (section 2.7)
//! handled by `virtio-queue`. A device implements [`VirtioDevice`] and never sees the bus: the
//! [`MmioTransport`] owns the registers, the feature and status handshake (section 3.1) and the
//! queue configuration, and hands the device its queues on DRIVER_OK.
//!
//! # Wiring a vsock device (what the VMM does)
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use devices::virtio::{MmioTransport, vsock::Vsock};
//! use devices::{Bus, BusDevice, EventFdInterrupt, Interrupt};
//! use dust_abi::devices::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! # fn wire(mem: vm_memory::GuestMemoryMmap<()>, mmio_bus: &mut Bus,
//! #         irq: Arc<EventFdInterrupt>) -> Result<(), Box<dyn std::error::Error>> {
//! // 1. The device: binds `<run_dir>/<vm-id>.vsock` (removed again when the device drops).
//! //    `on_error` runs (on the event-manager thread) once if the guest hands the device
//! //    something it cannot process (bad descriptor chain, ...): stop the VM as "device error".
//! let on_error: devices::virtio::ErrorHandler = Arc::new(|msg: &str| eprintln!("vsock: {msg}"));
//! let vsock = Arc::new(Mutex::new(Vsock::new("/run/dust/vm1.vsock".into(), on_error)?));
//!
//! // 2. The transport, on the MMIO bus at VIRTIO_MMIO_BASE (cmdline:
//! //    `virtio_mmio.device=4K@0xd0000000:5`). `irq` is what the device triggers: an irqfd
//! //    with an in-kernel irqchip, the vCPU wake-up eventfd without one.
//! let transport = MmioTransport::new(mem, vsock.clone(), irq)?;
//! // Optional fast path: register each queue eventfd as a KVM ioeventfd at
//! // VIRTIO_MMIO_BASE + NOTIFY_REG_OFFSET (4 bytes) with datamatch = queue index; such
//! // notifications then never reach the bus.
//! for (index, evt) in transport.queue_evts().iter().enumerate() {
//!     let _ = (index, evt, devices::virtio::NOTIFY_REG_OFFSET); // vm_fd.register_ioevent(...)
//! }
//! let transport: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(transport));
//! mmio_bus.insert(transport, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE)?;
//!
//! // 3. The same device object is the event subscriber: queue kicks, the Unix listener and
//! //    every connection are served on the event-manager thread, never on a vCPU thread.
//! let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> = EventManager::new()?;
//! em.add_subscriber(vsock);
//! // loop { em.run()?; }   (on the VMM's event thread)
//! # Ok(()) }
//! ```
//!
//! # Contract
//!
//! - Locking: the vCPU thread locks the device only for config-space accesses, FEATURES_OK,
//!   DRIVER_OK (activation) and reset; queue notifications go through eventfds. The event
//!   thread locks it while it serves one event. Neither ever blocks on a socket.
//! - `on_error` is called with the device locked, on the event thread: it must not block or
//!   lock the device (set a flag, write an eventfd, send on a channel). The device stays
//!   stopped until the driver resets it. Register-level failures (a queue outside guest
//!   memory at DRIVER_OK) come back from the bus write as [`crate::BusAction::DeviceError`].
//! - The socket path must not exist: [`vsock::Vsock::new`] fails with `VsockError::Bind`
//!   rather than unlink someone else's socket. Use a fresh path per VM.
//! - Guests must advertise credit as they consume (Linux does; with virtio-drivers call
//!   `VsockConnectionManager::update_credit` after `recv`): the device asks once with
//!   OP_CREDIT_REQUEST when the guest's buffer is full and then waits for the guest's
//!   `fwd_cnt` to move, instead of ping-ponging requests.
//! - Offered features: `VIRTIO_F_VERSION_1` only (no event index, no indirect descriptors,
//!   no packed rings), so every used buffer raises the interrupt: in no-irqchip mode that is
//!   also what wakes a halted vCPU.

mod mmio;
#[cfg(test)]
mod testing;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::Interrupt;

pub use mmio::{MmioSnapshot, MmioTransport, QueueSnapshot, NOTIFY_REG_OFFSET};

/// Guest memory as devices see it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Called once, from the thread that found it, when a device meets guest input it cannot
/// process (a malformed descriptor chain, a buffer outside guest RAM, ...). The device has
/// stopped processing its queues by then; the VMM should stop the VM with a "device error"
/// status. The argument says what went wrong, for the log.
pub type ErrorHandler = Arc<dyn Fn(&str) + Send + Sync>;

/// `VIRTIO_F_VERSION_1`: the device is a modern (non-legacy) virtio device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// InterruptStatus bit: the device used a buffer in at least one queue.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the device configuration changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not hand over as many queues as the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the transport handed over.
        got: usize,
    },
    /// A queue the device needs is not ready, or lies outside guest memory.
    #[error("queue {0} is not ready or not valid")]
    InvalidQueue(usize),
    /// The device is already active.
    #[error("device already activated")]
    AlreadyActive,
    /// Signalling the device's own event thread failed.
    #[error("cannot signal the device's event thread: {0}")]
    Kick(#[source] io::Error),
}

/// Errors of the virtio transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A queue eventfd could not be duplicated for the transport.
    #[error("cannot duplicate a queue eventfd: {0}")]
    QueueEvent(#[source] io::Error),
    /// The device offers a queue size virtio-queue rejects.
    #[error("invalid queue max size {0}")]
    QueueSize(u16),
    /// The device's queue eventfds do not match its queue count.
    #[error("device has {queues} queues but {events} queue eventfds")]
    QueueEventCount {
        /// Number of queues.
        queues: usize,
        /// Number of eventfds.
        events: usize,
    },
    /// The device cannot be saved now.
    #[error("snapshot refused: {0}")]
    SnapshotBlocked(SnapshotBlocker),
    /// The transport was active but its device handed over no queues to save.
    #[error("snapshot refused: the transport is active but its device has no queues")]
    NoDeviceQueues,
    /// The saved state is of another device.
    #[error("snapshot is of device type {saved_type} with {saved_queues} queues, this is type {device_type} with {queues}")]
    SnapshotMismatch {
        /// Device type in the snapshot.
        saved_type: u32,
        /// Queues in the snapshot.
        saved_queues: usize,
        /// This device's type.
        device_type: u32,
        /// This device's queues.
        queues: usize,
    },
    /// A saved queue is not one virtio-queue accepts (size, alignment, addresses).
    #[error("snapshot queue refused: {0}")]
    SavedQueue(#[source] virtio_queue::Error),
    /// The device refused the saved queues on activation.
    #[error("activating the restored device: {0}")]
    Restore(#[source] ActivateError),
}

/// Why a device's state cannot be saved now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotBlocker {
    /// The device stopped on a guest error.
    #[error("the device has failed")]
    Failed,
    /// Streams are open; their host sockets cannot be saved.
    #[error("the device has {0} open connection(s)")]
    OpenConnections(usize),
}

/// The device side of an interrupt line, shared by the transport (which shows and clears
/// InterruptStatus) and the active device (which raises it).
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: Arc<dyn Interrupt>,
}

impl VirtioInterrupt {
    /// A line with no pending cause, delivered through `irq`.
    pub fn new(irq: Arc<dyn Interrupt>) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// Tell the driver that buffers were used.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        self.irq.trigger()
    }

    /// Tell the driver that the configuration changed (or that the device needs a reset).
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        self.irq.trigger()
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Set the interrupt status as a snapshot recorded it.
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The driver acknowledged the causes in `bits` (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for VirtioInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioInterrupt")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// A virtio device model, driven by a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (section 5), e.g. 19 for vsock.
    fn device_type(&self) -> u32;

    /// Feature bits the device offers (section 6), including [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// The driver accepted `features` (a subset of [`Self::avail_features`]) with FEATURES_OK.
    fn ack_features(&mut self, features: u64);

    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// One eventfd per queue, signalled when the driver notifies that queue. The transport
    /// duplicates them at construction.
    fn queue_events(&self) -> &[EventFd];

    /// Read device-specific configuration at `offset` (relative to config space). Bytes
    /// outside the config space stay as they are.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Write device-specific configuration at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set DRIVER_OK: start processing `queues` (in device order, each with the
    /// driver's configuration; queues the driver left unready have `ready() == false`) in
    /// `mem`, raising `interrupt` after using buffers.
    fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError>;

    /// The driver reset the device (status 0): drop the queues and any guest-visible state.
    fn reset(&mut self);

    /// The active device's queues with their progress (next available and used index), for
    /// a snapshot; `None` before activation.
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>>;

    /// Why the device's state cannot be saved now (e.g. open connections), if it cannot.
    fn snapshot_blocker(&self) -> Option<SnapshotBlocker>;
}
