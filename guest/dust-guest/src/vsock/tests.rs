//! The driver's bookkeeping without a device: the receive buffer, credit, and connection
//! lookup.

use super::*;

fn stream(port: u32) -> Stream {
    Stream {
        peer: VsockAddr {
            cid: dust_abi::vsock::HOST_CID,
            port: 1024,
        },
        local_port: port,
    }
}

/// What a credit update from the peer sets (`Conn::update` copies it from the event).
fn credit(conn: &mut Conn, buf_alloc: u32, fwd_cnt: u32) {
    conn.peer_buf_alloc = buf_alloc;
    conn.peer_fwd_cnt = fwd_cnt;
}

#[test]
fn the_receive_buffer_keeps_order_across_pushes_and_partial_reads() {
    let mut rx = RxBuffer::default();
    rx.push(b"hello ");
    rx.push(b"world");
    assert_eq!(rx.len(), 11);
    let mut out = [0u8; 4];
    assert_eq!(rx.pop(&mut out), 4);
    assert_eq!(&out, b"hell");
    let mut rest = Vec::new();
    assert_eq!(rx.pop_into(&mut rest, 100), 7);
    assert_eq!(rest, b"o world");
    // Drained: the buffer starts over at the front.
    assert_eq!((rx.len(), rx.head, rx.buf.len()), (0, 0, 0));
    assert_eq!(rx.pop(&mut out), 0);
}

#[test]
fn the_unread_rest_moves_to_the_front_only_when_an_append_would_not_fit() {
    let mut rx = RxBuffer::default();
    let full = alloc::vec![7u8; CONN_BUFFER];
    rx.push(&full);
    let cap = rx.buf.capacity();
    let mut out = alloc::vec![0u8; CONN_BUFFER - 10];
    assert_eq!(rx.pop(&mut out), CONN_BUFFER - 10);
    assert_eq!(rx.head, CONN_BUFFER - 10);
    rx.push(b"0123456789");
    // The 10 unread bytes moved to the front; no reallocation.
    assert_eq!((rx.head, rx.len(), rx.buf.capacity()), (0, 20, cap));
    let mut all = Vec::new();
    rx.pop_into(&mut all, 20);
    assert_eq!(&all[..10], &[7u8; 10]);
    assert_eq!(&all[10..], b"0123456789");
}

#[test]
fn credit_is_the_peers_buffer_less_what_is_in_flight() {
    let mut c = Conn::new(stream(80), State::Open);
    assert_eq!(
        c.peer_free(),
        0,
        "no credit before the peer told us its buffer"
    );
    credit(&mut c, 1000, 0);
    assert_eq!(c.peer_free(), 1000);
    c.tx_cnt = 600;
    assert_eq!(c.peer_free(), 400);
    credit(&mut c, 1000, 500);
    assert_eq!(c.peer_free(), 900);
    // The counters wrap (virtio 1.2 section 5.10.6.3): still 100 in flight.
    c.tx_cnt = 50;
    credit(&mut c, 1000, u32::MAX - 49);
    assert_eq!(c.peer_free(), 900);
    // A peer that shrank its buffer below what is in flight gives no credit, not a wrap.
    credit(&mut c, 10, u32::MAX - 49);
    assert_eq!(c.peer_free(), 0);
}

#[test]
fn every_header_we_send_advertises_our_forwarded_count() {
    let mut c = Conn::new(stream(80), State::Open);
    assert_eq!(c.info.buf_alloc, CONN_BUFFER as u32);
    c.fwd_cnt = 123;
    c.sent_header();
    assert_eq!(c.fwd_advertised, 123);
}

#[test]
fn a_stream_is_found_by_its_peer_and_port() {
    let mut conns = alloc::vec![
        Conn::new(stream(80), State::Open),
        Conn::new(stream(81), State::Connecting)
    ];
    assert_eq!(
        find(&mut conns, stream(81)).ok().map(|c| c.state),
        Some(State::Connecting)
    );
    assert!(matches!(
        find(&mut conns, stream(82)),
        Err(Error::NotConnected)
    ));
}
