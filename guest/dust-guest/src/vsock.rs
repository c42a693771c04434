//! virtio-vsock stream sockets for guests that poll (virtio 1.2 section 5.10).
//!
//! [`Vsock`] owns the device (virtio-drivers' low-level [`VirtIOSocket`] over the first
//! announced virtio-mmio vsock device) and a table of connections, several at once. Nothing
//! blocks: [`Vsock::poll`] drains the device's receive queue into per-connection buffers,
//! and [`read`](Vsock::read) / [`write`](Vsock::write) return [`Error::WouldBlock`] when they
//! cannot make progress. A guest's main loop is
//!
//! ```ignore
//! loop {
//!     let mut progress = vsock.poll()?;
//!     // accept, read, write ... (progress |= ...)
//!     if !progress { vsock.wait() } // `hlt` until the VMM has work for the guest
//! }
//! ```
//!
//! There are no interrupts: when a round makes no progress the guest executes `hlt` and the
//! VMM resumes it when the device has news. Flow control follows the spec's credit scheme:
//! each connection advertises [`CONN_BUFFER`] bytes of receive space, a write never exceeds
//! the peer's free space, and credit updates go out when half the buffer has been read.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use virtio_drivers::device::socket::{
    ConnectionInfo, DisconnectReason, SocketError, VirtIOSocket, VsockAddr, VsockEvent,
    VsockEventType,
};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::virtio::DustHal;

pub use dust_abi::vsock::{GUEST_CID, HOST_CID};

/// Size of each receive-queue buffer (header included): larger buffers mean fewer packets
/// (each costs a queue notification) for bulk data.
const RX_BUFFER_SIZE: usize = 16 * 1024;
/// Receive space each connection advertises to its peer.
pub const CONN_BUFFER: usize = 64 * 1024;
/// Largest payload of one packet we send (the host's limit is 64 KiB).
const MAX_SEND: usize = 64 * 1024;
/// First local port for outgoing connections.
const FIRST_EPHEMERAL_PORT: u32 = 49152;

type Driver = VirtIOSocket<DustHal, MmioTransport<'static>, RX_BUFFER_SIZE>;

/// A vsock error.
#[derive(Debug)]
pub enum Error {
    /// No virtio-mmio vsock device is announced on the command line.
    NoDevice,
    /// Nothing to read or no credit to write yet: poll and try again.
    WouldBlock,
    /// The stream is not (or no longer) connected: reset by the peer, or closed.
    NotConnected,
    /// Nobody listens on the port [`connect`](Vsock::connect) tried.
    Refused,
    /// The device or driver failed.
    Device(virtio_drivers::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice => f.write_str("no virtio-vsock device on the command line"),
            Self::WouldBlock => f.write_str("operation would block"),
            Self::NotConnected => f.write_str("not connected"),
            Self::Refused => f.write_str("connection refused"),
            Self::Device(e) => write!(f, "vsock device: {e}"),
        }
    }
}

impl From<virtio_drivers::Error> for Error {
    fn from(e: virtio_drivers::Error) -> Self {
        Self::Device(e)
    }
}

/// A connection: the peer's address and our port. Copy it freely; it names the connection
/// until it is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    /// The other end.
    pub peer: VsockAddr,
    /// Our port.
    pub local_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// We sent a request and wait for the response.
    Connecting,
    /// Data flows both ways.
    Open,
    /// We shut down and wait for the peer to finish.
    Closing,
}

struct Conn {
    stream: Stream,
    info: ConnectionInfo,
    state: State,
    /// Received and not yet read.
    rx: RxBuffer,
    /// The peer will send no more (it shut down).
    peer_done: bool,
    /// Our own copy of the counters virtio-drivers keeps private: bytes read by the app,
    /// and the value of that count the peer last heard from us.
    fwd_cnt: u32,
    fwd_advertised: u32,
    /// Credit: bytes we sent, and the peer's buffer size and forwarded count.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl Conn {
    fn new(stream: Stream, state: State) -> Self {
        let mut info = ConnectionInfo::new(stream.peer, stream.local_port);
        info.buf_alloc = CONN_BUFFER as u32;
        Self {
            stream,
            info,
            state,
            rx: RxBuffer::default(),
            peer_done: false,
            fwd_cnt: 0,
            fwd_advertised: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    fn peer_free(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    fn update(&mut self, event: &VsockEvent) {
        self.info.update_for_event(event);
        self.peer_buf_alloc = event.buffer_status.buffer_allocation;
        self.peer_fwd_cnt = event.buffer_status.forward_count;
    }

    /// Every packet we send tells the peer our current forwarded count.
    fn sent_header(&mut self) {
        self.fwd_advertised = self.fwd_cnt;
    }
}

/// The vsock device and its connections.
pub struct Vsock {
    driver: Driver,
    guest_cid: u64,
    listening: Vec<u32>,
    conns: Vec<Conn>,
    accepted: VecDeque<Stream>,
    next_port: u32,
}

impl Vsock {
    /// Sets up the first virtio-mmio vsock device announced on the command line.
    pub fn open() -> Result<Self, Error> {
        let transport = crate::virtio::find(DeviceType::Socket).ok_or(Error::NoDevice)?;
        let driver = Driver::new(transport)?;
        Ok(Self {
            guest_cid: driver.guest_cid(),
            driver,
            listening: Vec::new(),
            conns: Vec::new(),
            accepted: VecDeque::new(),
            next_port: FIRST_EPHEMERAL_PORT,
        })
    }

    /// This guest's CID, as the device reports it.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Accepts connections to `port` from now on (they show up in [`accept`](Self::accept)).
    pub fn listen(&mut self, port: u32) {
        if !self.listening.contains(&port) {
            self.listening.push(port);
        }
    }

    /// The next connection accepted on a listening port, if any.
    pub fn accept(&mut self) -> Option<Stream> {
        self.accepted.pop_front()
    }

    /// Starts connecting to `port` at `cid`; the stream is usable once
    /// [`is_connected`](Self::is_connected) says so (poll meanwhile). A refused connection
    /// disappears: `is_connected` then fails with [`Error::NotConnected`].
    pub fn connect(&mut self, cid: u64, port: u32) -> Result<Stream, Error> {
        let local_port = self.next_port;
        self.next_port = self
            .next_port
            .checked_add(1)
            .unwrap_or(FIRST_EPHEMERAL_PORT);
        let stream = Stream {
            peer: VsockAddr { cid, port },
            local_port,
        };
        let mut conn = Conn::new(stream, State::Connecting);
        self.driver.connect(&conn.info)?;
        conn.sent_header();
        self.conns.push(conn);
        Ok(stream)
    }

    /// Whether `stream` is established: `Ok(false)` while connecting,
    /// [`Error::NotConnected`] once it is gone (refused, reset, closed).
    pub fn is_connected(&self, stream: Stream) -> Result<bool, Error> {
        let conn = self.conn(stream)?;
        Ok(conn.state == State::Open)
    }

    /// Moves everything the device has received into the connections. Returns whether
    /// anything happened (data, connections, closes).
    pub fn poll(&mut self) -> Result<bool, Error> {
        let mut progress = false;
        loop {
            let guest_cid = self.guest_cid;
            let conns = &mut self.conns;
            let mut dropped = false;
            let polled = self.driver.poll(|event, body| {
                if let VsockEventType::Received { .. } = event.event_type {
                    let conn = conns
                        .iter_mut()
                        .find(|c| event.matches_connection(&c.info, guest_cid));
                    match conn {
                        // More than the credit we gave is a protocol violation.
                        Some(c) if c.rx.len() + body.len() <= CONN_BUFFER && !c.peer_done => {
                            c.rx.push(body);
                        }
                        _ => dropped = true,
                    }
                }
                Ok(Some(event))
            });
            match polled {
                Ok(Some(event)) if dropped => self.reset(&event)?,
                Ok(Some(event)) => self.handle(event)?,
                Ok(None) => return Ok(progress),
                // A malformed packet (from a buggy peer) is dropped, not fatal.
                Err(virtio_drivers::Error::SocketDeviceError(_)) => {}
                Err(e) => return Err(e.into()),
            }
            progress = true;
        }
    }

    /// Answers `event` with a reset and forgets its connection (if we knew it).
    fn reset(&mut self, event: &VsockEvent) -> Result<(), Error> {
        let guest_cid = self.guest_cid;
        self.conns
            .retain(|c| !event.matches_connection(&c.info, guest_cid));
        let info = ConnectionInfo::new(event.source, event.destination.port);
        Ok(self.driver.force_close(&info)?)
    }

    fn handle(&mut self, event: VsockEvent) -> Result<(), Error> {
        let guest_cid = self.guest_cid;
        let index = self
            .conns
            .iter()
            .position(|c| event.matches_connection(&c.info, guest_cid));
        let Some(i) = index else {
            if event.event_type == VsockEventType::ConnectionRequest {
                self.incoming(event)?;
            }
            return Ok(());
        };
        let conn = &mut self.conns[i];
        conn.update(&event);
        match event.event_type {
            VsockEventType::ConnectionRequest => {
                // A second request for a live connection: the peer is confused.
                let info = conn.info.clone();
                self.conns.swap_remove(i);
                self.driver.force_close(&info)?;
            }
            VsockEventType::Connected => {
                if conn.state == State::Connecting {
                    conn.state = State::Open;
                }
            }
            VsockEventType::Disconnected {
                reason: DisconnectReason::Reset,
            } => {
                self.conns.swap_remove(i);
            }
            VsockEventType::Disconnected {
                reason: DisconnectReason::Shutdown,
            } => {
                conn.peer_done = true;
                if conn.state == State::Closing {
                    let info = conn.info.clone();
                    self.conns.swap_remove(i);
                    self.driver.force_close(&info)?;
                }
            }
            VsockEventType::CreditRequest => {
                self.driver.credit_update(&conn.info)?;
                conn.sent_header();
            }
            VsockEventType::Received { .. } | VsockEventType::CreditUpdate => {}
        }
        Ok(())
    }

    fn incoming(&mut self, event: VsockEvent) -> Result<(), Error> {
        let stream = Stream {
            peer: event.source,
            local_port: event.destination.port,
        };
        let mut conn = Conn::new(stream, State::Open);
        conn.update(&event);
        if event.destination.cid != self.guest_cid || !self.listening.contains(&stream.local_port) {
            return Ok(self.driver.force_close(&conn.info)?);
        }
        self.driver.accept(&conn.info)?;
        conn.sent_header();
        self.conns.push(conn);
        self.accepted.push_back(stream);
        Ok(())
    }

    fn conn(&self, stream: Stream) -> Result<&Conn, Error> {
        self.conns
            .iter()
            .find(|c| c.stream == stream)
            .ok_or(Error::NotConnected)
    }

    /// Bytes waiting to be read on `stream`.
    pub fn available(&self, stream: Stream) -> Result<usize, Error> {
        Ok(self.conn(stream)?.rx.len())
    }

    /// Reads received bytes into `buf`. `Ok(0)` means end of stream (the peer shut down and
    /// everything was read); [`Error::WouldBlock`] means nothing yet.
    pub fn read(&mut self, stream: Stream, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.take(stream, |rx| rx.pop(buf))
    }

    /// Like [`read`](Self::read), but appends up to `max` bytes to `out` (no zeroed scratch
    /// buffer needed).
    pub fn read_append(
        &mut self,
        stream: Stream,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, Error> {
        if max == 0 {
            return Ok(0);
        }
        self.take(stream, |rx| rx.pop_into(out, max))
    }

    fn take(
        &mut self,
        stream: Stream,
        pop: impl FnOnce(&mut RxBuffer) -> usize,
    ) -> Result<usize, Error> {
        let conn = find(&mut self.conns, stream)?;
        if conn.rx.len() == 0 {
            return if conn.peer_done {
                Ok(0)
            } else {
                Err(Error::WouldBlock)
            };
        }
        let n = pop(&mut conn.rx);
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
        conn.info.done_forwarding(n);
        // Tell the peer about freed space before it runs out of credit.
        if !conn.peer_done
            && conn.fwd_cnt.wrapping_sub(conn.fwd_advertised) as usize >= CONN_BUFFER / 2
        {
            self.driver.credit_update(&conn.info)?;
            conn.sent_header();
        }
        Ok(n)
    }

    /// Sends as much of `data` as the peer has room for (at least one byte, or
    /// [`Error::WouldBlock`] when it has none: a credit request then goes out).
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> Result<usize, Error> {
        let conn = find(&mut self.conns, stream)?;
        match conn.state {
            State::Open => {}
            State::Connecting => return Err(Error::WouldBlock),
            State::Closing => return Err(Error::NotConnected),
        }
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(conn.peer_free()).min(MAX_SEND);
        if n == 0 {
            // virtio-drivers asks the peer for credit (once) when a send does not fit.
            return match self.driver.send(&data[..1], &mut conn.info) {
                Err(virtio_drivers::Error::SocketDeviceError(
                    SocketError::InsufficientBufferSpaceInPeer,
                )) => Err(Error::WouldBlock),
                Err(e) => Err(e.into()),
                Ok(()) => {
                    // Our credit view was stale; the byte went out.
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(1);
                    conn.sent_header();
                    Ok(1)
                }
            };
        }
        self.driver.send(&data[..n], &mut conn.info)?;
        conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
        conn.sent_header();
        Ok(n)
    }

    /// Closes `stream`: tells the peer we are done (an orderly shutdown; data already written
    /// is delivered) and forgets the stream once the peer has finished too.
    pub fn close(&mut self, stream: Stream) -> Result<(), Error> {
        let i = self
            .conns
            .iter()
            .position(|c| c.stream == stream)
            .ok_or(Error::NotConnected)?;
        let conn = &mut self.conns[i];
        if conn.state == State::Closing {
            return Ok(());
        }
        self.driver.shutdown(&conn.info)?;
        if conn.peer_done || conn.state == State::Connecting {
            self.conns.swap_remove(i);
        } else {
            conn.state = State::Closing;
            conn.rx.clear();
        }
        Ok(())
    }

    /// Waits for the VMM: polls once more and, if nothing is pending, halts until the
    /// device has news. Returns whether the poll made progress.
    pub fn wait(&mut self) -> Result<bool, Error> {
        let progress = self.poll()?;
        if !progress {
            crate::halt();
        }
        Ok(progress)
    }

    /// Writes all of `data`, waiting for credit as needed.
    pub fn write_all(&mut self, stream: Stream, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            match self.write(stream, data) {
                Ok(n) => data = &data[n..],
                Err(Error::WouldBlock) => {
                    self.wait()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads at least one byte (or `Ok(0)` at end of stream), waiting as needed.
    pub fn read_wait(&mut self, stream: Stream, buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            match self.read(stream, buf) {
                Err(Error::WouldBlock) => {
                    self.wait()?;
                }
                other => return other,
            }
        }
    }

    /// Waits for an incoming connection on a listening port.
    pub fn accept_wait(&mut self) -> Result<Stream, Error> {
        loop {
            if let Some(s) = self.accept() {
                return Ok(s);
            }
            self.wait()?;
        }
    }

    /// Connects and waits until the peer accepts ([`Error::Refused`] if it does not).
    pub fn connect_wait(&mut self, cid: u64, port: u32) -> Result<Stream, Error> {
        let stream = self.connect(cid, port)?;
        loop {
            match self.is_connected(stream) {
                Ok(true) => return Ok(stream),
                Ok(false) => {
                    self.wait()?;
                }
                Err(Error::NotConnected) => return Err(Error::Refused),
                Err(e) => return Err(e),
            }
        }
    }
}

/// `stream`'s connection (a free function, so that `self.driver` stays borrowable).
fn find(conns: &mut [Conn], stream: Stream) -> Result<&mut Conn, Error> {
    conns
        .iter_mut()
        .find(|c| c.stream == stream)
        .ok_or(Error::NotConnected)
}

/// Received bytes not yet read: `buf[head..]`. Appends and reads are `memcpy`s (never a
/// loop per byte); the unread rest moves to the front only when an append would not fit.
/// Capacity grows to the advertised credit at most and is never zeroed.
#[derive(Default)]
struct RxBuffer {
    buf: Vec<u8>,
    head: usize,
}

impl RxBuffer {
    fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    fn push(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(CONN_BUFFER);
        }
        if self.head > 0 && self.buf.len() + data.len() > self.buf.capacity() {
            self.buf.copy_within(self.head.., 0);
            self.buf.truncate(self.len());
            self.head = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn pop(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len());
        out[..n].copy_from_slice(&self.buf[self.head..self.head + n]);
        self.consumed(n);
        n
    }

    fn pop_into(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = max.min(self.len());
        out.extend_from_slice(&self.buf[self.head..self.head + n]);
        self.consumed(n);
        n
    }

    fn consumed(&mut self, n: usize) {
        self.head += n;
        if self.head == self.buf.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
    }
}

#[cfg(test)]
mod tests;
