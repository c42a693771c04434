//! virtio-vsock, host side (virtio 1.2 section 5.10), with Firecracker's hybrid Unix-socket
//! backend: the guest (CID 3, `dust_abi::vsock::GUEST_CID`) talks stream sockets to the host
//! (CID 2), and every guest connection is a Unix stream on the host.
//!
//! - [`Vsock`] (`device.rs`) is the virtio device: config space (`guest_cid`), the rx (0),
//!   tx (1) and event (2) queues, and moving packets between queues and the backend.
//! - `event_handler.rs` makes it an `event_manager::MutEventSubscriber`: queue eventfds, the
//!   listening socket and every connection's stream are served on the VMM's event thread.
//! - [`packet`]: header constants and building; parsing descriptor chains is
//!   `virtio_vsock::packet::VsockPacket`'s.
//! - `unix/`: the backend (the muxer, one connection object per stream, credit flow
//!   control, `CONNECT <port>\n` / `OK <port>\n`, `<uds_path>_<port>` for guest connects).
//!
//! Only stream sockets (`VIRTIO_VSOCK_TYPE_STREAM`) are supported; the event queue is never
//! used (no transport resets: the VM never migrates).

mod device;
mod event_handler;
pub mod packet;
pub mod unix;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::Vsock;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
/// Guest -> host packets.
pub const TX_QUEUE: usize = 1;
/// Transport events (unused by this device).
pub const EVENT_QUEUE: usize = 2;
/// Size offered for each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The listening socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// The guest's virtqueue is broken (bad ring index, memory outside guest RAM, ...).
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A descriptor chain does not hold a valid vsock packet (wrong direction, too short,
    /// outside guest RAM, length field too large, ...).
    #[error("malformed packet: {0}")]
    Packet(#[from] virtio_vsock::packet::Error),
}
