//! The worker protocol (docs/architecture.md, process model): the summoner starts
//! `dust worker` with one end of a Unix socketpair on fd [`CONTROL_FD`] and speaks
//! newline-delimited JSON over it: a [`Command`] per line in, an [`Event`] per line out.
//!
//! A worker is told to `build` a VM shell ahead of time (VM, memory, image, vCPU registers:
//! everything but running it), then `start`; it reports `ready` when the guest writes the
//! boot-timer magic and `exited` when the VM ends, then the process exits. `stats` asks for
//! the guest time so far, `output` for the last bytes of its serial output. If the
//! summoner goes away (EOF), the VM is killed.

use serde::{Deserialize, Serialize};

use crate::{Timings, VmConfig, VmExit};

/// The fd the worker's control socket is on (the jail's: its seccomp trap reports there).
pub const CONTROL_FD: i32 = dust_jail::CONTROL_FD;

/// The last bytes of a guest's serial output (at most `devices::legacy::TAIL_BYTES`),
/// whatever its serial sink: what the summoner logs when a request fails.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Output {
    /// The bytes kept, as text.
    pub text: String,
    /// How many bytes before them were dropped.
    #[serde(default)]
    pub dropped: u64,
}

impl Output {
    /// Nothing was written.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.dropped == 0
    }

    /// What `tail` holds now.
    pub fn of(tail: &devices::legacy::OutputTail) -> Self {
        let (text, dropped) = tail.text();
        Self { text, dropped }
    }
}

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
    /// Build the VM shell by restoring a snapshot.
    Restore {
        /// Which snapshot, and this VM's id, socket and serial.
        config: Box<crate::RestoreConfig>,
    },
    /// Boot `config` to its guest's ready, save it into `dir`, and exit (a template VM).
    Snapshot {
        /// What to boot.
        config: Box<VmConfig>,
        /// Where the snapshot goes.
        dir: std::path::PathBuf,
    },
    /// Run it.
    Start,
    /// Report guest time so far.
    Stats,
    /// Report the last bytes of the guest's serial output.
    Output,
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
    /// The snapshot is written; the process exits next.
    Snapshotted {
        /// What it took.
        info: crate::snapshot::SnapshotInfo,
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
        /// The last bytes of its serial output (see [`Event::Output`]).
        #[serde(default, skip_serializing_if = "Output::is_empty")]
        output: Output,
    },
    /// Answer to `output`.
    Output {
        /// The last bytes of the guest's serial output.
        output: Output,
    },
    /// A command failed (e.g. the build); the process exits next.
    Error {
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_output_travels_with_the_exit_and_may_be_absent() {
        let exited = Event::Exited {
            exit: VmExit::Crash("triple fault".into()),
            timings: Timings::default(),
            output: Output {
                text: "[vm-1] handler trapped: unreachable\n".into(),
                dropped: 3,
            },
        };
        let line = serde_json::to_string(&exited).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Event>(&line).ok(), Some(exited));
        // A worker that wrote nothing sends no output; one from before it existed reads.
        let quiet = Event::Exited {
            exit: VmExit::Crash("x".into()),
            timings: Timings::default(),
            output: Output::default(),
        };
        let line = serde_json::to_string(&quiet).unwrap_or_default();
        assert!(!line.contains("output"), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).ok(), Some(quiet));
        let asked = serde_json::from_str::<Command>(r#"{"op":"output"}"#);
        assert!(matches!(asked, Ok(Command::Output)));
    }
}
