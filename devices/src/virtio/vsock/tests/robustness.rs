//! A hostile or broken guest: the device stops, reports through the error handler, and the
//! host neither panics nor hangs (every `pump` asserts that the event loop settles).

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};

use super::harness::{Harness, Hdr};
use crate::virtio::testing::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::virtio::vsock::packet::*;
use crate::virtio::vsock::{RX_QUEUE, TX_QUEUE};

/// Write a TX header for a packet with `len` payload bytes at a fresh buffer; returns it.
fn header_at(h: &mut Harness, len: u32) -> u64 {
    let addr = h.drv.alloc(HEADER_SIZE as u32);
    let hdr = Hdr {
        len,
        ..Hdr::guest(1, 2, OP_RW)
    };
    h.drv
        .mem
        .write_slice(&hdr.to_bytes(), GuestAddress(addr))
        .unwrap();
    addr
}

/// Publish raw descriptors `(index, addr, len, flags, next)` with `head` on `q`, notify, and
/// check that the device failed, reported it once, and stays quiet afterwards.
fn expect_failure(h: &mut Harness, q: usize, head: u16, descs: &[(u16, u64, u32, u16, u16)]) {
    for &(i, addr, len, flags, next) in descs {
        h.drv.write_desc(q, i, addr, len, flags, next);
    }
    h.drv.publish(q, head);
    h.notify(q);
    h.pump();
    assert_failed(h);
}

fn assert_failed(h: &mut Harness) {
    let errors = h.errors();
    assert_eq!(errors.len(), 1, "exactly one report: {errors:?}");
    assert!(h.vsock.lock().unwrap().failed());
    // Further kicks are drained and ignored; nothing is reported twice.
    h.notify(TX_QUEUE);
    h.notify(RX_QUEUE);
    h.pump();
    assert_eq!(h.errors().len(), 1);
}

#[test]
fn tx_header_outside_guest_memory() {
    let mut h = Harness::new(4);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[(0, 0xffff_ffff_0000, HEADER_SIZE as u32, 0, 0)],
    );
    assert!(
        h.errors()[0].contains("malformed packet"),
        "{:?}",
        h.errors()
    );
}

#[test]
fn tx_header_straddling_the_end_of_memory() {
    let mut h = Harness::new(4);
    let end = (32u64 << 20) - 20;
    expect_failure(&mut h, TX_QUEUE, 0, &[(0, end, HEADER_SIZE as u32, 0, 0)]);
}

#[test]
fn tx_header_in_a_device_writable_descriptor() {
    let mut h = Harness::new(4);
    let hdr = header_at(&mut h, 0);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[(0, hdr, HEADER_SIZE as u32, VIRTQ_DESC_F_WRITE, 0)],
    );
}

#[test]
fn tx_header_descriptor_too_short() {
    let mut h = Harness::new(4);
    let hdr = header_at(&mut h, 0);
    expect_failure(&mut h, TX_QUEUE, 0, &[(0, hdr, 10, 0, 0)]);
}

#[test]
fn tx_length_field_beyond_the_maximum() {
    let mut h = Harness::new(4);
    let hdr = header_at(&mut h, MAX_PKT_DATA + 1);
    let data = h.drv.alloc(MAX_PKT_DATA + 1);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[
            (0, hdr, HEADER_SIZE as u32, VIRTQ_DESC_F_NEXT, 1),
            (1, data, MAX_PKT_DATA + 1, 0, 0),
        ],
    );
}

#[test]
fn tx_length_field_larger_than_the_data_buffer() {
    let mut h = Harness::new(4);
    let hdr = header_at(&mut h, 4096);
    let data = h.drv.alloc(16);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[
            (0, hdr, HEADER_SIZE as u32, VIRTQ_DESC_F_NEXT, 1),
            (1, data, 16, 0, 0),
        ],
    );
}

#[test]
fn tx_data_descriptor_missing_or_writable() {
    let mut h = Harness::new(4);
    let hdr = header_at(&mut h, 8);
    // Claims 8 payload bytes but the chain ends at the header.
    expect_failure(&mut h, TX_QUEUE, 0, &[(0, hdr, HEADER_SIZE as u32, 0, 0)]);

    let mut h = Harness::new(4);
    let hdr = header_at(&mut h, 8);
    let data = h.drv.alloc(8);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[
            (0, hdr, HEADER_SIZE as u32, VIRTQ_DESC_F_NEXT, 1),
            (1, data, 8, VIRTQ_DESC_F_WRITE, 0),
        ],
    );
}

#[test]
fn tx_head_index_beyond_the_queue() {
    let mut h = Harness::new(4);
    expect_failure(&mut h, TX_QUEUE, 300, &[]);
}

#[test]
fn tx_next_index_beyond_the_queue() {
    let mut h = Harness::new(4);
    let hdr = header_at(&mut h, 8);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[(0, hdr, HEADER_SIZE as u32, VIRTQ_DESC_F_NEXT, 999)],
    );
}

#[test]
fn avail_index_far_ahead_of_the_device() {
    let mut h = Harness::new(4);
    h.drv.set_avail_idx(TX_QUEUE, 1000);
    h.notify(TX_QUEUE);
    h.pump();
    assert_failed(&mut h);
    assert!(h.errors()[0].contains("virtqueue"), "{:?}", h.errors());
}

#[test]
fn looping_chains_neither_hang_nor_panic() {
    let mut h = Harness::new(4);
    // A header-only packet whose descriptor points at itself, and a data packet whose data
    // descriptor loops back to the header: the device reads at most two descriptors.
    let a = header_at(&mut h, 0);
    h.drv
        .write_desc(TX_QUEUE, 0, a, HEADER_SIZE as u32, VIRTQ_DESC_F_NEXT, 0);
    h.drv.publish(TX_QUEUE, 0);
    let b = header_at(&mut h, 4);
    h.drv
        .write_desc(TX_QUEUE, 1, b, HEADER_SIZE as u32, VIRTQ_DESC_F_NEXT, 2);
    h.drv
        .write_desc(TX_QUEUE, 2, b, HEADER_SIZE as u32, VIRTQ_DESC_F_NEXT, 1);
    h.drv.publish(TX_QUEUE, 1);
    h.notify(TX_QUEUE);
    h.pump();
    // Both were consumed (as packets for an unknown connection, answered with RST).
    assert_eq!(h.drv.take_used(TX_QUEUE).len(), 2);
    assert!(h.errors().is_empty());
}

#[test]
fn rx_buffer_that_is_device_read_only() {
    let mut h = Harness::new(0);
    let buf = h.drv.alloc(4096);
    h.drv.write_desc(RX_QUEUE, 0, buf, 4096, 0, 0);
    h.drv.publish(RX_QUEUE, 0);
    // Something to deliver: a host client.
    let mut c = h.client(1);
    c.flush().unwrap();
    h.notify(RX_QUEUE);
    h.pump();
    assert_failed(&mut h);
}

#[test]
fn rx_buffer_outside_guest_memory() {
    let mut h = Harness::new(0);
    h.drv
        .write_desc(RX_QUEUE, 0, 0x7fff_0000_0000, 4096, VIRTQ_DESC_F_WRITE, 0);
    h.drv.publish(RX_QUEUE, 0);
    let _c = h.client(1);
    h.notify(RX_QUEUE);
    h.pump();
    assert_failed(&mut h);
}

#[test]
fn rx_header_descriptor_too_short() {
    let mut h = Harness::new(0);
    let buf = h.drv.alloc(16);
    h.drv
        .write_desc(RX_QUEUE, 0, buf, 16, VIRTQ_DESC_F_WRITE, 0);
    h.drv.publish(RX_QUEUE, 0);
    let _c = h.client(1);
    h.notify(RX_QUEUE);
    h.pump();
    assert_failed(&mut h);
}

#[test]
fn rx_data_descriptor_with_a_huge_length() {
    let mut h = Harness::new(0);
    let hdr = h.drv.alloc(HEADER_SIZE as u32);
    h.drv.write_desc(
        RX_QUEUE,
        0,
        hdr,
        HEADER_SIZE as u32,
        VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
        1,
    );
    h.drv
        .write_desc(RX_QUEUE, 1, 0x10_0000, u32::MAX, VIRTQ_DESC_F_WRITE, 0);
    h.drv.publish(RX_QUEUE, 0);
    let _c = h.client(1);
    h.notify(RX_QUEUE);
    h.pump();
    assert_failed(&mut h);
}

#[test]
fn garbage_packets_get_rst_not_errors() {
    let mut h = Harness::new(8);
    // Unknown connection, wrong socket type, foreign CIDs, unknown op.
    h.send(Hdr::guest(1, 2, OP_RW), b"x");
    h.send(
        Hdr {
            type_: 2,
            ..Hdr::guest(1, 3, OP_REQUEST)
        },
        &[],
    );
    h.send(
        Hdr {
            dst_cid: 7,
            ..Hdr::guest(1, 4, OP_REQUEST)
        },
        &[],
    );
    h.send(Hdr::guest(1, 5, 99), &[]);
    h.send(Hdr::guest(1, 6, OP_RST), &[]);
    h.pump();
    let ops: Vec<(u16, u32)> = h
        .recv()
        .iter()
        .map(|p| (p.hdr.op, p.hdr.src_port))
        .collect();
    assert_eq!(ops, vec![(OP_RST, 2), (OP_RST, 3), (OP_RST, 5)]);
    assert!(h.errors().is_empty());
}

#[test]
fn a_reset_clears_the_failure() {
    let mut h = Harness::new(4);
    h.drv.set_avail_idx(TX_QUEUE, 1000);
    h.notify(TX_QUEUE);
    h.pump();
    assert!(h.vsock.lock().unwrap().failed());
    crate::virtio::testing::w32(&mut h.transport, 0x70, 0);
    h.pump();
    assert!(!h.vsock.lock().unwrap().failed());
    h.drv.reset_rings();
    h.activate();
    h.post_rx(4);
    h.pump();
    h.send(Hdr::guest(1, 2, OP_REQUEST), &[]);
    assert_eq!(h.recv_some()[0].hdr.op, OP_RST);
}

#[test]
fn indirect_descriptors_outside_memory_or_misaligned() {
    const VIRTQ_DESC_F_INDIRECT: u16 = 4;
    // The feature is not offered, but a guest may set the flag anyway.
    let mut h = Harness::new(4);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[(0, 0x7fff_0000_0000, 32, VIRTQ_DESC_F_INDIRECT, 0)],
    );
    let mut h = Harness::new(4);
    let table = h.drv.alloc(64);
    expect_failure(
        &mut h,
        TX_QUEUE,
        0,
        &[(0, table, 17, VIRTQ_DESC_F_INDIRECT, 0)],
    );
}

#[test]
fn connections_beyond_the_cap_are_refused() {
    use crate::virtio::vsock::unix::MAX_CONNECTIONS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if limit.rlim_cur < 3 * MAX_CONNECTIONS as u64 {
        eprintln!("skipped: RLIMIT_NOFILE {} too low", limit.rlim_cur);
        return;
    }
    let mut h = Harness::new(0);
    let mut clients: Vec<_> = (0..MAX_CONNECTIONS).map(|i| h.client(i as u32)).collect();
    h.pump();
    let mut extra = h.client(1);
    h.pump();
    assert!(
        super::harness::is_closed(&mut extra),
        "over the cap: refused"
    );
    assert_eq!(h.vsock.lock().unwrap().connection_count(), MAX_CONNECTIONS);
    // A guest connect is refused too.
    h.post_rx(4);
    h.send(Hdr::guest(1, 4242, OP_REQUEST), &[]);
    h.pump();
    clients.truncate(0);
    assert!(h.errors().is_empty());
}
