//! The muxer: owns the listening socket, host clients still sending their `CONNECT` line, and
//! every connection; routes guest packets to connections and picks which connection fills the
//! next RX buffer (round robin, control packets first).
//!
//! Epoll bookkeeping: the muxer records what each stream should be watched for and applies
//! the changes in [`VsockMuxer::sync`], called once at the end of every event the device
//! handles. Streams of removed connections stay open until `sync` has taken them out of the
//! epoll set, so a file descriptor number is never reused while still registered.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use dust_abi::vsock::{parse_connect, GUEST_CID, HOST_CID, LINE_MAX as CONNECT_LINE_MAX};
use event_manager::{EventOps, EventSet, Events};
use tracing::{debug, warn};
use virtio_vsock::packet::VsockPacket;

use super::connection::{Connection, Ctrl, RxOutcome, Verdict};
use super::sys::{connect_nonblocking, peek};
use super::{FIRST_LOCAL_PORT, MAX_CONNECTIONS};
use crate::virtio::vsock::packet::{RxHeader, OP_REQUEST, OP_RST, TYPE_STREAM};
use crate::virtio::vsock::VsockError;

/// Control packets (RSTs for unknown connections, final packets of closed ones) queued at most.
const CTRL_MAX: usize = 2 * MAX_CONNECTIONS;
/// Past this many queued control packets, TX processing waits for the guest to take RX.
const CTRL_TX_LIMIT: usize = MAX_CONNECTIONS;

/// A connection's identity: (host port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

/// A host client that has not finished its `CONNECT <port>\n` line.
struct PendingClient {
    stream: UnixStream,
    line: [u8; CONNECT_LINE_MAX],
    len: usize,
}

/// The host side of every vsock connection of one device.
pub struct VsockMuxer {
    uds_path: PathBuf,
    listener: UnixListener,
    listener_paused: bool,
    /// A descriptor was closed since the listener paused (it may accept again).
    fd_freed: bool,
    clients: HashMap<RawFd, PendingClient>,
    conns: HashMap<ConnKey, Connection>,
    fd_map: HashMap<RawFd, ConnKey>,
    rxq: VecDeque<ConnKey>,
    ctrl: VecDeque<RxHeader>,
    dirty: Vec<ConnKey>,
    graveyard: Vec<(UnixStream, bool)>,
    next_local_port: u32,
}

impl std::fmt::Debug for VsockMuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockMuxer")
            .field("uds_path", &self.uds_path)
            .field("clients", &self.clients.len())
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl VsockMuxer {
    /// Bind the listening socket at `uds_path` (non-blocking). The socket file is removed
    /// when the muxer drops.
    pub fn new(uds_path: PathBuf) -> Result<Self, VsockError> {
        let listener = UnixListener::bind(&uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        })?;
        let muxer = Self {
            uds_path,
            listener,
            listener_paused: false,
            fd_freed: false,
            clients: HashMap::new(),
            conns: HashMap::new(),
            fd_map: HashMap::new(),
            rxq: VecDeque::with_capacity(64),
            ctrl: VecDeque::with_capacity(64),
            dirty: Vec::with_capacity(64),
            graveyard: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
        };
        // From here on, dropping `muxer` removes the socket file.
        muxer
            .listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Bind {
                path: muxer.uds_path.clone(),
                source,
            })?;
        Ok(muxer)
    }

    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Number of live connections (not counting clients still sending `CONNECT`).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn at_capacity(&self) -> bool {
        self.conns.len() + self.clients.len() >= MAX_CONNECTIONS
    }

    /// Something is owed to the guest (an RX buffer would be used).
    pub fn has_pending_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.rxq.is_empty()
    }

    /// TX processing should pause until the guest takes queued control packets.
    pub fn tx_must_wait(&self) -> bool {
        self.ctrl.len() >= CTRL_TX_LIMIT
    }

    fn push_ctrl(&mut self, header: RxHeader) {
        if self.ctrl.len() < CTRL_MAX {
            self.ctrl.push_back(header);
        } else {
            warn!(
                op = header.op,
                "vsock: control queue full (guest not taking RX); packet dropped"
            );
        }
    }

    fn rst(&mut self, key: ConnKey) {
        self.push_ctrl(RxHeader::control(key.local_port, key.peer_port, OP_RST, 0));
    }

    /// Re-examine a connection after it changed: schedule it for RX, re-check its interest.
    fn touch(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if conn.wants_rx() && !conn.scheduled {
                conn.scheduled = true;
                self.rxq.push_back(key);
            }
            if !conn.listed_dirty {
                conn.listed_dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.touch(key),
            Verdict::Close(ctrl) => self.close(key, ctrl),
        }
    }

    /// Remove a connection; its stream closes in the next `sync`.
    fn close(&mut self, key: ConnKey, ctrl: Option<Ctrl>) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        debug!(
            local_port = key.local_port,
            peer_port = key.peer_port,
            ?ctrl,
            "vsock: connection closed"
        );
        self.fd_map.remove(&conn.stream().as_raw_fd());
        if let Some(ctrl) = ctrl {
            let header = conn.final_header(ctrl);
            self.push_ctrl(header);
        }
        let registered = conn.registered.is_some();
        self.graveyard.push((conn.into_stream(), registered));
    }

    fn insert(&mut self, key: ConnKey, conn: Connection) {
        self.fd_map.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.touch(key);
    }

    // ---- host side ----------------------------------------------------------------------

    /// An event on a file descriptor that is not a queue's: the listener, a client, a stream.
    pub fn handle_event(&mut self, fd: RawFd, events: EventSet, ops: &mut EventOps) {
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if self.clients.contains_key(&fd) {
            self.client_readable(fd, ops);
        } else if let Some(&key) = self.fd_map.get(&fd) {
            self.stream_event(key, events);
        } else {
            debug!(fd, "vsock: event for an unknown file descriptor");
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.at_capacity() {
                        warn!("vsock: {MAX_CONNECTIONS} connections open; host client refused");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!("vsock: cannot make a host client non-blocking: {e}");
                        continue;
                    }
                    if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
                        warn!("vsock: cannot watch a host client: {e}");
                        continue;
                    }
                    self.clients.insert(
                        stream.as_raw_fd(),
                        PendingClient {
                            stream,
                            line: [0; CONNECT_LINE_MAX],
                            len: 0,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Most likely out of file descriptors: stop watching the listener until
                    // a connection closes, rather than spinning on it.
                    warn!("vsock: accept failed, pausing the listener: {e}");
                    match ops.modify(Events::new(&self.listener, EventSet::empty())) {
                        Ok(()) => {
                            self.listener_paused = true;
                            self.fd_freed = false;
                        }
                        Err(e) => warn!("vsock: cannot pause the listener: {e}"),
                    }
                    break;
                }
            }
        }
    }

    fn drop_client(&mut self, fd: RawFd, ops: &mut EventOps, why: &str) {
        if let Some(client) = self.clients.remove(&fd) {
            debug!("vsock: host client dropped: {why}");
            self.fd_freed = true;
            if let Err(e) = ops.remove(Events::empty(&client.stream)) {
                debug!("vsock: cannot unwatch a host client: {e}");
            }
        }
    }

    /// Read what there is of a client's `CONNECT` line, never past its newline (the bytes
    /// after it belong to the guest).
    fn client_readable(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut peeked = [0u8; CONNECT_LINE_MAX];
        let room = CONNECT_LINE_MAX - client.len;
        let n = match peek(&client.stream, &mut peeked[..room]) {
            Ok(0) => return self.drop_client(fd, ops, "closed before CONNECT"),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(e) => return self.drop_client(fd, ops, &e.to_string()),
        };
        let take = peeked[..n]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |i| i + 1);
        let end = client.len + take;
        let got = match client.stream.read(&mut client.line[client.len..end]) {
            Ok(got) => got,
            Err(e) => return self.drop_client(fd, ops, &e.to_string()),
        };
        client.len += got;
        let line = &client.line[..client.len];
        if !line.ends_with(b"\n") {
            if client.len == CONNECT_LINE_MAX {
                self.drop_client(fd, ops, "CONNECT line too long");
            }
            return;
        }
        match parse_connect(line) {
            Some(port) => self.host_connect(fd, port),
            None => self.drop_client(fd, ops, "malformed CONNECT line"),
        }
    }

    /// A client asked for guest port `peer_port`: the guest gets OP_REQUEST.
    fn host_connect(&mut self, fd: RawFd, peer_port: u32) {
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            // Cannot happen below MAX_CONNECTIONS; the client is closed by the next sync.
            if let Some(client) = self.clients.remove(&fd) {
                self.graveyard.push((client.stream, true));
            }
            return;
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        debug!(local_port, peer_port, "vsock: host connect");
        let mut conn = Connection::local_init(client.stream, local_port, peer_port);
        conn.registered = Some(EventSet::IN);
        self.insert(
            ConnKey {
                local_port,
                peer_port,
            },
            conn,
        );
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    fn stream_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut verdict = Verdict::Keep;
        if events.contains(EventSet::OUT) {
            verdict = conn.on_writable();
        }
        if verdict == Verdict::Keep && events.contains(EventSet::IN) {
            conn.on_readable();
        }
        if verdict == Verdict::Keep && events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            verdict = conn.on_hangup();
        }
        self.apply(key, verdict);
    }

    // ---- guest side ---------------------------------------------------------------------

    /// A packet from the guest's TX queue.
    pub fn send_pkt(&mut self, pkt: &VsockPacket<'_, ()>) {
        if pkt.src_cid() != GUEST_CID || pkt.dst_cid() != HOST_CID {
            debug!(
                src = pkt.src_cid(),
                dst = pkt.dst_cid(),
                "vsock: packet with foreign CIDs dropped"
            );
            return;
        }
        let key = ConnKey {
            local_port: pkt.dst_port(),
            peer_port: pkt.src_port(),
        };
        if pkt.type_() != TYPE_STREAM {
            if pkt.op() != OP_RST {
                self.rst(key);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.on_guest_packet(pkt);
            self.apply(key, verdict);
            return;
        }
        match pkt.op() {
            OP_REQUEST => self.guest_connect(key, pkt),
            OP_RST => {}
            _ => self.rst(key),
        }
    }

    /// The guest connects to host port `key.local_port`: try `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, pkt: &VsockPacket<'_, ()>) {
        if self.at_capacity() {
            warn!("vsock: {MAX_CONNECTIONS} connections open; guest connect refused");
            return self.rst(key);
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                debug!(
                    port = key.local_port,
                    peer_port = key.peer_port,
                    "vsock: guest connect"
                );
                let conn = Connection::peer_init(
                    stream,
                    key.local_port,
                    key.peer_port,
                    pkt.buf_alloc(),
                    pkt.fwd_cnt(),
                );
                self.insert(key, conn);
            }
            Err(e) => {
                debug!(path = ?path, "vsock: guest connect refused: {e}");
                self.rst(key);
            }
        }
    }

    /// Fill `pkt` (a guest RX buffer) with the next packet owed to the guest. Returns the
    /// payload length, or `None` if there was nothing to send after all.
    pub fn recv_pkt(&mut self, pkt: &mut VsockPacket<'_, ()>) -> Result<Option<u32>, VsockError> {
        if let Some(header) = self.ctrl.pop_front() {
            header.write_to(pkt)?;
            return Ok(Some(0));
        }
        while let Some(key) = self.rxq.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.scheduled = false;
            match conn.recv_pkt(pkt)? {
                RxOutcome::Nothing => {
                    // Not rescheduled: its next event does that. Its interest may change.
                    if !conn.listed_dirty {
                        conn.listed_dirty = true;
                        self.dirty.push(key);
                    }
                }
                RxOutcome::Packet(len, verdict) => {
                    self.apply(key, verdict);
                    return Ok(Some(len));
                }
            }
        }
        Ok(None)
    }

    // ---- epoll --------------------------------------------------------------------------

    /// Apply epoll changes and close removed streams. Call after handling every event.
    pub fn sync(&mut self, ops: &mut EventOps) {
        while let Some(key) = self.dirty.pop() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.listed_dirty = false;
            let want = conn.interest();
            let result = match (conn.registered, want) {
                (None, None) => Ok(()),
                (Some(now), Some(want)) if now == want => Ok(()),
                (None, Some(want)) => ops.add(Events::new(conn.stream(), want)),
                (Some(_), Some(want)) => ops.modify(Events::new(conn.stream(), want)),
                (Some(_), None) => ops.remove(Events::empty(conn.stream())),
            };
            match result {
                Ok(()) => conn.registered = want,
                Err(e) => {
                    warn!("vsock: cannot update epoll for a connection: {e}");
                    let ctrl = conn.guest_knows().then_some(Ctrl::Rst);
                    self.close(key, ctrl);
                }
            }
        }
        self.fd_freed |= !self.graveyard.is_empty();
        for (stream, registered) in self.graveyard.drain(..) {
            if registered {
                if let Err(e) = ops.remove(Events::empty(&stream)) {
                    debug!("vsock: cannot unwatch a closed stream: {e}");
                }
            }
        }
        if self.listener_paused && self.fd_freed {
            match ops.modify(Events::new(&self.listener, EventSet::IN)) {
                Ok(()) => {
                    self.listener_paused = false;
                    self.fd_freed = false;
                }
                Err(e) => warn!("vsock: cannot resume the listener: {e}"),
            }
        }
    }

    /// The driver reset the device: every connection is gone (host clients see EOF).
    pub fn reset(&mut self) {
        for (_, conn) in self.conns.drain() {
            let registered = conn.registered.is_some();
            self.graveyard.push((conn.into_stream(), registered));
        }
        self.fd_map.clear();
        self.rxq.clear();
        self.ctrl.clear();
        self.dirty.clear();
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            debug!(path = ?self.uds_path, "vsock: cannot remove the socket: {e}");
        }
    }
}
