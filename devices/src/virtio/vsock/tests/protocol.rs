//! The hybrid protocol end to end: host- and guest-initiated connections, data, credit,
//! shutdown and reset.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};

use super::harness::{is_closed, read_n, Harness, Hdr};
use crate::virtio::testing::w32;
use crate::virtio::vsock::packet::*;
use crate::virtio::vsock::unix::{CONN_BUF_SIZE, FIRST_LOCAL_PORT};
use crate::virtio::vsock::RX_QUEUE;

/// Connect a host client to guest `port`, play the guest's side of the handshake (advertising
/// `buf_alloc`), and check the `OK` line. Returns the client and its host port.
fn host_connect(h: &mut Harness, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
    let mut c = h.client(port);
    let pkts = h.recv_some();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = pkts[0].hdr;
    assert_eq!((req.op, req.dst_port, req.len), (OP_REQUEST, port, 0));
    let local = req.src_port;
    h.send(
        Hdr {
            buf_alloc,
            ..Hdr::guest(port, local, OP_RESPONSE)
        },
        &[],
    );
    let ok = format!("OK {local}\n");
    assert_eq!(read_n(&mut c, ok.len()), ok.as_bytes());
    (c, local)
}

#[test]
fn host_initiated_connect_data_credit_and_rst() {
    let mut h = Harness::new(8);
    let (mut c, local) = host_connect(&mut h, 1234, 64 * 1024);
    assert_eq!(local, FIRST_LOCAL_PORT);
    assert!(h.irq.take(), "the guest was interrupted");

    c.write_all(b"hello").unwrap();
    assert_eq!(h.recv_data(1234, 5), b"hello");

    h.send(Hdr::guest(1234, local, OP_RW), b"world");
    assert_eq!(read_n(&mut c, 5), b"world");

    h.send(Hdr::guest(1234, local, OP_CREDIT_REQUEST), &[]);
    let pkts = h.recv_some();
    assert_eq!(pkts.len(), 1);
    let upd = pkts[0].hdr;
    assert_eq!(
        (upd.op, upd.fwd_cnt, upd.buf_alloc),
        (OP_CREDIT_UPDATE, 5, CONN_BUF_SIZE)
    );

    h.send(Hdr::guest(1234, local, OP_RST), &[]);
    assert!(is_closed(&mut c));
    assert_eq!(h.vsock.lock().unwrap().connection_count(), 0);
    assert!(h.errors().is_empty());
}

#[test]
fn guest_refusal_closes_the_client_and_the_next_one_works() {
    let mut h = Harness::new(8);
    let mut c = h.client(99);
    let req = h.recv_some()[0].hdr;
    assert_eq!(req.op, OP_REQUEST);
    h.send(Hdr::guest(99, req.src_port, OP_RST), &[]);
    assert!(is_closed(&mut c));

    let (_c, local) = host_connect(&mut h, 100, 4096);
    assert_eq!(local, FIRST_LOCAL_PORT + 1);
}

#[test]
fn bytes_after_the_connect_line_belong_to_the_guest() {
    let mut h = Harness::new(8);
    let mut c = std::os::unix::net::UnixStream::connect(&h.uds).unwrap();
    c.write_all(b"CONNE").unwrap();
    h.pump();
    c.write_all(b"CT 7\nearly bytes").unwrap();
    let req = h.recv_some()[0].hdr;
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 7));
    h.send(Hdr::guest(7, req.src_port, OP_RESPONSE), &[]);
    assert_eq!(h.recv_data(7, 11), b"early bytes");
}

#[test]
fn malformed_connect_lines_close_only_their_client() {
    let mut h = Harness::new(8);
    let (mut good, local) = host_connect(&mut h, 80, 64 * 1024);
    let bad_lines: [&[u8]; 5] = [
        b"CONNECT abc\n",
        b"CONNECT 1 2\n",
        b"CONNECT 99999999999\n",
        b"HELLO\n",
        &[b'A'; 40],
    ];
    let mut bad: Vec<UnixStream> = bad_lines
        .iter()
        .map(|line| {
            let mut s = UnixStream::connect(&h.uds).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            s.write_all(line).unwrap();
            s
        })
        .collect();
    h.pump();
    for (i, s) in bad.iter_mut().enumerate() {
        assert!(is_closed(s), "client {i} still open");
    }
    assert!(h.recv().is_empty(), "no request reached the guest");
    good.write_all(b"still fine").unwrap();
    assert_eq!(h.recv_data(80, 10), b"still fine");
    h.send(Hdr::guest(80, local, OP_RW), b"ok");
    assert_eq!(read_n(&mut good, 2), b"ok");
    assert!(h.errors().is_empty());
}

#[test]
fn guest_initiated_connect_to_uds_port() {
    let mut h = Harness::new(8);
    let path = format!("{}_5000", h.uds.display());
    let listener = UnixListener::bind(&path).unwrap();
    h.send(Hdr::guest(777, 5000, OP_REQUEST), &[]);
    let resp = h.recv_some()[0].hdr;
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 777)
    );
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    h.send(Hdr::guest(777, 5000, OP_RW), b"ping");
    assert_eq!(read_n(&mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    assert_eq!(h.recv_data(777, 4), b"pong");

    // The host closes: what it wrote arrives, then an orderly full shutdown.
    s.write_all(b"bye").unwrap();
    drop(s);
    let mut data = Vec::new();
    let mut last = None;
    h.pump_until(|h| {
        for p in h.recv() {
            data.extend_from_slice(&p.data);
            last = Some(p.hdr);
        }
        last.is_some_and(|l| l.op == OP_SHUTDOWN)
    });
    assert_eq!(data, b"bye");
    assert_eq!(last.map(|l| l.flags), Some(SHUTDOWN_RCV | SHUTDOWN_SEND));
    assert_eq!(h.vsock.lock().unwrap().connection_count(), 0);

    // Nobody listens on port 5001: refused.
    h.send(Hdr::guest(778, 5001, OP_REQUEST), &[]);
    let rst = h.recv_some()[0].hdr;
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5001, 778));
    drop(listener);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mut h = Harness::new(16);
    let (mut c, local) = host_connect(&mut h, 9, 1000);
    c.write_all(&[7u8; 3000]).unwrap();
    let mut got = 0;
    let mut credit_requests = 0;
    h.pump_until(|h| {
        for p in h.recv() {
            match p.hdr.op {
                OP_RW => got += p.data.len(),
                OP_CREDIT_REQUEST => credit_requests += 1,
                op => panic!("unexpected op {op}"),
            }
        }
        credit_requests > 0
    });
    assert_eq!(got, 1000, "never more than the advertised buffer");
    // Asking again while nothing changed would just ping-pong.
    h.pump();
    assert!(h.recv().is_empty());

    // The guest consumed 600 bytes and says so: exactly 600 more may come.
    h.send(
        Hdr {
            buf_alloc: 1000,
            fwd_cnt: 600,
            ..Hdr::guest(9, local, OP_CREDIT_UPDATE)
        },
        &[],
    );
    let mut total = 1000 + h.recv_data(9, 600).len();
    assert_eq!(total, 1600);
    // It consumes everything it gets until the host's 3000 bytes are through.
    while total < 3000 {
        h.send(
            Hdr {
                buf_alloc: 1000,
                fwd_cnt: total as u32,
                ..Hdr::guest(9, local, OP_CREDIT_UPDATE)
            },
            &[],
        );
        let n = h.recv_data(9, 1).len();
        assert!(n <= 1000);
        total += n;
    }
    assert_eq!(total, 3000);
}

#[test]
fn small_split_rx_buffers_are_filled_to_their_size() {
    let mut h = Harness::new(1);
    h.repost = false;
    let (mut c, _local) = host_connect(&mut h, 9, 64 * 1024);
    // Only split buffers with 100 data bytes from now on.
    h.post_rx_split(100);
    h.post_rx_split(100);
    c.write_all(&[1u8; 150]).unwrap();
    h.pump();
    let used = h.drv.take_used(RX_QUEUE);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(
        lens,
        vec![HEADER_SIZE as u32 + 100, HEADER_SIZE as u32 + 50]
    );
}

#[test]
fn guest_sending_beyond_our_credit_is_reset() {
    let mut h = Harness::new(8);
    let (c, local) = host_connect(&mut h, 3, 64 * 1024);
    // The client never reads: the socket buffer fills, then our buffer, then the guest
    // oversteps the credit we advertised.
    let chunk = vec![0u8; MAX_PKT_DATA as usize];
    let mut sent = 0usize;
    let mut reset = false;
    for _ in 0..16 {
        h.send(Hdr::guest(3, local, OP_RW), &chunk);
        sent += chunk.len();
        if h.recv().iter().any(|p| p.hdr.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "no RST after {sent} unread bytes");
    assert!(sent > CONN_BUF_SIZE as usize);
    assert_eq!(h.vsock.lock().unwrap().connection_count(), 0);
    assert!(h.errors().is_empty());
    drop(c);
}

#[test]
fn credit_updates_flow_while_the_host_reads() {
    let mut h = Harness::new(8);
    let (mut c, local) = host_connect(&mut h, 3, 64 * 1024);
    let chunk = vec![5u8; MAX_PKT_DATA as usize];
    let mut updates = 0;
    for _ in 0..8 {
        h.send(Hdr::guest(3, local, OP_RW), &chunk);
        assert_eq!(read_n(&mut c, chunk.len()), chunk);
        h.pump();
        updates += h
            .recv()
            .iter()
            .filter(|p| p.hdr.op == OP_CREDIT_UPDATE)
            .count();
    }
    assert!(
        updates >= 2,
        "the guest heard about freed space ({updates} updates)"
    );
}

#[test]
fn half_close_from_the_host_then_guest_close() {
    let mut h = Harness::new(8);
    let (mut c, local) = host_connect(&mut h, 22, 64 * 1024);
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut data = Vec::new();
    let mut shut = None;
    h.pump_until(|h| {
        for p in h.recv() {
            data.extend_from_slice(&p.data);
            if p.hdr.op == OP_SHUTDOWN {
                shut = Some(p.hdr.flags);
            }
        }
        shut.is_some()
    });
    assert_eq!(data, b"request");
    assert_eq!(
        shut,
        Some(SHUTDOWN_SEND),
        "only the host's sending side is done"
    );

    // The guest still answers, then closes its socket.
    h.send(Hdr::guest(22, local, OP_RW), b"response");
    assert_eq!(read_n(&mut c, 8), b"response");
    h.send(
        Hdr {
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            ..Hdr::guest(22, local, OP_SHUTDOWN)
        },
        &[],
    );
    let last = h.recv_some();
    assert_eq!(last.last().map(|p| p.hdr.op), Some(OP_RST), "{last:?}");
    assert!(is_closed(&mut c));
    assert_eq!(h.vsock.lock().unwrap().connection_count(), 0);
}

#[test]
fn guest_half_close_shuts_the_host_write_side() {
    let mut h = Harness::new(8);
    let (mut c, local) = host_connect(&mut h, 23, 64 * 1024);
    h.send(Hdr::guest(23, local, OP_RW), b"last words");
    h.send(
        Hdr {
            flags: SHUTDOWN_SEND,
            ..Hdr::guest(23, local, OP_SHUTDOWN)
        },
        &[],
    );
    assert_eq!(read_n(&mut c, 10), b"last words");
    assert!(is_closed(&mut c), "host sees EOF");
    // The host can still talk to the guest.
    c.write_all(b"thanks").unwrap();
    assert_eq!(h.recv_data(23, 6), b"thanks");
}

#[test]
fn many_concurrent_connections() {
    let mut h = Harness::new(64);
    let mut clients = Vec::new();
    for i in 0..16u32 {
        let (c, local) = host_connect(&mut h, 1000 + i, 64 * 1024);
        clients.push((c, local, 1000 + i));
    }
    for (c, _, port) in &mut clients {
        c.write_all(format!("from host to {port}").as_bytes())
            .unwrap();
    }
    let mut seen = std::collections::HashMap::new();
    h.pump_until(|h| {
        for p in h.recv() {
            assert_eq!(p.hdr.op, OP_RW);
            seen.entry(p.hdr.dst_port)
                .or_insert_with(Vec::new)
                .extend_from_slice(&p.data);
        }
        seen.len() == 16
            && seen
                .iter()
                .all(|(port, d)| d == format!("from host to {port}").as_bytes())
    });
    for (_, local, port) in &clients {
        h.queue_tx(
            Hdr::guest(*port, *local, OP_RW),
            format!("to {port}").as_bytes(),
        );
    }
    h.notify(crate::virtio::vsock::TX_QUEUE);
    h.pump();
    for (c, _, port) in &mut clients {
        let want = format!("to {port}");
        assert_eq!(read_n(c, want.len()), want.as_bytes());
    }
}

#[test]
fn clients_wait_for_the_driver_and_reset_drops_connections() {
    let mut h = Harness::inactive();
    let mut early = h.client(5);
    h.pump();
    h.activate();
    h.post_rx(8);
    let req = h.recv_some()[0].hdr;
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 5));
    h.send(Hdr::guest(5, req.src_port, OP_RESPONSE), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_n(&mut early, ok.len()), ok.as_bytes());

    // The driver resets the device: the host stream closes.
    w32(&mut h.transport, 0x70, 0);
    h.pump();
    assert!(is_closed(&mut early));
    assert_eq!(h.vsock.lock().unwrap().connection_count(), 0);
    assert!(!h.vsock.lock().unwrap().is_active());

    // The driver brings it up again on fresh rings; host clients are served again.
    h.drv.reset_rings();
    h.activate();
    h.post_rx(8);
    let (mut c, _) = host_connect(&mut h, 6, 4096);
    c.write_all(b"again").unwrap();
    assert_eq!(h.recv_data(6, 5), b"again");
    assert!(h.errors().is_empty());
}

#[test]
fn the_socket_file_lives_as_long_as_the_device() {
    use crate::virtio::vsock::{Vsock, VsockError};
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/dust-vsock-life-").unwrap();
    let path = dir.as_path().join("v.sock");
    let first = Vsock::new(path.clone(), std::sync::Arc::new(|_: &str| {})).unwrap();
    assert!(path.exists());
    // A second device on the same path fails and leaves the first one's socket alone.
    let second = Vsock::new(path.clone(), std::sync::Arc::new(|_: &str| {}));
    assert!(matches!(second, Err(VsockError::Bind { .. })));
    assert!(path.exists());
    drop(first);
    assert!(!path.exists());
    assert!(dir.as_path().exists());
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

#[test]
fn bulk_transfer_both_ways_keeps_every_byte() {
    const N: usize = 4 << 20;
    let mut h = Harness::new(64);
    let (c, local) = host_connect(&mut h, 77, 64 * 1024);
    c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();

    // Host -> guest: a writer thread; the guest consumes and grants credit as it goes.
    let mut writer = c.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let data: Vec<u8> = (0..N).map(pattern).collect();
        writer.write_all(&data).unwrap();
    });
    let mut got = 0usize;
    h.pump_until(|h| {
        let mut progressed = false;
        for p in h.recv() {
            if p.hdr.op == OP_RW {
                for (k, b) in p.data.iter().enumerate() {
                    assert_eq!(*b, pattern(got + k), "byte {}", got + k);
                }
                got += p.data.len();
                progressed = true;
            }
        }
        if progressed {
            h.queue_tx(
                Hdr {
                    fwd_cnt: got as u32,
                    ..Hdr::guest(77, local, OP_CREDIT_UPDATE)
                },
                &[],
            );
            h.notify(crate::virtio::vsock::TX_QUEUE);
        }
        got >= N
    });
    assert_eq!(got, N);
    w.join().unwrap();

    // Guest -> host: a slow reader thread, so our buffer fills and wraps.
    let mut reader = c.try_clone().unwrap();
    let r = std::thread::spawn(move || {
        let mut buf = vec![0u8; 7919];
        let mut seen = 0usize;
        while seen < N {
            let n = std::io::Read::read(&mut reader, &mut buf).unwrap();
            assert!(n > 0, "EOF after {seen}");
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(seen + k), "byte {}", seen + k);
            }
            seen += n;
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    });
    let mut sent = 0usize;
    let mut peer_fwd = 0usize;
    let mut deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sent < N {
        // Respect the device's credit: 256 KiB window.
        let window = CONN_BUF_SIZE as usize - (sent - peer_fwd);
        let chunk = window.min(N - sent).min(MAX_PKT_DATA as usize);
        if chunk > 0 {
            let data: Vec<u8> = (sent..sent + chunk).map(pattern).collect();
            h.send(Hdr::guest(77, local, OP_RW), &data);
            sent += chunk;
        } else {
            h.send(Hdr::guest(77, local, OP_CREDIT_REQUEST), &[]);
        }
        h.em.run_with_timeout(1).unwrap();
        h.pump();
        for p in h.recv() {
            peer_fwd = peer_fwd.max(p.hdr.fwd_cnt as usize);
        }
        assert!(std::time::Instant::now() < deadline, "stalled at {sent}");
        if chunk > 0 {
            deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        }
    }
    // Let the buffer drain.
    h.pump_until(|h| {
        h.em.run_with_timeout(5).unwrap();
        r.is_finished()
    });
    r.join().unwrap();
    assert!(h.errors().is_empty());
}

#[test]
fn host_gone_and_guest_not_reading_finishes_the_connection() {
    // One RX buffer: the request takes it, so what the host writes cannot be delivered.
    let mut h = Harness::new(1);
    h.repost = false;
    let (mut c, local) = host_connect(&mut h, 31, 64 * 1024);
    c.write_all(b"unread").unwrap();
    drop(c);
    h.pump();
    assert_eq!(h.vsock.lock().unwrap().connection_count(), 1);
    h.send(
        Hdr {
            flags: SHUTDOWN_RCV,
            ..Hdr::guest(31, local, OP_SHUTDOWN)
        },
        &[],
    );
    assert_eq!(h.vsock.lock().unwrap().connection_count(), 0);
    h.post_rx(1);
    let last = h.recv_some();
    assert_eq!(last[0].hdr.op, OP_SHUTDOWN);
}
