//! `dust worker`: serve the [`protocol`](super::protocol) on fd 3 for one VM, then exit.

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow::{self, Break, Continue};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use devices::legacy::OutputTail;

use super::protocol::{Command, Event, Output, CONTROL_FD};
use crate::{BuildError, Killer, Vm, VmHandle};

type Out = Arc<Mutex<UnixStream>>;

fn send(out: &Out, event: &Event) {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    let mut s = out.lock().unwrap_or_else(|p| p.into_inner());
    let _ = s.write_all(&line);
}

fn send_error(out: &Out, message: String) {
    send(out, &Event::Error { message });
}

/// Where the worker's one VM is.
enum State {
    /// Nothing built yet.
    Empty,
    /// A shell that has never run guest code, and the thread that will wait for its end.
    Built(Box<Vm>, Waiter),
    /// Running; the waiter thread reports its end and exits the process.
    Running {
        killer: Killer,
        waiter: JoinHandle<()>,
        tail: OutputTail,
    },
}

/// Serve the protocol on fd 3 until the VM ends; returns the process exit status.
///
/// The VM's end is reported by a waiter thread, which then exits the process; this loop
/// keeps answering `stats` meanwhile. EOF on the control socket kills the VM.
pub fn serve() -> u8 {
    // SAFETY: the summoner hands the worker fd 3 as its control socket and nothing else in
    // this process owns it; we take ownership exactly once.
    let sock = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let out: Out = match sock.try_clone() {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(_) => return dust_abi::status::VMM_ERROR,
    };
    let mut state = State::Empty;
    for line in BufReader::new(sock).lines() {
        let Ok(line) = line else { break };
        let cmd = match serde_json::from_str::<Command>(&line) {
            Ok(c) => c,
            Err(e) => {
                send_error(&out, format!("bad command: {e}"));
                continue;
            }
        };
        state = match step(cmd, state, &out) {
            Continue(next) => next,
            Break(status) => return status,
        };
    }
    // The summoner went away: do not leave a guest running without an owner. The waiter
    // reports the end and exits the process; if it cannot, we return.
    if let State::Running { killer, waiter, .. } = state {
        killer.kill();
        let _ = waiter.join();
    }
    dust_abi::status::KILLED
}

/// One command in the VM's current state: the next state, or the worker's exit status once it
/// must end (a snapshot taken or failed, a shell or a start that failed).
fn step(cmd: Command, state: State, out: &Out) -> ControlFlow<u8, State> {
    match (cmd, state) {
        (Command::Build { vm_id: _, config }, State::Empty) => {
            let vm = crate::build(&config).map_err(|e| e.to_string());
            shell(vm, &config.cmdline, out).map_or(Break(dust_abi::status::VMM_ERROR), Continue)
        }
        (Command::Restore { config }, State::Empty) => {
            let vm = crate::restore(&config).map_err(|e| e.to_string());
            shell(vm, "", out).map_or(Break(dust_abi::status::VMM_ERROR), Continue)
        }
        (Command::Snapshot { config, dir }, State::Empty) => Break(snapshot(&config, &dir, out)),
        (Command::Start, State::Built(vm, waiter)) => match start(*vm, waiter, out) {
            Ok((killer, waiter, tail)) => Continue(State::Running {
                killer,
                waiter,
                tail,
            }),
            Err(e) => {
                send_error(out, e.to_string());
                Break(dust_abi::status::VMM_ERROR)
            }
        },
        (Command::Stats, s) => {
            let guest_us = match &s {
                State::Running { killer, .. } => killer.guest_us(),
                _ => 0,
            };
            send(out, &Event::Stats { guest_us });
            Continue(s)
        }
        (Command::Output, s) => {
            let output = match &s {
                State::Running { tail, .. } => Output::of(tail),
                State::Built(vm, _) => Output::of(&vm.serial_tail()),
                State::Empty => Output::default(),
            };
            send(out, &Event::Output { output });
            Continue(s)
        }
        (cmd, s) => {
            send_error(out, format!("{cmd:?} is not valid now"));
            Continue(s)
        }
    }
}

/// Take a template into `dir` and report it; returns the worker's exit status.
fn snapshot(config: &crate::VmConfig, dir: &std::path::Path, out: &Out) -> u8 {
    let mut tail = None;
    match crate::snapshot::take_keeping_output(config, dir, &mut tail) {
        Ok(info) => {
            send(out, &Event::Snapshotted { info });
            0
        }
        Err(e) => {
            // What the guest wrote first, then why: the summoner logs both.
            let output = tail.map(|t| Output::of(&t)).unwrap_or_default();
            if !output.is_empty() {
                send(out, &Event::Output { output });
            }
            send_error(out, e.to_string());
            dust_abi::status::VMM_ERROR
        }
    }
}

/// A shell was built or restored (or not): filter this thread before the shell is reported
/// built (docs/security.md), then get ready to start it and report it. `None`: the worker
/// must exit, the error sent.
fn shell(vm: Result<Vm, String>, cmdline: &str, out: &Out) -> Option<State> {
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            send_error(out, e);
            return None;
        }
    };
    if let Err(e) = dust_jail::seccomp::worker_built(cmdline) {
        send_error(out, e.to_string());
        return None;
    }
    // What a start would do first, done now, off the request: the kick signal's handler
    // and the thread that waits for the VM's end (a thread start and its first
    // allocations cost more than the rest of a start on this path).
    let ready = crate::vcpu::install_kick_handler()
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
        .and_then(|()| Waiter::spawn(out.clone()));
    let waiter = match ready {
        Ok(w) => w,
        Err(e) => {
            send_error(out, BuildError::Thread(e).to_string());
            return None;
        }
    };
    let timings = vm.timings().clone();
    send(out, &Event::Built { timings });
    Some(State::Built(Box::new(vm), waiter))
}

/// The thread that waits for a running VM's end, reports it (with its last serial output)
/// and exits the process. Started with the shell; dropped unused, it ends.
struct Waiter {
    go: mpsc::Sender<(VmHandle, OutputTail)>,
    thread: JoinHandle<()>,
}

impl Waiter {
    fn spawn(out: Out) -> std::io::Result<Self> {
        let (go, wait) = mpsc::channel::<(VmHandle, OutputTail)>();
        let thread = std::thread::Builder::new()
            .name("vm-wait".into())
            .spawn(move || {
                let Ok((handle, tail)) = wait.recv() else {
                    return;
                };
                let report = handle.wait();
                let code = report.exit.exit_code();
                let (exit, timings) = (report.exit, report.timings);
                let output = Output::of(&tail);
                send(
                    &out,
                    &Event::Exited {
                        exit,
                        timings,
                        output,
                    },
                );
                std::process::exit(i32::from(code));
            })?;
        Ok(Self { go, thread })
    }
}

/// Start the VM and hand it to its waiter.
fn start(
    vm: Vm,
    waiter: Waiter,
    out: &Out,
) -> Result<(Killer, JoinHandle<()>, OutputTail), BuildError> {
    dust_jail::seccomp::worker_starting();
    let tail = vm.serial_tail();
    let t0 = Instant::now();
    let ready_out = out.clone();
    vm.on_ready(move |at| {
        let since_start_us = crate::timings::us(at.saturating_duration_since(t0));
        send(&ready_out, &Event::Ready { since_start_us });
    });
    let handle = vm.start()?;
    let killer = handle.killer();
    // The waiter only ends early if it could not be started, which `shell` reported.
    let _ = waiter.go.send((handle, tail.clone()));
    Ok((killer, waiter.thread, tail))
}
