//! virtio-vsock end to end: real guests on /dev/kvm speaking Firecracker's hybrid
//! Unix-socket protocol through dust's device.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{guest, TempDir};
use vmm::{VmConfig, VmExit, VmHandle, VsockConfig};

/// A VM with a vsock device at `dir/vm.vsock`, started and ready (no irqchip: the guest
/// polls and parks on HLT).
fn boot(image: &str, cmdline: &str, dir: &Path) -> (VmHandle, PathBuf) {
    boot_in(image, cmdline, dir, false)
}

/// As [`boot`], in the given interrupt mode (`irqchip`: in-kernel irqchip, irqfd wake-ups).
fn boot_in(image: &str, cmdline: &str, dir: &Path, irqchip: bool) -> (VmHandle, PathBuf) {
    let uds = dir.join("vm.vsock");
    let config = VmConfig {
        cmdline: cmdline.into(),
        irqchip,
        vsock: Some(VsockConfig { uds: uds.clone() }),
        timeout: Some(Duration::from_secs(60)),
        serial: vmm::SerialConfig::None,
        ..VmConfig::new(guest(image))
    };
    let vm = vmm::build(&config).expect("build");
    let h = vm.start().expect("start");
    let t = Instant::now();
    while h.ready_at().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{image} never signalled ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (h, uds)
}

/// `CONNECT port` on the VM's socket; returns the stream after `OK`.
fn connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(dust_abi::vsock::connect_line(port).as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < dust_abi::vsock::LINE_MAX && s.read(&mut b)? == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    match dust_abi::vsock::parse_ok(&line) {
        Some(_) => Ok(s),
        None => Err(std::io::Error::other(format!("refused: {line:?}"))),
    }
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn random(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Send `data` and read the echo back (concurrently, so credit never deadlocks).
fn echo_round_trip(s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut reader = s.try_clone().unwrap();
    let n = data.len();
    let rx = std::thread::spawn(move || {
        let mut got = vec![0u8; n];
        reader.read_exact(&mut got).unwrap();
        got
    });
    let mut w = s;
    w.write_all(&data).unwrap();
    let got = rx.join().unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    got
}

#[test]
fn a_mebibyte_of_random_bytes_comes_back_identical() {
    require_kvm!();
    for irqchip in [false, true] {
        let dir = TempDir::new("vsock-mib");
        let (h, uds) = boot_in("echo", "", dir.path(), irqchip);
        let data = random(1 << 20, 42);
        let got = echo_round_trip(connect(&uds, 5000).unwrap(), data.clone());
        assert_eq!(checksum(&got), checksum(&data), "irqchip={irqchip}");
        h.killer().kill();
        h.wait();
        assert!(!uds.exists(), "the vsock socket must go with the VM");
    }
}

#[test]
fn eight_concurrent_connections_each_round_trip() {
    require_kvm!();
    for irqchip in [false, true] {
        let dir = TempDir::new("vsock-8");
        let (h, uds) = boot_in("echo", "", dir.path(), irqchip);
        let clients: Vec<_> = (0..8u64)
            .map(|i| {
                let s = connect(&uds, 5000).unwrap();
                std::thread::spawn(move || {
                    let data = random(64 * 1024, i + 1);
                    let got = echo_round_trip(s, data.clone());
                    checksum(&got) == checksum(&data)
                })
            })
            .collect();
        for c in clients {
            assert!(
                c.join().unwrap(),
                "a connection's echo differed (irqchip={irqchip})"
            );
        }
        h.killer().kill();
        h.wait();
    }
}

#[test]
fn guest_initiated_connection_reaches_the_host_listener() {
    require_kvm!();
    let dir = TempDir::new("vsock-out");
    let uds = dir.path().join("vm.vsock");
    let listener = UnixListener::bind(format!("{}_7000", uds.display())).unwrap();
    let serial = dir.path().join("serial.log");
    let config = VmConfig {
        cmdline: "7000".into(),
        vsock: Some(VsockConfig { uds: uds.clone() }),
        serial: vmm::SerialConfig::File(serial.clone()),
        timeout: Some(Duration::from_secs(60)),
        ..VmConfig::new(guest("vsock-connect"))
    };
    let h = vmm::build(&config).unwrap().start().unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut line = String::new();
    BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "hello from a dust guest\n");
    conn.write_all(b"hello from the host\n").unwrap();
    let report = h.wait();
    assert_eq!(report.exit, VmExit::Status(0));
    let out = std::fs::read_to_string(&serial).unwrap();
    assert!(out.contains("hello from the host"), "guest serial: {out}");
}

#[test]
fn connect_to_a_closed_port_closes_promptly_and_bad_lines_harm_nothing() {
    require_kvm!();
    let dir = TempDir::new("vsock-refuse");
    let (h, uds) = boot("echo", "", dir.path());
    let good = connect(&uds, 5000).unwrap();

    let t = Instant::now();
    assert!(connect(&uds, 4321).is_err(), "nobody listens on 4321");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refusal took {:?}",
        t.elapsed()
    );

    for bad in [
        "CONNECT\n",
        "CONNECT abc\n",
        "connect 5000\n",
        "CONNECT 99999999999\n",
        "GET / HTTP/1.1\n",
    ] {
        let mut s = UnixStream::connect(&uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bad.as_bytes()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "{bad:?} must be refused");
    }
    let mut long = UnixStream::connect(&uds).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = long.write_all(&[b'9'; 4096]);
    assert_eq!(
        long.read(&mut [0u8; 16]).unwrap_or(0),
        0,
        "an endless line must be refused"
    );

    let got = echo_round_trip(good, b"still here".to_vec());
    assert_eq!(got, b"still here");
    h.killer().kill();
    h.wait();
}

#[test]
fn misbehaving_guests_are_stopped_with_a_device_error() {
    require_kvm!();
    let dir = TempDir::new("vsock-bad");
    // A healthy VM alongside: it must not notice.
    let (healthy, healthy_uds) = boot("echo", "", dir.path());
    for mode in ["oob", "loop", "huge"] {
        let sub = dir.path().join(mode);
        std::fs::create_dir_all(&sub).unwrap();
        let config = VmConfig {
            cmdline: mode.into(),
            vsock: Some(VsockConfig {
                uds: sub.join("vm.vsock"),
            }),
            timeout: Some(Duration::from_secs(30)),
            serial: vmm::SerialConfig::None,
            ..VmConfig::new(guest("bad-virtio"))
        };
        let t = Instant::now();
        let report = vmm::build(&config).unwrap().start().unwrap().wait();
        assert!(
            matches!(&report.exit, VmExit::DeviceError(m) if m.contains("vsock")),
            "{mode}: {:?}",
            report.exit
        );
        assert_eq!(report.exit.exit_code(), dust_abi::status::GUEST_CRASH);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{mode}: took {:?}",
            t.elapsed()
        );
    }
    let got = echo_round_trip(connect(&healthy_uds, 5000).unwrap(), b"unaffected".to_vec());
    assert_eq!(got, b"unaffected");
    healthy.killer().kill();
    healthy.wait();
}

#[test]
fn http_hello_answers_curl_through_the_vsock_socket() {
    require_kvm!();
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is required (scripts/install-deps installs it)");
    }
    let dir = TempDir::new("vsock-curl");
    let (h, uds) = boot("http-hello", "vm=curl-test", dir.path());
    // A one-connection bridge: TCP on loopback -> CONNECT 80 on the VM's socket.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let bridge = std::thread::spawn(move || {
        let (mut client, _) = tcp.accept().unwrap();
        let mut vm = connect(&uds, 80).unwrap();
        let mut vm_rx = vm.try_clone().unwrap();
        let mut client_tx = client.try_clone().unwrap();
        let back = std::thread::spawn(move || std::io::copy(&mut vm_rx, &mut client_tx));
        let _ = std::io::copy(&mut client, &mut vm);
        let _ = back.join();
    });
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "--max-time",
            "20",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("curl-test"), "the body names the VM: {text}");
    bridge.join().unwrap();
    h.killer().kill();
    h.wait();
}
