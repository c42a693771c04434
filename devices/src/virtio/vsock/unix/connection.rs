//! One guest <-> host stream connection: its state machine, credit accounting (virtio 1.2
//! section 5.10.6.3) and the host-side Unix stream.
//!
//! Guest -> host data is written straight from guest memory to the stream; what the stream
//! cannot take waits in a [`TxBuf`] bounded by the credit we advertise. Host -> guest data is
//! read straight from the stream into the guest's RX buffer, never more than the guest's
//! advertised free space.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;
use tracing::{debug, warn};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{ReadVolatile, VolatileMemoryError};

use super::credit::Credit;
use super::txbuf::TxBuf;
use super::CONN_BUF_SIZE;
use crate::virtio::vsock::packet::{
    RxHeader, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
};

/// Packets owed to the guest (bit set).
mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RW: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
}

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: OP_REQUEST owed or sent, waiting for the guest's OP_RESPONSE.
    LocalInit { request_sent: bool },
    /// Guest-initiated: connected to the host listener, OP_RESPONSE owed.
    PeerInit,
    /// Both sides agreed; data may flow.
    Established,
}

/// What the muxer should do with the connection after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Remove it (closing the host stream) and send the guest this control packet, if any.
    Close(Option<Ctrl>),
}

/// A control packet owed to the guest for a connection that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctrl {
    /// OP_RST: the connection is broken.
    Rst,
    /// OP_SHUTDOWN with both flags: the host finished, orderly.
    Shutdown,
}

impl Ctrl {
    fn op_flags(self) -> (u16, u32) {
        match self {
            Ctrl::Rst => (OP_RST, 0),
            Ctrl::Shutdown => (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND),
        }
    }
}

/// Result of asking a connection for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Nothing to send now.
    Nothing,
    /// A packet with this much payload was written into the RX buffer.
    Packet(u32, Verdict),
}

/// A live connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    state: State,
    pending: u8,
    /// The guest will send no more (OP_SHUTDOWN with SEND).
    peer_shut_send: bool,
    /// The guest will receive no more (OP_SHUTDOWN with RCV).
    peer_shut_rcv: bool,
    /// The host stream reached EOF and the guest was told (OP_SHUTDOWN with SEND).
    local_eof: bool,
    /// The host stream hung up: drain what is left, then finish.
    host_gone: bool,
    /// We shut down the write half of the host stream.
    write_shut: bool,
    credit: Credit,
    txbuf: TxBuf,
    /// The muxer's RX queue holds this connection.
    pub scheduled: bool,
    /// The muxer's dirty list holds this connection (its epoll interest may change).
    pub listed_dirty: bool,
    /// What epoll watches for the stream now (`None`: not registered).
    pub registered: Option<EventSet>,
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn would_block(e: &VolatileMemoryError) -> bool {
    matches!(e, VolatileMemoryError::IOError(io) if transient(io))
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State, pending: u8) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            pending,
            peer_shut_send: false,
            peer_shut_rcv: false,
            local_eof: false,
            host_gone: false,
            write_shut: false,
            credit: Credit::default(),
            txbuf: TxBuf::new(CONN_BUF_SIZE as usize),
            scheduled: false,
            listed_dirty: false,
            registered: None,
        }
    }

    /// A host-initiated connection to guest port `peer_port`; OP_REQUEST is owed.
    pub fn local_init(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        Self::new(
            stream,
            local_port,
            peer_port,
            State::LocalInit {
                request_sent: false,
            },
            pending::REQUEST,
        )
    }

    /// A guest-initiated connection, already connected on the host; OP_RESPONSE is owed.
    pub fn peer_init(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        peer_buf_alloc: u32,
        peer_fwd_cnt: u32,
    ) -> Self {
        let mut c = Self::new(
            stream,
            local_port,
            peer_port,
            State::PeerInit,
            pending::RESPONSE,
        );
        c.credit = Credit::new(peer_buf_alloc, peer_fwd_cnt);
        c
    }

    /// The host stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Give up the host stream (the connection is being removed).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// Whether the guest was told about this connection (so removing it needs an RST).
    pub fn guest_knows(&self) -> bool {
        self.state
            != State::LocalInit {
                request_sent: false,
            }
    }

    /// Host -> guest data may flow.
    fn can_forward(&self) -> bool {
        self.state == State::Established && !self.local_eof && !self.peer_shut_rcv
    }

    /// Whether the muxer should offer this connection an RX buffer.
    pub fn wants_rx(&self) -> bool {
        let control = pending::REQUEST | pending::RESPONSE | pending::CREDIT_UPDATE;
        self.pending & control != 0
            || (self.pending & pending::RW != 0
                && self.can_forward()
                && (self.credit.peer_free() > 0 || self.credit.should_request()))
    }

    /// What epoll should watch the stream for (`None`: not at all).
    pub fn interest(&self) -> Option<EventSet> {
        if self.host_gone {
            // The peer hung up: HUP would fire forever. What is left is read without epoll.
            return None;
        }
        let mut set = EventSet::empty();
        if !self.txbuf.is_empty() {
            set |= EventSet::OUT;
        }
        if self.can_forward() && self.pending & pending::RW == 0 && self.credit.peer_free() > 0 {
            set |= EventSet::IN;
        }
        Some(set)
    }

    /// A packet from the guest for this connection.
    pub fn on_guest_packet(&mut self, pkt: &VsockPacket<'_, ()>) -> Verdict {
        self.credit.peer_update(pkt.buf_alloc(), pkt.fwd_cnt());
        match pkt.op() {
            OP_RW => self.on_data(pkt),
            OP_RESPONSE => self.on_response(),
            OP_RST => Verdict::Close(None),
            OP_SHUTDOWN => self.on_shutdown(pkt.flags()),
            OP_CREDIT_UPDATE => Verdict::Keep,
            OP_CREDIT_REQUEST => {
                self.pending |= pending::CREDIT_UPDATE;
                Verdict::Keep
            }
            op => {
                debug!(
                    op,
                    "vsock: unexpected op on an existing connection; resetting it"
                );
                Verdict::Close(Some(Ctrl::Rst))
            }
        }
    }

    fn on_response(&mut self) -> Verdict {
        if !matches!(self.state, State::LocalInit { request_sent: true }) {
            debug!("vsock: OP_RESPONSE outside a host-initiated handshake; resetting");
            return Verdict::Close(Some(Ctrl::Rst));
        }
        self.state = State::Established;
        // Tell the host client its port. A fresh socket's send buffer takes these few bytes
        // whole; if it somehow does not, the connection cannot be used.
        let line = dust_abi::vsock::ok_line(self.local_port);
        match super::sys::send(&self.stream, line.as_bytes()) {
            Ok(n) if n == line.as_bytes().len() => Verdict::Keep,
            Ok(_) | Err(_) => {
                warn!(
                    port = self.local_port,
                    "vsock: cannot write the OK line to the host client"
                );
                Verdict::Close(Some(Ctrl::Rst))
            }
        }
    }

    fn on_shutdown(&mut self, flags: u32) -> Verdict {
        if flags & SHUTDOWN_RCV != 0 && !self.peer_shut_rcv {
            self.peer_shut_rcv = true;
            self.pending &= !pending::RW;
            // The host learns at once that nobody reads what it writes.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.peer_shut_send = true;
        }
        self.after_tx_progress()
    }

    fn on_data(&mut self, pkt: &VsockPacket<'_, ()>) -> Verdict {
        if self.state != State::Established || self.peer_shut_send {
            debug!("vsock: data outside an established stream; resetting");
            return Verdict::Close(Some(Ctrl::Rst));
        }
        let Some(data) = pkt.data_slice() else {
            return Verdict::Keep;
        };
        let len = data.len() as u32;
        if len > self.credit.free() {
            warn!(
                len,
                free = self.credit.free(),
                "vsock: guest sent more than its credit; resetting the connection"
            );
            return Verdict::Close(Some(Ctrl::Rst));
        }
        self.credit.received(len);
        if self.host_gone {
            // Nobody can read it any more; account for it so credit keeps flowing.
            self.credit.forwarded(len);
            return Verdict::Keep;
        }
        if self.txbuf.is_empty() {
            let written = match super::sys::send_volatile(&self.stream, data) {
                Ok(n) => n,
                Err(e) if transient(&e) => 0,
                Err(e) => {
                    debug!("vsock: host stream write failed: {e}");
                    return Verdict::Close(Some(Ctrl::Rst));
                }
            };
            self.credit.forwarded(written as u32);
            if written < data.len() {
                let rest = data.len() - written;
                let pushed = data
                    .subslice(written, rest)
                    .ok()
                    .map(|s| self.txbuf.push(&s));
                if !matches!(pushed, Some(Ok(()))) {
                    return Verdict::Close(Some(Ctrl::Rst));
                }
            }
        } else if self.txbuf.push(data).is_err() {
            return Verdict::Close(Some(Ctrl::Rst));
        }
        if self.credit.peer_needs_update() {
            self.pending |= pending::CREDIT_UPDATE;
        }
        Verdict::Keep
    }

    /// Checks after guest -> host data moved or the guest shut down a direction.
    fn after_tx_progress(&mut self) -> Verdict {
        if !self.txbuf.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_shut_send && self.peer_shut_rcv {
            // The guest closed its socket: confirm with RST (what Linux waits for).
            return Verdict::Close(Some(Ctrl::Rst));
        }
        if self.peer_shut_send && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.peer_shut_send && self.local_eof {
            // Both directions finished.
            return Verdict::Close(Some(Ctrl::Shutdown));
        }
        if self.host_gone && self.peer_shut_rcv {
            // The host left and the guest takes nothing more: nothing can flow any more.
            return Verdict::Close(Some(Ctrl::Shutdown));
        }
        Verdict::Keep
    }

    /// The stream is readable.
    pub fn on_readable(&mut self) {
        if self.can_forward() {
            self.pending |= pending::RW;
        }
    }

    /// The stream is writable: flush what the guest sent earlier.
    pub fn on_writable(&mut self) -> Verdict {
        match self.txbuf.flush_to(&self.stream) {
            Ok(n) => self.credit.forwarded(n as u32),
            Err(e) => {
                debug!("vsock: host stream flush failed: {e}");
                return Verdict::Close(Some(Ctrl::Rst));
            }
        }
        if self.credit.peer_needs_update() {
            self.pending |= pending::CREDIT_UPDATE;
        }
        self.after_tx_progress()
    }

    /// The host side hung up (EPOLLHUP) or failed (EPOLLERR).
    pub fn on_hangup(&mut self) -> Verdict {
        match self.state {
            State::LocalInit { request_sent } => Verdict::Close(request_sent.then_some(Ctrl::Rst)),
            State::PeerInit | State::Established if !self.local_eof && !self.peer_shut_rcv => {
                // Whatever the host wrote before hanging up still goes to the guest; then the
                // connection finishes (see `host_eof`).
                self.host_gone = true;
                self.txbuf.clear();
                self.pending |= pending::RW;
                Verdict::Keep
            }
            State::PeerInit => Verdict::Close(Some(Ctrl::Rst)),
            State::Established => Verdict::Close(Some(Ctrl::Shutdown)),
        }
    }

    /// The last packet of a connection being removed, with its final credit counters.
    pub fn final_header(&mut self, ctrl: Ctrl) -> RxHeader {
        let (op, flags) = ctrl.op_flags();
        self.header(op, flags, 0)
    }

    fn header(&mut self, op: u16, flags: u32, len: u32) -> RxHeader {
        self.pending &= !pending::CREDIT_UPDATE;
        let (buf_alloc, fwd_cnt) = self.credit.advertise();
        RxHeader {
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Fill `pkt` (an RX buffer) with the next packet owed to the guest, if any.
    pub fn recv_pkt(
        &mut self,
        pkt: &mut VsockPacket<'_, ()>,
    ) -> Result<RxOutcome, virtio_vsock::packet::Error> {
        if self.pending & pending::REQUEST != 0 {
            self.pending &= !pending::REQUEST;
            self.state = State::LocalInit { request_sent: true };
            return self.emit(pkt, OP_REQUEST, 0, Verdict::Keep);
        }
        if self.pending & pending::RESPONSE != 0 {
            self.pending &= !pending::RESPONSE;
            self.state = State::Established;
            return self.emit(pkt, OP_RESPONSE, 0, Verdict::Keep);
        }
        if self.pending & pending::RW != 0 {
            if let Some(outcome) = self.recv_data(pkt)? {
                return Ok(outcome);
            }
        }
        if self.pending & pending::CREDIT_UPDATE != 0 {
            return self.emit(pkt, OP_CREDIT_UPDATE, 0, Verdict::Keep);
        }
        Ok(RxOutcome::Nothing)
    }

    fn emit(
        &mut self,
        pkt: &mut VsockPacket<'_, ()>,
        op: u16,
        flags: u32,
        verdict: Verdict,
    ) -> Result<RxOutcome, virtio_vsock::packet::Error> {
        self.header(op, flags, 0).write_to(pkt)?;
        Ok(RxOutcome::Packet(0, verdict))
    }

    fn recv_data(
        &mut self,
        pkt: &mut VsockPacket<'_, ()>,
    ) -> Result<Option<RxOutcome>, virtio_vsock::packet::Error> {
        if !self.can_forward() {
            self.pending &= !pending::RW;
            return Ok(None);
        }
        let credit = self.credit.peer_free();
        if credit == 0 {
            if !self.credit.should_request() {
                return Ok(None);
            }
            self.credit.requested();
            return self
                .emit(pkt, OP_CREDIT_REQUEST, 0, Verdict::Keep)
                .map(Some);
        }
        let Some(data) = pkt.data_slice() else {
            return Ok(None);
        };
        let max = data.len().min(credit as usize).min(MAX_PKT_DATA as usize);
        let Ok(mut window) = data.subslice(0, max) else {
            return Ok(None);
        };
        let mut r = &self.stream;
        match r.read_volatile(&mut window) {
            Ok(0) => Ok(Some(self.host_eof(pkt)?)),
            Ok(n) => {
                if n < max && !self.host_gone {
                    // Drained for now; epoll reports more.
                    self.pending &= !pending::RW;
                }
                self.credit.sent(n as u32);
                self.header(OP_RW, 0, n as u32).write_to(pkt)?;
                Ok(Some(RxOutcome::Packet(n as u32, Verdict::Keep)))
            }
            Err(e) if would_block(&e) && !self.host_gone => {
                self.pending &= !pending::RW;
                Ok(None)
            }
            Err(e) if would_block(&e) => Ok(Some(self.host_eof(pkt)?)),
            Err(e) => {
                debug!("vsock: host stream read failed: {e}");
                self.emit(pkt, OP_RST, 0, Verdict::Close(None)).map(Some)
            }
        }
    }

    /// The host stream has no more data for the guest.
    fn host_eof(
        &mut self,
        pkt: &mut VsockPacket<'_, ()>,
    ) -> Result<RxOutcome, virtio_vsock::packet::Error> {
        self.pending &= !pending::RW;
        self.local_eof = true;
        let finished = self.host_gone || (self.peer_shut_send && self.txbuf.is_empty());
        if finished {
            self.emit(
                pkt,
                OP_SHUTDOWN,
                SHUTDOWN_RCV | SHUTDOWN_SEND,
                Verdict::Close(None),
            )
        } else {
            // Half close: the host may still read what the guest sends.
            self.emit(pkt, OP_SHUTDOWN, SHUTDOWN_SEND, Verdict::Keep)
        }
    }
}
