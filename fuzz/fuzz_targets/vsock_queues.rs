//! The vsock device and its muxer, fed by a driver that completed the handshake and then
//! writes whatever descriptors, packets and ring entries it likes, while host clients
//! connect and send. The host must neither panic nor hang.
#![no_main]

use arbitrary::Arbitrary;
use dust_fuzz::{ring_base, PacketHeader, Rig, BUFFERS, MEM_SIZE};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Descriptor `index` of queue `q`: a buffer in the buffer area (or anywhere, raw).
    Desc {
        q: u8,
        index: u8,
        buf: u16,
        len: u16,
        flags: u8,
        next: u8,
        raw_addr: Option<u64>,
    },
    /// A packet header at a buffer.
    Packet {
        buf: u16,
        header: PacketHeader,
    },
    /// Payload bytes at a buffer.
    Bytes {
        buf: u16,
        bytes: Vec<u8>,
    },
    /// Put `head` on queue `q`'s avail ring and notify.
    Publish {
        q: u8,
        head: u8,
    },
    /// Host client connects to guest `port` (small ports, mostly).
    HostConnect {
        port: u8,
    },
    HostSend {
        client: u8,
        bytes: Vec<u8>,
    },
    HostDrain,
    /// A register write after the handshake (reset, status, queue registers).
    Reg {
        offset: u8,
        value: u32,
    },
    Run,
}

/// Guest address of buffer slot `buf` (64-byte slots across the buffer area).
fn buffer(buf: u16) -> u64 {
    BUFFERS + (u64::from(buf) * 64) % (MEM_SIZE as u64 - BUFFERS)
}

fuzz_target!(|input: (u8, Vec<Op>)| {
    let (size_bits, ops) = input;
    let size = 1u16 << (size_bits % 5); // 1..=16 entries
    let Some(mut rig) = Rig::new() else { return };
    rig.handshake(size);
    let mut avail_idx = [0u16; 3];
    for op in ops.into_iter().take(256) {
        match op {
            Op::Desc {
                q,
                index,
                buf,
                len,
                flags,
                next,
                raw_addr,
            } => {
                let q = u32::from(q % 3);
                let addr = raw_addr.unwrap_or_else(|| buffer(buf));
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&u32::from(len).to_le_bytes());
                d[12..14].copy_from_slice(&u16::from(flags % 8).to_le_bytes());
                d[14..16].copy_from_slice(&u16::from(next % size.max(1) as u8).to_le_bytes());
                let slot = u64::from(index) % u64::from(size);
                rig.poke(ring_base(q) + slot * 16, &d);
            }
            Op::Packet { buf, header } => rig.poke(buffer(buf), &header.to_bytes()),
            Op::Bytes { buf, bytes } => rig.poke(buffer(buf), &bytes),
            Op::Publish { q, head } => {
                let qi = usize::from(q % 3);
                let avail = ring_base(qi as u32) + 0x1000;
                let idx = avail_idx[qi];
                let slot = u64::from(idx % size);
                rig.poke(avail + 4 + slot * 2, &u16::from(head).to_le_bytes());
                avail_idx[qi] = idx.wrapping_add(1);
                rig.poke(avail + 2, &avail_idx[qi].to_le_bytes());
                rig.notify(qi as u32);
            }
            Op::HostConnect { port } => rig.host_connect(u32::from(port % 4) + 1024),
            Op::HostSend { client, bytes } => rig.host_send(usize::from(client), &bytes),
            Op::HostDrain => rig.host_drain(),
            Op::Reg { offset, value } => rig.write_reg(u64::from(offset & 0xfc), value),
            Op::Run => rig.run(),
        }
    }
});
