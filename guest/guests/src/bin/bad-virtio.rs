//! Misbehaves on purpose, to test that the VMM contains a hostile guest: sets up the
//! virtio-vsock device by hand (virtio-mmio version 2, all three queues, so that the
//! device activates), then posts one broken descriptor chain on the TX queue and notifies. The first argument picks the breakage:
//!
//! - `oob`: a descriptor pointing outside guest RAM (0xffff_ffff_0000);
//! - `loop`: a header descriptor whose `next` is itself (an endless chain), announcing data
//!   that only following the chain would find;
//! - `huge`: a descriptor whose length runs far past the end of RAM, holding a header that
//!   announces a 4 GiB - 64 KiB payload.
//!
//! The header is an otherwise valid RW packet from CID 3 to the host.
//!
//! The VMM should report a device error and stop the VM. If the guest is still running
//! after a while it says so and exits with status 3; no device: 4; bad argument: 2.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};

use dust_guest::println;
use dust_guest::vsock::{GUEST_CID, HOST_CID};

dust_guest::entry!(main);

/// virtio-mmio registers (virtio 1.2 section 4.2.2).
mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC: usize = 0x080;
    pub const QUEUE_DRIVER: usize = 0x090;
    pub const QUEUE_DEVICE: usize = 0x0a0;
}

const MAGIC: u32 = 0x7472_6976; // "virt"
const DEVICE_ID_VSOCK: u32 = 19;
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
/// VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of feature word 1.
const VERSION_1_HIGH: u32 = 1;
/// The vsock queues: rx, tx, event.
const QUEUES: usize = 3;
const TX_QUEUE: u32 = 1;
const QUEUE_SIZE: u16 = 8;
const DESC_F_NEXT: u16 = 1;
/// A vsock packet header (virtio 1.2 section 5.10.6).
const HEADER_SIZE: u32 = 44;
const VSOCK_TYPE_STREAM: u16 = 1;
const VSOCK_OP_RW: u16 = 5;

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct VsockHeader {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

/// Exit statuses.
const STILL_RUNNING: u32 = 3;
const NO_DEVICE: u32 = 4;
const USAGE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// One page per queue: descriptors at 0, available ring at 0x100, used ring at 0x200; the
/// TX page also holds a valid packet buffer at 0x400.
#[repr(C, align(4096))]
struct Rings([[u8; 4096]; QUEUES]);

static mut RINGS: Rings = Rings([[0; 4096]; QUEUES]);

#[derive(Clone, Copy)]
enum Mode {
    OutOfBounds,
    Loop,
    Huge,
}

fn main() -> u32 {
    let mode = match dust_guest::args().next() {
        Some("oob") => Mode::OutOfBounds,
        Some("loop") => Mode::Loop,
        Some("huge") => Mode::Huge,
        _ => {
            println!("bad-virtio: usage: bad-virtio oob|loop|huge");
            return USAGE;
        }
    };
    let Some(base) = dust_guest::virtio::devices()
        .map(|d| d.base as usize)
        .find(|&b| read(b, reg::MAGIC) == MAGIC && read(b, reg::DEVICE_ID) == DEVICE_ID_VSOCK)
    else {
        println!("bad-virtio: no virtio-mmio vsock device");
        return NO_DEVICE;
    };
    if read(base, reg::VERSION) != 2 {
        println!("bad-virtio: not a modern (version 2) virtio-mmio device");
        return NO_DEVICE;
    }
    let rings = (&raw mut RINGS) as usize;
    setup(base, rings);
    post(rings + TX_QUEUE as usize * 4096, mode);
    write(base, reg::QUEUE_NOTIFY, TX_QUEUE);
    // The VMM should stop the VM now; give its device thread plenty of time.
    for _ in 0..200_000 {
        core::hint::black_box(());
    }
    println!("bad-virtio: still running after posting a broken chain");
    STILL_RUNNING
}

/// Device initialisation (virtio 1.2 section 3.1.1), queue `q` at page `q` of `rings`.
fn setup(base: usize, rings: usize) {
    write(base, reg::STATUS, 0);
    write(base, reg::STATUS, STATUS_ACKNOWLEDGE);
    write(base, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write(base, reg::DEVICE_FEATURES_SEL, 1);
    let high = read(base, reg::DEVICE_FEATURES) & VERSION_1_HIGH;
    write(base, reg::DRIVER_FEATURES_SEL, 0);
    write(base, reg::DRIVER_FEATURES, 0);
    write(base, reg::DRIVER_FEATURES_SEL, 1);
    write(base, reg::DRIVER_FEATURES, high);
    write(
        base,
        reg::STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    for q in 0..QUEUES {
        let page = rings + q * 4096;
        write(base, reg::QUEUE_SEL, q as u32);
        let size = u32::from(QUEUE_SIZE).min(read(base, reg::QUEUE_NUM_MAX));
        write(base, reg::QUEUE_NUM, size);
        for (reg, addr) in [
            (reg::QUEUE_DESC, page),
            (reg::QUEUE_DRIVER, page + 0x100),
            (reg::QUEUE_DEVICE, page + 0x200),
        ] {
            write(base, reg, addr as u32);
            write(base, reg + 4, (addr as u64 >> 32) as u32);
        }
        write(base, reg::QUEUE_READY, 1);
    }
    write(
        base,
        reg::STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
}

/// Writes descriptor 0 of the queue at `rings` broken as `mode` asks and makes it
/// available.
fn post(rings: usize, mode: Mode) {
    let packet = (rings + 0x400) as u64;
    let header = VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 1234,
        len: match mode {
            Mode::Huge => 0xffff_0000,
            _ => 2 * HEADER_SIZE,
        },
        kind: VSOCK_TYPE_STREAM,
        op: VSOCK_OP_RW,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    let desc = match mode {
        Mode::OutOfBounds => Desc {
            addr: 0xffff_ffff_0000,
            len: HEADER_SIZE,
            flags: 0,
            next: 0,
        },
        Mode::Loop => Desc {
            addr: packet,
            len: HEADER_SIZE,
            flags: DESC_F_NEXT,
            next: 0,
        },
        Mode::Huge => Desc {
            addr: packet,
            len: 0xffff_f000,
            flags: 0,
            next: 0,
        },
    };
    // SAFETY: `rings` is a page of our static; descriptor 0 is at its start, the
    // available ring (flags u16, idx u16, ring[..]) at +0x100, the packet at +0x400.
    unsafe {
        write_volatile(packet as *mut VsockHeader, header);
        write_volatile(rings as *mut Desc, desc);
        write_volatile((rings + 0x104) as *mut u16, 0); // ring[0] = descriptor 0
        write_volatile((rings + 0x102) as *mut u16, 1); // idx = 1
    }
}

fn read(base: usize, offset: usize) -> u32 {
    // SAFETY: a register of the virtio-mmio window the VMM announced (identity mapped).
    unsafe { read_volatile((base + offset) as *const u32) }
}

fn write(base: usize, offset: usize, value: u32) {
    // SAFETY: a register of the virtio-mmio window the VMM announced (identity mapped).
    unsafe { write_volatile((base + offset) as *mut u32, value) }
}
