//! dust's worker jail (docs/security.md), one crate below `vmm` and `summoner`, so that
//! `vmm` touches KVM and nothing else. Both halves live here:
//!
//! - the daemon's half: [`host::Jail`] makes each worker's per-VM root and cgroups (one
//!   [`host::VmJail`] per worker, which owns what it made and removes it), [`cgroup`] the
//!   cgroup hierarchy, [`process`] starts workers (straight into their namespaces) and
//!   reaps them, [`zygote::Zygote`] has them forked instead, and [`exit`] says how one
//!   ended;
//! - the worker's half, entered by `dust worker` before it reads its first command:
//!   [`enter`] joins the VM's cgroups, takes the per-VM directory as `/` (holding only the
//!   guest image, the vsock socket directory and, if configured, the serial file and
//!   snapshot), rlimits, no capabilities, `no_new_privs`, an unprivileged uid/gid; and
//!   [`seccomp`], the per-thread filters. `/dev/kvm` is opened before (by the caller,
//!   through `vmm`), so the jail holds no device node at all.
//!
//! A process cannot move itself into a new pid namespace, only its children: so the
//! daemon starts a jailed worker with the namespaces already made (clone flags). The
//! worker is pid 1 of its pid namespace and a direct child of the daemon, which kills and
//! reaps it; nothing sits in between whose death could orphan it. It dies with the daemon
//! ([`die_with_daemon`]).
//!
//! The daemon writes the [`JailSpec`] into the worker's environment ([`ENV`]), or sends it
//! to the zygote.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod ahead;
pub mod cgroup;
mod enter;
pub mod exit;
mod handles;
pub mod host;
pub mod process;
pub mod seccomp;
pub mod zygote;

use enter::die_with_daemon_keep_fd;
pub use enter::{die_with_daemon, enter, open_serial_file};
pub use host::{Jail, JailConfig, JailConfigError, VmJail};

/// The fd of a worker's control socket (the worker protocol, `vmm::worker::protocol`).
pub const CONTROL_FD: std::os::fd::RawFd = 3;

/// The environment variable that carries a worker's [`JailSpec`] as JSON.
pub const ENV: &str = "DUST_JAIL";

/// The fd on which a worker started by the daemon finds a pidfd of the daemon.
pub const DAEMON_FD: std::os::fd::RawFd = 4;

/// Where the guest image is inside the jail.
pub const IMAGE: &str = "/image";
/// Where the initrd is inside the jail.
pub const INITRD: &str = "/initrd";
/// Where the serial output file is inside the jail.
pub const SERIAL: &str = "/serial";
/// The directory of the vsock socket inside the jail.
pub const RUN: &str = "/run";
/// Where a snapshot directory appears inside the jail (restored VMs read it, templates
/// write it).
pub const SNAPSHOT: &str = "/snapshot";

/// A snapshot directory bind-mounted at [`SNAPSHOT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMount {
    /// The directory on the host.
    pub dir: PathBuf,
    /// Writable for a template; read-only for restored VMs.
    pub writable: bool,
    /// A template's largest file (its memory file: the guest's RAM), the jail's
    /// RLIMIT_FSIZE while it writes the snapshot.
    #[serde(default)]
    pub max_file_bytes: u64,
}

/// How to jail one worker. Paths are host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    /// The per-VM directory that becomes `/` (prepared by the summoner: `run/` owned by
    /// `uid`, empty files to mount the image, initrd and serial file on).
    pub root: PathBuf,
    /// New namespaces, pivot_root and a uid/gid change (needs root).
    pub namespaces: bool,
    /// The unprivileged user and group to run as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The guest image, mounted read-only at [`IMAGE`].
    pub image: PathBuf,
    /// The initrd, mounted read-only at [`INITRD`].
    pub initrd: Option<PathBuf>,
    /// The serial output file, mounted read-write at [`SERIAL`].
    pub serial: Option<PathBuf>,
    /// cgroup directories to join (their `cgroup.procs`).
    pub cgroups: Vec<PathBuf>,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// RLIMIT_NPROC (counts every thread of the uid, across workers).
    pub max_processes: u64,
    /// RLIMIT_FSIZE when there is a serial file (else 0: the worker writes no file).
    pub serial_max_bytes: u64,
    /// Snapshot mode: the snapshot directory, mounted at [`SNAPSHOT`].
    #[serde(default)]
    pub snapshot: Option<SnapshotMount>,
}

/// Why the jail could not be entered. The worker exits; the summoner reports the error.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The spec in the environment is unreadable.
    #[error("jail spec in ${ENV}: {0}")]
    Spec(#[from] serde_json::Error),
    /// A step failed.
    #[error("jail: {step}: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The spec in this process's environment, if the summoner gave one.
pub fn spec_from_env() -> Result<Option<JailSpec>, JailError> {
    match std::env::var(ENV) {
        Ok(json) => Ok(Some(serde_json::from_str(&json)?)),
        Err(_) => Ok(None),
    }
}
