//! Test support: a fake guest driver that lays out split virtqueues in fake guest memory and
//! drives an [`MmioTransport`] through its registers, as Linux or virtio-drivers would.

use std::collections::HashMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{GuestMem, MmioTransport};
use crate::BusDevice;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Register offsets used by the tests.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 64;
}

pub fn r32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn w32(t: &mut MmioTransport, offset: u64, v: u32) -> crate::BusAction {
    t.write(offset, &v.to_le_bytes())
}

/// A used ring entry: (head, length written, buffers `(addr, len)` of that chain).
pub type Used = (u16, u32, Vec<(u64, u32)>);

/// One split virtqueue as the driver sees it.
pub struct DriverQueue {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// A fake guest driver: memory, queues and a bump allocator for buffers.
pub struct FakeDriver {
    pub mem: GuestMem,
    pub queues: Vec<DriverQueue>,
    next_buf: u64,
    mem_size: u64,
    /// Buffers of chains still owned by the device: (queue, head) -> (addr, len) of the head.
    pub heads: HashMap<(usize, u16), Vec<(u64, u32)>>,
}

const RINGS_BASE: u64 = 0x1000;
const RING_STRIDE: u64 = 0x4000;

impl FakeDriver {
    pub fn new(mem_size: usize, queues: usize, size: u16) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).unwrap();
        let queues = (0..queues as u64)
            .map(|i| {
                let base = RINGS_BASE + i * RING_STRIDE;
                DriverQueue {
                    desc: base,
                    avail: base + 0x1000,
                    used: base + 0x2000,
                    size,
                    next_desc: 0,
                    avail_idx: 0,
                    used_seen: 0,
                }
            })
            .collect::<Vec<_>>();
        let next_buf = RINGS_BASE + RING_STRIDE * queues.len() as u64;
        Self {
            mem,
            queues,
            next_buf,
            mem_size: mem_size as u64,
            heads: HashMap::new(),
        }
    }

    /// Run the virtio 1.2 initialisation sequence (section 3.1.1) over the registers.
    pub fn setup(&self, t: &mut MmioTransport) {
        assert_eq!(r32(t, reg::MAGIC), 0x7472_6976);
        assert_eq!(r32(t, reg::VERSION), 2);
        w32(t, reg::STATUS, 0);
        w32(t, reg::STATUS, status::ACKNOWLEDGE);
        w32(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w32(t, reg::DEVICE_FEATURES_SEL, 1);
        let high = r32(t, reg::DEVICE_FEATURES);
        w32(t, reg::DEVICE_FEATURES_SEL, 0);
        let low = r32(t, reg::DEVICE_FEATURES);
        w32(t, reg::DRIVER_FEATURES_SEL, 1);
        w32(t, reg::DRIVER_FEATURES, high);
        w32(t, reg::DRIVER_FEATURES_SEL, 0);
        w32(t, reg::DRIVER_FEATURES, low);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w32(t, reg::STATUS, s);
        assert_eq!(r32(t, reg::STATUS), s, "FEATURES_OK refused");
        for (i, q) in self.queues.iter().enumerate() {
            w32(t, reg::QUEUE_SEL, i as u32);
            assert_eq!(r32(t, reg::QUEUE_READY), 0);
            assert!(r32(t, reg::QUEUE_NUM_MAX) >= u32::from(q.size));
            w32(t, reg::QUEUE_NUM, u32::from(q.size));
            w32(t, reg::QUEUE_DESC_LOW, q.desc as u32);
            w32(t, reg::QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
            w32(t, reg::QUEUE_DRIVER_LOW, q.avail as u32);
            w32(t, reg::QUEUE_DRIVER_HIGH, (q.avail >> 32) as u32);
            w32(t, reg::QUEUE_DEVICE_LOW, q.used as u32);
            w32(t, reg::QUEUE_DEVICE_HIGH, (q.used >> 32) as u32);
            w32(t, reg::QUEUE_READY, 1);
            assert_eq!(r32(t, reg::QUEUE_READY), 1);
        }
        let action = w32(t, reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(action, crate::BusAction::None);
        assert_eq!(r32(t, reg::STATUS), s | status::DRIVER_OK);
    }

    /// Forget all queue state (after a device reset), zeroing the rings.
    pub fn reset_rings(&mut self) {
        for q in &mut self.queues {
            q.next_desc = 0;
            q.avail_idx = 0;
            q.used_seen = 0;
            let zeros = vec![0u8; 0x3000];
            self.mem.write_slice(&zeros, GuestAddress(q.desc)).unwrap();
        }
        self.heads.clear();
    }

    /// A fresh buffer of `len` bytes in guest memory.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (addr + u64::from(len) + 15) & !15;
        assert!(
            self.next_buf <= self.mem_size,
            "fake guest memory exhausted"
        );
        addr
    }

    /// Write one raw descriptor.
    pub fn write_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = self.queues[q].desc + 16 * u64::from(index);
        self.mem.write_obj(addr, GuestAddress(base)).unwrap();
        self.mem.write_obj(len, GuestAddress(base + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(base + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(base + 14)).unwrap();
    }

    /// Make the chain starting at `head` available (does not notify).
    pub fn publish(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let slot = dq.avail + 4 + 2 * u64::from(dq.avail_idx % dq.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(dq.avail_idx, GuestAddress(dq.avail + 2))
            .unwrap();
    }

    /// Set the avail ring index directly (for malformed-ring tests).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.queues[q].avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.queues[q].avail + 2))
            .unwrap();
    }

    /// Add a chain of `(addr, len, device_writable)` buffers and publish it; returns its head.
    pub fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let index = (head + i as u16) % size;
            let mut flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(q, index, addr, len, flags, (index + 1) % size);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        self.heads
            .insert((q, head), bufs.iter().map(|b| (b.0, b.1)).collect());
        self.publish(q, head);
        head
    }

    /// Used ring entries added since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<Used> {
        let dq = &self.queues[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(dq.used + 2)).unwrap();
        let mut out = Vec::new();
        let mut seen = dq.used_seen;
        while seen != idx {
            let elem = dq.used + 4 + 8 * u64::from(seen % dq.size);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            let bufs = self.heads.remove(&(q, id as u16)).unwrap_or_default();
            out.push((id as u16, len, bufs));
            seen = seen.wrapping_add(1);
        }
        self.queues[q].used_seen = seen;
        out
    }
}
