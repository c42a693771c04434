//! Every example guest through both of dust's entries (the 64-bit one and `--boot pvh`) and
//! through PVH in QEMU microvm; the HTTP runtime (`http::serve`: chunked bodies, 431, 413);
//! f64 arithmetic in a guest. Real guests on /dev/kvm.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{dust_run, guest, read_reply, HttpReply, TempDir};
use vmm::{BootProtocol, VmConfig, VmHandle, VsockConfig};

const ENTRIES: [&str; 2] = ["linux", "pvh"];

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dust run --boot <boot> <guest> <args>`; checks the exit status and returns stdout.
fn run_ok(boot: &str, name: &str, args: &[&str], status: i32) -> String {
    let image = guest(name);
    let mut all = vec!["--boot", boot, image.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = dust_run(&all);
    assert_eq!(
        out.status.code(),
        Some(status),
        "{name} --boot {boot}: stdout {:?} stderr {:?}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// A started VM with a vsock device at `dir/vm.vsock`, booted through `boot`, ready.
fn boot_vsock(name: &str, boot: BootProtocol, dir: &Path) -> (VmHandle, std::path::PathBuf) {
    let uds = dir.join("vm.vsock");
    let config = VmConfig {
        cmdline: "vm=t".into(),
        vsock: Some(VsockConfig { uds: uds.clone() }),
        timeout: Some(Duration::from_secs(60)),
        boot,
        serial: vmm::SerialConfig::None,
        ..VmConfig::new(guest(name))
    };
    let h = vmm::build(&config).expect("build").start().expect("start");
    let t = Instant::now();
    while h.ready_at().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} never signalled ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (h, uds)
}

/// `CONNECT port` on the VM's socket.
fn connect(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).expect("connect to the VM's vsock socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "), "CONNECT {port}: {line:?}");
    s
}

/// One raw request to http-hello; the reply after any `100 Continue`, and whether there
/// was one.
fn exchange(uds: &Path, request: &[u8]) -> (HttpReply, bool) {
    let mut s = connect(uds, 80);
    s.write_all(request).unwrap();
    // The guest closes after its response: read everything, then skip a `100 Continue`.
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let rest = all.strip_prefix(&interim[..]);
    let reply = read_reply(&mut std::io::Cursor::new(rest.unwrap_or(&all))).unwrap();
    (reply, rest.is_some())
}

#[test]
fn command_line_guests_run_through_both_entries() {
    require_kvm!();
    for boot in ENTRIES {
        let out = run_ok(boot, "hello", &["--cmdline", "a b"], 0);
        assert!(out.contains("Hello from dust!\nargs: a b"), "{boot}: {out}");
        run_ok(boot, "exit-code", &["--cmdline", "7"], 7);
        assert!(run_ok(boot, "selftest", &[], 0).contains("selftest: ok"));
        run_ok(boot, "crash", &[], 241);
        run_ok(boot, "spin", &["--timeout", "300ms"], 242);
    }
}

#[test]
fn pvh_boot_of_an_image_without_the_note_is_refused() {
    let dir = TempDir::new("guests-nonote");
    let mut elf = std::fs::read(guest("hello")).unwrap();
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(elf[56..58].try_into().unwrap()) as usize;
    let notes: Vec<usize> = (0..phnum)
        .map(|i| phoff + i * 56)
        .filter(|&off| u32::from_le_bytes(elf[off..off + 4].try_into().unwrap()) == 4)
        .collect();
    assert_eq!(notes.len(), 1, "hello has one PT_NOTE");
    elf[notes[0]..notes[0] + 4].copy_from_slice(&0u32.to_le_bytes()); // PT_NULL
    let image = dir.file("no-note", &elf);
    let out = dust_run(&["--boot", "pvh", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(243));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs an ELF with a PVH note"), "{err}");
    // The 64-bit entry does not need the note.
    let out = dust_run(&[image.to_str().unwrap()]);
    if common::kvm_available() {
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    }
}

#[test]
fn a_guest_computes_with_f64() {
    require_kvm!();
    for boot in ENTRIES {
        let out = run_ok(boot, "float", &["--cmdline", "2.5 -0.5"], 0);
        for line in [
            "float: sqrt2 = 1.4142135624",
            "float: pi = 3.14159265",
            "float: e = 2.7182818285",
            "float: 2.5^2 = 6.25",
            "float: -0.5^2 = 0.25",
        ] {
            assert!(out.contains(line), "{boot}: no {line:?} in {out}");
        }
    }
}

#[test]
fn vsock_guests_run_through_both_entries() {
    require_kvm!();
    for boot in [BootProtocol::Linux, BootProtocol::Pvh] {
        let dir = TempDir::new("guests-vsock");
        let (h, uds) = boot_vsock("echo", boot, dir.path());
        let mut s = connect(&uds, 5000);
        s.write_all(b"ping over vsock").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"ping over vsock", "{boot:?}");
        h.killer().kill();
        h.wait();

        let dir = TempDir::new("guests-http");
        let (h, uds) = boot_vsock("http-hello", boot, dir.path());
        let (r, _) = exchange(&uds, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"Hello from dust VM t\n"[..])
        );
        h.killer().kill();
        h.wait();
    }
    // vsock-connect with nobody listening on the host, and bad-virtio's broken chain.
    for boot in ENTRIES {
        let dir = TempDir::new("guests-connect");
        let uds = dir.path().join("vm.vsock");
        let out = run_ok(
            boot,
            "vsock-connect",
            &["--vsock", uds.to_str().unwrap()],
            1,
        );
        assert!(out.contains("connection refused"), "{boot}: {out}");
        let uds = dir.path().join("bad.vsock");
        run_ok(
            boot,
            "bad-virtio",
            &["--vsock", uds.to_str().unwrap(), "--cmdline", "oob"],
            241,
        );
    }
}

#[test]
fn http_hello_takes_chunked_uploads_and_refuses_oversized_requests() {
    require_kvm!();
    let dir = TempDir::new("guests-chunked");
    let (h, uds) = boot_vsock("http-hello", BootProtocol::Linux, dir.path());
    let mut chunked = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n".to_vec();
    let mut sent = 0;
    for size in [1, 100, 4000, 20_000, 7] {
        chunked.extend_from_slice(format!("{size:x};x=y\r\n").as_bytes());
        chunked.extend(std::iter::repeat_n(b'z', size));
        chunked.extend_from_slice(b"\r\n");
        sent += size;
    }
    chunked.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
    let (r, continued) = exchange(&uds, &chunked);
    assert!(continued, "no 100 Continue before the body");
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains(&format!("read {sent} bytes")), "{body}");

    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(exchange(&uds, big_head.as_bytes()).0.status, 431);

    let big_body = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n";
    assert_eq!(exchange(&uds, big_body).0.status, 413);
    let bad_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    assert_eq!(exchange(&uds, bad_chunk).0.status, 400);
    h.killer().kill();
    h.wait();
}

fn qemu() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and qemu-system-x86_64 is missing (scripts/install-deps installs it)"
        );
        eprintln!("\n*** SKIPPED: qemu-system-x86_64 is not installed ***\n");
    }
    found
}

/// The leanest QEMU microvm (the one `dust bench boot --peers` runs), booting `name`
/// through its PVH note.
fn qemu_cmd(qemu: &Path, name: &str, append: &str) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "32",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ])
    .arg(guest(name))
    .args(["-append", append])
    .stdin(Stdio::null());
    c
}

#[test]
fn every_example_guest_boots_through_pvh_in_qemu_microvm() {
    require_kvm!();
    let Some(q) = qemu() else { return };
    // isa-debug-exit reports (status << 1) | 1; -no-reboot turns a triple fault into exit 0.
    // QEMU microvm has no vsock device here, so the vsock guests reach main and report that.
    let cases: [(&str, &str, i32, &str); 9] = [
        ("hello", "a b", 1, "Hello from dust!\nargs: a b"),
        ("exit-code", "7", 15, ""),
        ("selftest", "", 1, "selftest: ok"),
        ("float", "2.5", 1, "float: 2.5^2 = 6.25"),
        ("crash", "", 0, ""),
        ("echo", "", 3, "error:"),
        ("http-hello", "", 3, "error:"),
        ("vsock-connect", "", 3, "error:"),
        ("bad-virtio", "oob", 9, ""),
    ];
    for (name, append, status, needle) in cases {
        let out = qemu_cmd(&q, name, append).output().expect("spawn qemu");
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(status),
            "{name} in QEMU: stdout {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(needle), "{name} in QEMU: {text:?}");
    }
    // spin never exits: it must still be running when it is killed.
    let mut child = qemu_cmd(&q, "spin", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.try_wait().unwrap().is_none(), "spin exited in QEMU");
    child.kill().unwrap();
    child.wait().unwrap();
}
