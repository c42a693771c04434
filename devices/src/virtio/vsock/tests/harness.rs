//! A guest (fake driver over fake memory), the device behind a real MMIO transport, and a
//! real event manager pumped by the test thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use crate::virtio::testing::{w32, FakeDriver};
use crate::virtio::vsock::packet::{
    HEADER_SIZE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RW, TYPE_STREAM,
};
use crate::virtio::vsock::{Vsock, RX_QUEUE, TX_QUEUE};
use crate::virtio::MmioTransport;
use crate::EventFdInterrupt;

pub const GUEST_CID: u64 = 3;
pub const HOST_CID: u64 = 2;

/// A vsock header as the guest sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// A guest -> host packet on a stream socket, advertising a 64 KiB buffer.
    pub fn guest(src_port: u32, dst_port: u32, op: u16) -> Self {
        Self {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Self::default()
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// A packet the guest received.
#[derive(Debug, Clone)]
pub struct Rx {
    pub hdr: Hdr,
    pub data: Vec<u8>,
}

pub struct Harness {
    pub uds: PathBuf,
    pub vsock: Arc<Mutex<Vsock>>,
    pub transport: MmioTransport,
    pub em: EventManager<Arc<Mutex<Vsock>>>,
    pub drv: FakeDriver,
    pub irq: Arc<EventFdInterrupt>,
    pub errors: Arc<Mutex<Vec<String>>>,
    /// `recv` posts a fresh RX buffer for every one it takes.
    pub repost: bool,
    /// Removed (with the sockets in it) when the harness drops, after the device.
    _dir: TempDir,
}

/// Data space of each RX buffer the harness posts.
pub const RX_DATA: u32 = 4096;

impl Harness {
    /// A device whose driver has not initialised it yet.
    pub fn inactive() -> Self {
        let dir = TempDir::new_with_prefix("/tmp/dust-vsock-test-").unwrap();
        let uds = dir.as_path().join("v.sock");
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let vsock = Vsock::new(
            uds.clone(),
            Arc::new(move |msg: &str| sink.lock().unwrap().push(msg.to_string())),
        )
        .unwrap();
        let vsock = Arc::new(Mutex::new(vsock));
        let drv = FakeDriver::new(32 << 20, 3, 256);
        let irq = Arc::new(EventFdInterrupt::new().unwrap());
        let transport = MmioTransport::new(drv.mem.clone(), vsock.clone(), irq.clone()).unwrap();
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(vsock.clone());
        Self {
            uds,
            vsock,
            transport,
            em,
            drv,
            irq,
            errors,
            repost: true,
            _dir: dir,
        }
    }

    /// An activated device with `rx` RX buffers posted.
    pub fn new(rx: usize) -> Self {
        let mut h = Self::inactive();
        h.activate();
        h.post_rx(rx);
        h.pump();
        h
    }

    pub fn activate(&mut self) {
        self.drv.setup(&mut self.transport);
    }

    /// Run the event loop until it has nothing more to do.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
        panic!("event loop does not settle (busy loop?)");
    }

    /// Pump until `done` holds (or fail after 5 s).
    pub fn pump_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.pump();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "condition not reached");
            self.em.run_with_timeout(10).unwrap();
        }
    }

    pub fn notify(&mut self, q: usize) {
        w32(&mut self.transport, 0x50, q as u32);
    }

    /// Post `n` single-descriptor RX buffers (header + data in one, as Linux >= 6.2 and
    /// virtio-drivers do) and notify.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let len = HEADER_SIZE as u32 + RX_DATA;
            let addr = self.drv.alloc(len);
            self.drv.add_chain(RX_QUEUE, &[(addr, len, true)]);
        }
        self.notify(RX_QUEUE);
    }

    /// Post one RX buffer split in header + data descriptors.
    pub fn post_rx_split(&mut self, data: u32) {
        let h = self.drv.alloc(HEADER_SIZE as u32);
        let d = self.drv.alloc(data);
        self.drv
            .add_chain(RX_QUEUE, &[(h, HEADER_SIZE as u32, true), (d, data, true)]);
        self.notify(RX_QUEUE);
    }

    /// Queue a packet on TX (header and data in two descriptors) without notifying.
    pub fn queue_tx(&mut self, mut hdr: Hdr, data: &[u8]) {
        hdr.len = data.len() as u32;
        let h = self.drv.alloc(HEADER_SIZE as u32);
        self.drv
            .mem
            .write_slice(&hdr.to_bytes(), GuestAddress(h))
            .unwrap();
        if data.is_empty() {
            self.drv
                .add_chain(TX_QUEUE, &[(h, HEADER_SIZE as u32, false)]);
        } else {
            let d = self.drv.alloc(data.len() as u32);
            self.drv.mem.write_slice(data, GuestAddress(d)).unwrap();
            self.drv.add_chain(
                TX_QUEUE,
                &[
                    (h, HEADER_SIZE as u32, false),
                    (d, data.len() as u32, false),
                ],
            );
        }
    }

    /// Send a packet on TX, notify, and let the device handle it.
    pub fn send(&mut self, hdr: Hdr, data: &[u8]) {
        self.queue_tx(hdr, data);
        self.notify(TX_QUEUE);
        self.pump();
        let used = self.drv.take_used(TX_QUEUE);
        assert!(!used.is_empty(), "TX packet not consumed");
    }

    /// Packets the device put on RX since the last call; reposts as many buffers.
    pub fn recv(&mut self) -> Vec<Rx> {
        let used = self.drv.take_used(RX_QUEUE);
        let mut out = Vec::new();
        for (_, len, bufs) in &used {
            let mut bytes = Vec::new();
            for &(addr, blen) in bufs {
                let mut b = vec![0u8; blen as usize];
                self.drv.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                bytes.extend_from_slice(&b);
            }
            assert!(*len as usize >= HEADER_SIZE);
            let hdr = Hdr::from_bytes(&bytes[..HEADER_SIZE]);
            assert_eq!(*len as usize, HEADER_SIZE + hdr.len as usize);
            assert_eq!(
                (hdr.src_cid, hdr.dst_cid, hdr.type_),
                (HOST_CID, GUEST_CID, 1)
            );
            let data = bytes[HEADER_SIZE..HEADER_SIZE + hdr.len as usize].to_vec();
            out.push(Rx { hdr, data });
        }
        if self.repost && !used.is_empty() {
            self.post_rx(used.len());
        }
        out
    }

    /// Pump until the guest received at least one packet; return them all.
    pub fn recv_some(&mut self) -> Vec<Rx> {
        let mut got = Vec::new();
        self.pump_until(|h| {
            got.extend(h.recv());
            !got.is_empty()
        });
        got
    }

    /// Pump until the guest has received `n` payload bytes on `port`; return them.
    pub fn recv_data(&mut self, guest_port: u32, n: usize) -> Vec<u8> {
        let mut data = Vec::new();
        self.pump_until(|h| {
            for p in h.recv() {
                assert_eq!(p.hdr.dst_port, guest_port);
                match p.hdr.op {
                    OP_RW => data.extend_from_slice(&p.data),
                    OP_CREDIT_REQUEST | OP_CREDIT_UPDATE => {}
                    op => panic!("unexpected op {op}: {p:?}"),
                }
            }
            data.len() >= n
        });
        data
    }

    /// A host client that sent `CONNECT <port>\n`.
    pub fn client(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(dust_abi::vsock::connect_line(port).as_bytes())
            .unwrap();
        s
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

/// Read exactly `n` bytes (with the client's read timeout).
pub fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Whether the peer closed `s` (EOF), waiting up to the read timeout.
pub fn is_closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}
