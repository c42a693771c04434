//! What the device fuzz targets share: a vsock device behind its virtio-mmio transport on
//! small guest memory, its event manager, and the guest-side moves a driver makes (register
//! writes, descriptors, ring entries, notifications).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::virtio::vsock::Vsock;
use devices::virtio::{GuestMem, MmioTransport, NOTIFY_REG_OFFSET};
use devices::{BusDevice, EventFdInterrupt};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM of the rig: 4 MiB, so that the queues of a real template (around 2.4 MiB in a
/// dust unikernel) lie inside it.
pub const MEM_SIZE: usize = 0x40_0000;
/// Where the queues' rings live: queue q at `RINGS + q * 0x3000` (descriptors, then the
/// avail ring one page up, the used ring two pages up).
pub const RINGS: u64 = 0x1000;
/// Where buffers live: everything from here to the end of RAM.
pub const BUFFERS: u64 = 0x1_0000;

pub type Em = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A vsock device, its transport and its event manager, as a VM's would be wired.
pub struct Rig {
    pub mem: GuestMem,
    pub transport: MmioTransport,
    pub em: Em,
    pub uds: PathBuf,
    /// Host clients connected to the device's socket.
    pub clients: Vec<UnixStream>,
}

/// A fresh socket path under the fuzz workspace's target directory (the device removes
/// the socket when it drops; nothing is left in /tmp).
fn socket_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/sockets"));
    let _ = std::fs::create_dir_all(&dir);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{n}.vsock", std::process::id()))
}

impl Rig {
    /// A rig, or `None` if the host refused a resource (no fuzz finding in that).
    pub fn new() -> Option<Self> {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
        let uds = socket_path();
        let on_error: devices::virtio::ErrorHandler = Arc::new(|_: &str| {});
        let vsock = Arc::new(Mutex::new(Vsock::new(uds.clone(), on_error).ok()?));
        let irq = Arc::new(EventFdInterrupt::new().ok()?);
        let transport = MmioTransport::new(mem.clone(), vsock.clone(), irq).ok()?;
        let mut em: Em = EventManager::new().ok()?;
        em.add_subscriber(vsock);
        Some(Self {
            mem,
            transport,
            em,
            uds,
            clients: Vec::new(),
        })
    }

    pub fn write_reg(&mut self, offset: u64, value: u32) {
        let _ = self.transport.write(offset, &value.to_le_bytes());
    }

    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Guest memory write; out-of-range writes are dropped, as a driver's would fault.
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    /// Serve every event that is ready now (queue kicks, sockets), as the event thread would.
    pub fn run(&mut self) {
        for _ in 0..4 {
            match self.em.run_with_timeout(0) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    /// QueueNotify for `queue`, then the event thread's turn.
    pub fn notify(&mut self, queue: u32) {
        self.write_reg(NOTIFY_REG_OFFSET, queue);
        self.run();
    }

    /// A host client connects to the device's socket and asks for guest `port`.
    pub fn host_connect(&mut self, port: u32) {
        if self.clients.len() >= 4 {
            return;
        }
        if let Ok(mut s) = UnixStream::connect(&self.uds) {
            let _ = s.set_nonblocking(true);
            let _ = std::io::Write::write_all(&mut s, format!("CONNECT {port}\n").as_bytes());
            self.clients.push(s);
        }
        self.run();
    }

    /// Bytes from a host client (stream `index`, modulo the clients there are).
    pub fn host_send(&mut self, index: usize, bytes: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let i = index % self.clients.len();
        let _ = std::io::Write::write(&mut self.clients[i], bytes);
        self.run();
    }

    /// Everything waiting for host clients is read and dropped (so the device's sends drain).
    pub fn host_drain(&mut self) {
        let mut buf = [0u8; 4096];
        for c in &mut self.clients {
            while matches!(std::io::Read::read(c, &mut buf), Ok(n) if n > 0) {}
        }
        self.run();
    }

    /// The driver's side of the handshake (virtio 1.2 section 3.1.1) with `size`-entry
    /// queues at [`RINGS`], ending with DRIVER_OK.
    pub fn handshake(&mut self, size: u16) {
        const STATUS: u64 = 0x070;
        self.write_reg(STATUS, 0);
        self.write_reg(STATUS, 1 | 2);
        self.write_reg(0x024, 1); // DriverFeaturesSel: bits 32-63
        self.write_reg(0x020, 1); // VIRTIO_F_VERSION_1
        self.write_reg(STATUS, 1 | 2 | 8);
        for q in 0..3u32 {
            let base = ring_base(q);
            self.write_reg(0x030, q);
            self.write_reg(0x038, u32::from(size));
            for (reg, addr) in [
                (0x080, base),
                (0x090, base + 0x1000),
                (0x0a0, base + 0x2000),
            ] {
                self.write_reg(reg, addr as u32);
                self.write_reg(reg + 4, (addr >> 32) as u32);
            }
            self.write_reg(0x044, 1);
        }
        self.write_reg(STATUS, 1 | 2 | 8 | 4);
        self.run();
    }
}

/// Descriptor table of queue `q` (its avail ring one page up, its used ring two).
pub fn ring_base(q: u32) -> u64 {
    RINGS + u64::from(q % 3) * 0x3000
}

/// A vsock packet header (virtio 1.2 section 5.10.6), little endian, 44 bytes.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct PacketHeader {
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u8,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    /// Use the right CIDs (guest to host) rather than whatever came.
    pub proper_cids: bool,
}

impl PacketHeader {
    pub fn to_bytes(&self) -> [u8; 44] {
        let (src, dst) = if self.proper_cids {
            (dust_abi::vsock::GUEST_CID, dust_abi::vsock::HOST_CID)
        } else {
            (u64::from(self.src_port), u64::from(self.dst_port))
        };
        let mut b = [0u8; 44];
        b[0..8].copy_from_slice(&src.to_le_bytes());
        b[8..16].copy_from_slice(&dst.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        // Ops are 1..=7: most values land on one.
        b[30..32].copy_from_slice(&u16::from(self.op % 9).to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}
