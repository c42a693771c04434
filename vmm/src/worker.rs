//! The worker process protocol: one VM per process (DESIGN.md, process model).
//!
//! The summoner starts `dust worker` with one end of a Unix socketpair on fd 3 and speaks
//! newline-delimited JSON over it: a [`Command`] per line in, an [`Event`] per line out.
//! A worker is told to `build` a VM shell ahead of time (VM, memory, image, vCPU registers:
//! everything but running it), then `start`; it reports `ready` when the guest writes the
//! boot-timer magic and `exited` when the VM ends, then the process exits. `stats` asks for
//! the guest time so far. If the summoner goes away (EOF), the VM is killed.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{Timings, VmConfig, VmExit};

/// The fd the worker's control socket is on.
pub const CONTROL_FD: i32 = 3;

/// Summoner -> worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Build the VM shell.
    Build {
        /// Its id (names its vsock socket and appears in responses).
        vm_id: String,
        /// What to build.
        config: Box<VmConfig>,
    },
    /// Run it.
    Start,
    /// Report guest time so far.
    Stats,
}

/// Worker -> summoner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The shell is built; it has not run guest code.
    Built {
        /// Build phases.
        timings: Timings,
    },
    /// The guest signalled ready, this long after `start`.
    Ready {
        /// Microseconds since the start command was handled.
        since_start_us: u64,
    },
    /// Answer to `stats`.
    Stats {
        /// Time inside KVM_RUN so far.
        guest_us: u64,
    },
    /// The VM ended; the process exits next.
    Exited {
        /// How.
        exit: VmExit,
        /// All phases.
        timings: Timings,
    },
    /// A command failed (e.g. the build); the process exits next.
    Error {
        /// What went wrong.
        message: String,
    },
}

type Out = Arc<Mutex<UnixStream>>;

fn send(out: &Out, event: &Event) {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    let mut s = out.lock().unwrap_or_else(|p| p.into_inner());
    let _ = s.write_all(&line);
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
    let mut built = None;
    let mut running: Option<crate::Killer> = None;
    for line in BufReader::new(sock).lines() {
        let Ok(line) = line else { break };
        let cmd = match serde_json::from_str::<Command>(&line) {
            Ok(c) => c,
            Err(e) => {
                let message = format!("bad command: {e}");
                send(&out, &Event::Error { message });
                continue;
            }
        };
        match cmd {
            Command::Build { vm_id: _, config } => match crate::build(&config, None) {
                Ok(vm) => {
                    // Filter this thread before the shell is reported built (security.md).
                    if let Err(e) = crate::seccomp::worker_built(&config.cmdline) {
                        let message = e.to_string();
                        send(&out, &Event::Error { message });
                        return dust_abi::status::VMM_ERROR;
                    }
                    let timings = vm.timings().clone();
                    send(&out, &Event::Built { timings });
                    built = Some(vm);
                }
                Err(e) => {
                    send(
                        &out,
                        &Event::Error {
                            message: e.to_string(),
                        },
                    );
                    return dust_abi::status::VMM_ERROR;
                }
            },
            Command::Start => {
                let Some(vm) = built.take() else {
                    let message = "start without a built VM".into();
                    send(&out, &Event::Error { message });
                    continue;
                };
                crate::seccomp::worker_starting();
                match start(vm, &out) {
                    Ok(killer) => running = Some(killer),
                    Err(e) => {
                        send(
                            &out,
                            &Event::Error {
                                message: e.to_string(),
                            },
                        );
                        return dust_abi::status::VMM_ERROR;
                    }
                }
            }
            Command::Stats => {
                let guest_us = running.as_ref().map_or(0, crate::Killer::guest_us);
                send(&out, &Event::Stats { guest_us });
            }
        }
    }
    // The summoner went away: do not leave a guest running without an owner.
    if let Some(killer) = running {
        killer.kill();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    dust_abi::status::KILLED
}

/// Start the VM; a waiter thread reports its end and exits the process.
fn start(vm: crate::Vm, out: &Out) -> Result<crate::Killer, crate::BuildError> {
    let t0 = Instant::now();
    let ready_out = out.clone();
    vm.on_ready(move |at| {
        let since_start_us = crate::timings::us(at.saturating_duration_since(t0));
        send(&ready_out, &Event::Ready { since_start_us });
    });
    let handle = vm.start()?;
    let killer = handle.killer();
    let exit_out = out.clone();
    std::thread::Builder::new()
        .name("vm-wait".into())
        .spawn(move || {
            let report = handle.wait();
            let code = report.exit.exit_code();
            let (exit, timings) = (report.exit, report.timings);
            send(&exit_out, &Event::Exited { exit, timings });
            std::process::exit(i32::from(code));
        })
        .map_err(crate::BuildError::Thread)?;
    Ok(killer)
}
