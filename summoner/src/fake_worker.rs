//! A stand-in for `dust worker` that needs no /dev/kvm: it speaks the worker protocol
//! (`vmm::worker::protocol`) on fd 3 and, once "started", answers the hybrid-vsock `CONNECT`
//! on the VM's socket itself with a canned HTTP reply (its body is the VM id).
//!
//! It is the calling test binary run again (see [`args`]): the test [`CHILD_TEST`] serves the
//! protocol when the [`MARKER`] argument is present. What it does is picked by a
//! `fake=<behaviour>` word in the service's command line, which reaches it in the VM config.
//!
//! Test support only, behind the `fake-worker` feature: summoner's and api's integration
//! tests enable it as a dev-dependency; the daemon never builds it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is a failure

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use dust_abi::vsock;
use vmm::worker::protocol::{Command, Event, CONTROL_FD};
use vmm::{Timings, VmExit};

/// The test that becomes the fake worker in a child process.
pub const CHILD_TEST: &str = "fake_worker";
/// The extra argument (a test filter that matches nothing) that tells it so.
pub const MARKER: &str = "dust-fake-worker-child";
/// The guest time the fake worker reports, in microseconds.
pub const GUEST_US: u64 = 7;

/// Arguments that run this test binary as a fake worker.
pub fn args() -> Vec<OsString> {
    [
        CHILD_TEST,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        MARKER,
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// True in the child process.
pub fn is_child() -> bool {
    std::env::args().any(|a| a == MARKER)
}

/// What the fake guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Ready, accepts, answers `200` with its VM id.
    Answer,
    /// Fails to build the shell.
    BuildFails,
    /// Exits (crashes) instead of getting ready.
    Crashes,
    /// Never gets ready.
    NeverReady,
    /// Ready, but nothing listens on the port: the `CONNECT` is closed.
    Refuses,
    /// Accepts, reads the request, then the VM dies.
    DiesWhileAnswering,
    /// Accepts, reads the request, never answers.
    NeverAnswers,
    /// Accepts and echoes bytes back (TCP mode).
    Echo,
    /// Answers `200` with its VM id and the request head it read, in a chunked body on a
    /// `Connection: keep-alive` response, as many HTTP/1.1 servers answer.
    ShowHead,
}

impl Behaviour {
    fn from_cmdline(cmdline: &str) -> Self {
        match cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("fake="))
        {
            Some("build-fails") => Self::BuildFails,
            Some("crashes") => Self::Crashes,
            Some("never-ready") => Self::NeverReady,
            Some("refuses") => Self::Refuses,
            Some("dies") => Self::DiesWhileAnswering,
            Some("never-answers") => Self::NeverAnswers,
            Some("echo") => Self::Echo,
            Some("show-head") => Self::ShowHead,
            _ => Self::Answer,
        }
    }
}

type Out = Arc<Mutex<UnixStream>>;

fn send(out: &Out, event: &Event) {
    let mut line = serde_json::to_vec(event).unwrap();
    line.push(b'\n');
    let _ = out.lock().unwrap().write_all(&line);
}

fn crash_exit() -> Event {
    Event::Exited {
        exit: VmExit::Crash("fake triple fault".into()),
        timings: Timings::default(),
        output: Default::default(),
    }
}

/// The fake worker does not enter the jail the real one does, so the summoner must not
/// prepare one for it.
pub fn no_jail() -> crate::jail::JailConfig {
    crate::jail::JailConfig {
        enabled: false,
        ..Default::default()
    }
}

/// Serve the worker protocol on fd 3 until the summoner goes away; never returns.
pub fn serve() -> ! {
    // SAFETY: the summoner hands its worker fd 3 as the control socket; nothing else in
    // this process owns it, and it is taken exactly once.
    let sock = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let out: Out = Arc::new(Mutex::new(sock.try_clone().unwrap()));
    let mut vm: Option<(String, Behaviour, UnixListener)> = None;
    for line in BufReader::new(sock).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Command>(&line).unwrap() {
            Command::Build { vm_id, config } => {
                let behaviour = Behaviour::from_cmdline(&config.cmdline);
                if behaviour == Behaviour::BuildFails {
                    let message = "fake: no such image".to_string();
                    send(&out, &Event::Error { message });
                    std::process::exit(i32::from(dust_abi::status::VMM_ERROR));
                }
                let uds = config.vsock.unwrap().uds;
                vm = Some((vm_id, behaviour, UnixListener::bind(uds).unwrap()));
                let timings = Timings::default();
                send(&out, &Event::Built { timings });
            }
            Command::Snapshot { config, dir } => template(&config.cmdline, &dir, &out),
            Command::Restore { config } => {
                let cmdline = std::fs::read_to_string(config.snapshot.join("snapshot")).unwrap();
                let behaviour = Behaviour::from_cmdline(&cmdline);
                let uds = config.vsock.unwrap().uds;
                vm = Some((config.id, behaviour, UnixListener::bind(uds).unwrap()));
                let timings = Timings::default();
                send(&out, &Event::Built { timings });
            }
            Command::Start => start(vm.take().unwrap(), &out),
            Command::Stats => send(&out, &Event::Stats { guest_us: GUEST_US }),
            Command::Output => {
                let output = vmm::worker::protocol::Output {
                    text: "fake guest output\n".into(),
                    dropped: 0,
                };
                send(&out, &Event::Output { output });
            }
        }
    }
    // The summoner went away: the VM dies with it.
    std::process::exit(i32::from(dust_abi::status::KILLED));
}

/// A "template": the behaviour goes into the snapshot directory, which the restored
/// shells read back. The worker then exits, as a real one does after a snapshot.
fn template(cmdline: &str, dir: &std::path::Path, out: &Out) -> ! {
    let behaviour = Behaviour::from_cmdline(cmdline);
    if behaviour == Behaviour::BuildFails || behaviour == Behaviour::Crashes {
        let message = "fake: the guest did not reach ready".to_string();
        send(out, &Event::Error { message });
        std::process::exit(i32::from(dust_abi::status::VMM_ERROR));
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("snapshot"), cmdline).unwrap();
    let info = vmm::snapshot::SnapshotInfo {
        guest_us: GUEST_US,
        total_us: GUEST_US,
        memory_bytes: 4096,
    };
    send(out, &Event::Snapshotted { info });
    std::process::exit(0);
}

/// Start the built shell: crash, never get ready, or get ready and serve as a guest.
fn start((vm_id, behaviour, listener): (String, Behaviour, UnixListener), out: &Out) {
    match behaviour {
        Behaviour::Crashes => {
            send(out, &crash_exit());
            std::process::exit(i32::from(dust_abi::status::GUEST_CRASH));
        }
        Behaviour::NeverReady => {}
        _ => {
            send(out, &Event::Ready { since_start_us: 1 });
            let out = out.clone();
            std::thread::spawn(move || guest(&vm_id, behaviour, &listener, &out));
        }
    }
}

/// The fake guest behind the vsock socket.
fn guest(vm_id: &str, behaviour: Behaviour, listener: &UnixListener, out: &Out) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { return };
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") && s.read(&mut b).unwrap_or(0) == 1 {
            line.push(b[0]);
        }
        if vsock::parse_connect(&line).is_none() || behaviour == Behaviour::Refuses {
            continue; // closes the stream: the device's answer to a port nobody listens on
        }
        let _ = s.write_all(vsock::ok_line(1 << 30).as_bytes());
        if behaviour == Behaviour::Echo {
            let mut back = s.try_clone().unwrap();
            let _ = std::io::copy(&mut s, &mut back);
            continue;
        }
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        match behaviour {
            Behaviour::DiesWhileAnswering => {
                send(out, &crash_exit());
                std::process::exit(i32::from(dust_abi::status::GUEST_CRASH));
            }
            Behaviour::NeverAnswers => {
                // Keep the connection open until the summoner kills the process.
                let _ = s.read(&mut b);
            }
            Behaviour::ShowHead => {
                let body = format!("{vm_id}\n{}", String::from_utf8_lossy(&head));
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                );
            }
            _ => {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{vm_id}",
                    vm_id.len()
                );
            }
        }
    }
}
