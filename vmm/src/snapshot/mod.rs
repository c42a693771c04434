//! Snapshots: a VM saved at its guest's `ready()` (a *template*), from which every request's
//! VM is restored instead of booted. The format is in docs/snapshots.md:
//!
//! - `DIR/snapshot`: `DUSTSNAP`, a little-endian u32 header length, the JSON [`Header`], then
//!   the JSON [`State`] (vCPU, devices, VM clock, the config the template was built from).
//! - `DIR/memory`: guest RAM, regions back to back, only non-zero pages written (holes
//!   elsewhere). Restored VMs map it `MAP_PRIVATE`: copy-on-write, never copied whole.
//!
//! Snapshots are for the host that took them: this KVM cannot set a VM's TSC frequency and
//! has no nested state, so the header's CPUID and host fingerprints must match.
//!
//! Taking and restoring are both here: [`take`] (`take.rs`) boots a template and writes it;
//! [`inspect`] (`load.rs`) reads a directory back and checks it against this host;
//! [`restore`] (`restore.rs`) builds a new VM shell from it. [`parse_file`] and
//! [`check_state`] (`format.rs`) are the on-disk framing alone, for tests and fuzzing.

mod format;
mod host;
mod load;
mod memory;
mod restore;
mod take;
mod vcpu;

use std::path::{Path, PathBuf};

use devices::legacy::SerialSnapshot;
use devices::virtio::MmioSnapshot;
use kvm_bindings::kvm_clock_data;
use serde::{Deserialize, Serialize};

pub use format::{check_state, parse_file};
pub use load::inspect;
pub use restore::restore;
pub use take::{take, take_keeping_output};
pub(crate) use vcpu::VcpuState;

use crate::config::VmConfig;
use crate::kvm::KvmError;
use crate::vm::BuildError;
use crate::VmExit;

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "snapshot";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Version of the on-disk format this dust writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"DUSTSNAP";
/// Headers are small; anything larger is not ours.
const HEADER_MAX: u32 = 64 * 1024;

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot at that path.
    #[error("no snapshot at {0}: the file {STATE_FILE} is missing")]
    Missing(PathBuf),
    /// Reading or writing a file failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the magic.
    #[error("{0} is not a dust snapshot (bad magic)")]
    NotASnapshot(PathBuf),
    /// The file ends early.
    #[error("snapshot is truncated: {0}")]
    Truncated(String),
    /// The state does not match its checksum, or cannot be parsed.
    #[error("snapshot is corrupted: {0}")]
    Corrupted(String),
    /// Written by a dust with another format.
    #[error("snapshot format version {found} is not supported (this dust reads version {FORMAT_VERSION}; written by dust {dust})")]
    Version {
        /// The file's format version.
        found: u32,
        /// The dust that wrote it.
        dust: String,
    },
    /// Taken on another host or CPU model, or with another CPUID.
    #[error("snapshot was taken on another host ({theirs}); this host is {ours}: snapshots restore only where they were taken")]
    Host {
        /// Where it was taken.
        theirs: String,
        /// This host.
        ours: String,
    },
    /// The memory file does not hold the VM's memory size.
    #[error("snapshot memory file is {file_bytes} bytes but the VM has {memory_mib} MiB")]
    MemorySize {
        /// Its size.
        file_bytes: u64,
        /// What the header says.
        memory_mib: u32,
    },
    /// The VM cannot be snapshotted.
    #[error("cannot snapshot this VM: {0}")]
    Unsupported(String),
    /// The template never reached ready.
    #[error("the guest did not reach ready: {0}")]
    NotReady(VmExit),
    /// Building the template or the restored VM failed.
    #[error(transparent)]
    Build(#[from] Box<BuildError>),
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The template stopped at ready without its vCPU state captured.
    #[error("the template's vCPU state was not captured at ready")]
    NotCaptured,
    /// The vsock transport or device could not be saved or restored.
    #[error("vsock device state: {0}")]
    Vsock(#[source] devices::virtio::VirtioError),
    /// The header or the state could not be written as JSON.
    #[error("cannot encode the snapshot: {0}")]
    Encode(#[source] serde_json::Error),
}

/// The snapshot header: what must match before anything is restored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The writer's dust version.
    pub dust_version: String,
    /// FNV-1a of the CPUID the VM was given.
    pub cpuid_fingerprint: u64,
    /// FNV-1a of the host description.
    pub host_fingerprint: u64,
    /// KVM API version and CPU model of the host.
    pub host: String,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Bytes of the state after the header.
    pub state_len: u64,
    /// FNV-1a of those bytes.
    pub state_checksum: u64,
    /// The template's info-page generation; restored VMs get a greater one.
    pub generation: u64,
}

/// Everything of the VM but its memory.
#[derive(Serialize, Deserialize)]
pub(crate) struct State {
    pub config: VmConfig,
    pub vcpu: VcpuState,
    pub serial: SerialSnapshot,
    pub vsock: Option<MmioSnapshot>,
    pub clock: kvm_clock_data,
}

/// What [`take`] wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotInfo {
    /// Guest time from start to ready, microseconds.
    pub guest_us: u64,
    /// Wall time of the whole take (boot + save), microseconds.
    pub total_us: u64,
    /// Non-zero memory bytes written.
    pub memory_bytes: u64,
}

/// FNV-1a, 64 bit: a checksum against accidents, not an adversary.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}
