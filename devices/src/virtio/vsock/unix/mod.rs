//! The vsock backend: Firecracker's hybrid protocol over Unix sockets.
//!
//! - Host-initiated: a client connects to the device's socket `uds_path`, sends
//!   `CONNECT <port>\n`, and receives `OK <host_port>\n` once the guest accepted (both lines
//!   are written and parsed by `dust_abi::vsock`, which host clients use too); from then on
//!   the Unix stream is the guest socket. If the guest refuses (RST), the client's socket is
//!   closed.
//! - Guest-initiated: a guest connection to CID 2, port `P` is connected to the Unix socket
//!   `<uds_path>_P`.

mod connection;
mod credit;
mod muxer;
mod sys;
mod txbuf;

pub(crate) use muxer::VsockMuxer;

/// Receive buffer we advertise per connection (`buf_alloc`): guest -> host bytes that may be
/// in flight, unforwarded to the host stream.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;

/// Most connections (established, connecting, or host clients still sending their CONNECT
/// line) at once; more are refused (host clients closed, guest requests reset).
pub const MAX_CONNECTIONS: usize = 1024;

/// First host-side port handed to host-initiated connections (`OK <host_port>`).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
