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

mod format;
mod memory;
mod vcpu;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use devices::legacy::SerialSnapshot;
use devices::virtio::MmioSnapshot;
use kvm_bindings::kvm_clock_data;
use serde::{Deserialize, Serialize};

use format::parse_state;
pub use format::{check_state, parse_file};
pub(crate) use memory::map_private;
pub(crate) use vcpu::VcpuState;

use crate::config::VmConfig;
use crate::kvm::{kvm, KvmError};
use crate::timings::since;
use crate::vm::{BuildError, Resources};
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

/// The host as a snapshot records it: KVM API version and the CPU's brand string (CPUID
/// leaves 0x8000_0002-4: no file to read on the restore path).
fn host_description() -> String {
    let api = kvm().map(|k| k.get_api_version()).unwrap_or(-1);
    let mut brand = Vec::with_capacity(48);
    for leaf in 0x8000_0002u32..=0x8000_0004 {
        // Extended leaves up to 0x8000_0004 exist on every CPU that runs KVM.
        let r = core::arch::x86_64::__cpuid(leaf);
        for v in [r.eax, r.ebx, r.ecx, r.edx] {
            brand.extend_from_slice(&v.to_le_bytes());
        }
    }
    let model = String::from_utf8_lossy(&brand);
    format!(
        "KVM API {api}, {}",
        model.trim_matches(char::from(0)).trim()
    )
}

/// Fingerprint of the CPUID a dust VM is given on this host.
fn cpuid_fingerprint() -> Result<u64, KvmError> {
    let kvm = kvm().map_err(crate::kvm::kvm_err("opening /dev/kvm"))?;
    let base = crate::x86_64::cpuid::supported(kvm)
        .map_err(crate::kvm::kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let cpuid = crate::x86_64::cpuid::for_vcpu(base, 0, 1);
    let mut bytes = Vec::new();
    for e in cpuid.as_slice() {
        for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(fnv1a(&bytes))
}

/// Boot `config` to its guest's ready, save the VM into `dir` (created; files replaced
/// atomically) and destroy it.
pub fn take(config: &VmConfig, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
    take_keeping_output(config, dir, &mut None)
}

/// [`take`], handing the template's serial output tail to `tail` once its VM is built, so
/// that a template that fails can say why (the worker sends it to the summoner's log).
pub fn take_keeping_output(
    config: &VmConfig,
    dir: &Path,
    tail: &mut Option<devices::legacy::OutputTail>,
) -> Result<SnapshotInfo, SnapshotError> {
    let t0 = Instant::now();
    if config.vcpus != 1 {
        return Err(SnapshotError::Unsupported(
            "only single-vCPU VMs can be snapshotted".into(),
        ));
    }
    if config.irqchip {
        return Err(SnapshotError::Unsupported(
            "VMs with the in-kernel irqchip cannot be snapshotted yet (its PIT makes every restore sleep 7-24 ms in the kernel); use the default polling mode".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let vm = crate::build(config).map_err(Box::new)?;
    *tail = Some(vm.serial_tail());
    vm.run_state_ref().capture_at_ready();
    let handle = vm.start().map_err(Box::new)?;
    let state = handle.run_state().clone();
    let (report, res) = handle.wait_keep(true);
    if report.exit != VmExit::Snapshotted {
        return Err(SnapshotError::NotReady(report.exit));
    }
    let (Some(vcpu), Some(res)) = (state.take_capture(), res) else {
        return Err(SnapshotError::NotCaptured);
    };
    let memory_bytes = save(config, vcpu, res, dir)?;
    Ok(SnapshotInfo {
        guest_us: report.timings.guest_us,
        total_us: since(t0),
        memory_bytes,
    })
}

/// Write the state and memory files of a stopped template.
fn save(
    config: &VmConfig,
    vcpu: VcpuState,
    mut res: Resources,
    dir: &Path,
) -> Result<u64, SnapshotError> {
    // Freeze the devices: the event loop stops before their state is read.
    if let Some(mut events) = res.events.take() {
        events.stop();
    }
    let serial = res
        .serial
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .snapshot();
    let vsock = match &res.vsock {
        Some(t) => Some(
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot()
                .map_err(SnapshotError::Vsock)?,
        ),
        None => None,
    };
    let clock = res
        .vm_fd
        .get_clock()
        .map_err(crate::kvm::kvm_err("KVM_GET_CLOCK"))?;
    let generation = crate::vminfo::current_generation(&res.mem);
    let state = State {
        config: config.clone(),
        vcpu,
        serial,
        vsock,
        clock,
    };
    let state_bytes = serde_json::to_vec(&state).map_err(SnapshotError::Encode)?;
    let host = host_description();
    let header = Header {
        format_version: FORMAT_VERSION,
        dust_version: env!("CARGO_PKG_VERSION").into(),
        cpuid_fingerprint: cpuid_fingerprint()?,
        host_fingerprint: fnv1a(host.as_bytes()),
        host,
        memory_mib: config.memory_mib,
        state_len: state_bytes.len() as u64,
        state_checksum: fnv1a(&state_bytes),
        generation,
    };
    let header_bytes = serde_json::to_vec(&header).map_err(SnapshotError::Encode)?;

    let mem_tmp = dir.join(format!(".{MEMORY_FILE}.tmp"));
    let file = File::create(&mem_tmp).map_err(io_err(&mem_tmp))?;
    let memory_bytes = memory::save(&res.mem, &file).map_err(io_err(&mem_tmp))?;
    drop(file);
    let state_tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut f = File::create(&state_tmp).map_err(io_err(&state_tmp))?;
    f.write_all(MAGIC)
        .and_then(|()| f.write_all(&(header_bytes.len() as u32).to_le_bytes()))
        .and_then(|()| f.write_all(&header_bytes))
        .and_then(|()| f.write_all(&state_bytes))
        .map_err(io_err(&state_tmp))?;
    drop(f);
    let mem_path = dir.join(MEMORY_FILE);
    std::fs::rename(&mem_tmp, &mem_path).map_err(io_err(&mem_path))?;
    let state_path = dir.join(STATE_FILE);
    std::fs::rename(&state_tmp, &state_path).map_err(io_err(&state_path))?;
    Ok(memory_bytes)
}

/// A snapshot read and checked: its header, state, and open memory file.
pub(crate) struct Loaded {
    pub header: Header,
    pub state: State,
    pub memory: File,
}

/// Read the header of the snapshot in `dir` and check it (what `dust run --restore` and
/// the summoner do before anything is built).
pub fn inspect(dir: &Path) -> Result<Header, SnapshotError> {
    load(dir).map(|l| l.header)
}

/// Read and check the snapshot in `dir`.
pub(crate) fn load(dir: &Path) -> Result<Loaded, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Missing(dir.to_path_buf()))
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let (header, state_bytes) = parse_file(&bytes).map_err(|e| match e {
        SnapshotError::NotASnapshot(_) => SnapshotError::NotASnapshot(path.clone()),
        e => e,
    })?;
    let host = host_description();
    if header.host_fingerprint != fnv1a(host.as_bytes())
        || header.cpuid_fingerprint != cpuid_fingerprint()?
    {
        return Err(SnapshotError::Host {
            theirs: header.host.clone(),
            ours: host,
        });
    }
    let state = parse_state(state_bytes, &header)?;
    let mem_path = dir.join(MEMORY_FILE);
    let memory = File::open(&mem_path).map_err(io_err(&mem_path))?;
    let file_bytes = memory.metadata().map_err(io_err(&mem_path))?.len();
    if file_bytes != u64::from(header.memory_mib) << 20 {
        return Err(SnapshotError::MemorySize {
            file_bytes,
            memory_mib: header.memory_mib,
        });
    }
    Ok(Loaded {
        header,
        state,
        memory,
    })
}
