//! `VmConfig`: plain data that says what VM to build. CLI flags, TOML files and API bodies all
//! become one of these (serde, unknown fields rejected); nothing else builds a VM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dust_abi::layout::CMDLINE_MAX;
use serde::{Deserialize, Serialize};

/// Default guest memory, MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 32;
/// Smallest guest memory accepted, MiB: boot structures, a unikernel at 2 MiB and its heap.
pub const MIN_MEMORY_MIB: u32 = 4;
/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 32;

/// Everything needed to build one microVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest image: an x86_64 ELF (`vmlinux`, dust unikernel) or a `bzImage`.
    pub image: PathBuf,
    /// Optional initial ramdisk, loaded at the top of low RAM.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Guest command line (devices are appended by the VMM).
    #[serde(default)]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Number of vCPUs (more than one needs `irqchip`).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Create the in-kernel irqchip (LAPIC/IOAPIC/PIC + PIT), as Linux needs. Unikernels poll
    /// and run without it.
    #[serde(default)]
    pub irqchip: bool,
    /// Where the guest's serial output goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// Kill the VM after this long (humantime: "2s", "500ms").
    #[serde(default, with = "duration_opt")]
    pub timeout: Option<Duration>,
    /// A virtio-vsock device with Firecracker's hybrid Unix-socket protocol.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// The VM's id, given to the guest in its info page (`X-Dust-Vm` under the summoner).
    #[serde(default)]
    pub id: String,
    /// Which entry of the image to boot: the 64-bit one (default) or its PVH note.
    #[serde(default)]
    pub boot: BootProtocol,
}

/// A VM restored from a snapshot: which snapshot, and what differs per VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// The snapshot directory (`dust run --snapshot-out DIR`).
    pub snapshot: PathBuf,
    /// The VM's id (in its info page).
    #[serde(default)]
    pub id: String,
    /// This VM's vsock socket; required when the snapshot's VM had a vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Where this VM's serial output goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// Kill the VM after this long.
    #[serde(default, with = "duration_opt")]
    pub timeout: Option<Duration>,
}

/// How the vCPU enters the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol at the ELF entry (or a bzImage's 64-bit entry): long mode,
    /// RSI = zero page.
    #[default]
    Linux,
    /// The ELF's PVH note: 32-bit protected mode, paging off, EBX = `hvm_start_info`, as
    /// QEMU microvm and Firecracker boot it.
    Pvh,
}

/// Serial sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialConfig {
    /// The VMM's stdout.
    #[default]
    Stdout,
    /// A file, created if missing and appended to (the VMs of a service share one).
    File(PathBuf),
    /// Discard output.
    None,
}

/// Serial files are opened (created mode 0600, appended to, never through a symlink) as a
/// jailed worker opens them: the daemon checking a service's file and the VMM both come
/// through the jail's function.
pub use dust_jail::open_serial_file;

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host Unix socket; `CONNECT <port>\n` on it reaches the guest, and guest connections to
    /// host port P reach `<uds>_P`.
    pub uds: PathBuf,
}

fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}

fn default_vcpus() -> u8 {
    1
}

/// A config that cannot describe a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Memory below the minimum.
    #[error("memory_mib = {0}: a VM needs at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u32),
    /// Memory larger than the host.
    #[error("memory_mib = {got}: more than this host's {host_mib} MiB of RAM")]
    MemoryTooLarge {
        /// Requested.
        got: u32,
        /// Host physical memory.
        host_mib: u64,
    },
    /// vCPU count out of range.
    #[error("vcpus = {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u8),
    /// Secondary vCPUs need an in-kernel LAPIC to be started.
    #[error("vcpus = {0} needs irqchip = true (secondary vCPUs are started through the LAPIC)")]
    VcpusNeedIrqchip(u8),
    /// Command line too long or with a NUL byte.
    #[error("cmdline is {0} bytes; the limit is {max} bytes without NUL bytes", max = CMDLINE_MAX - 1)]
    Cmdline(usize),
    /// A timeout of zero.
    #[error("timeout must be greater than zero")]
    ZeroTimeout,
}

impl VmConfig {
    /// The same VM restored from the snapshot in `snapshot` instead of booted: its id,
    /// vsock, serial and timeout carry over (the rest is the snapshot's).
    pub fn restore_from(&self, snapshot: &Path) -> RestoreConfig {
        RestoreConfig {
            snapshot: snapshot.to_path_buf(),
            id: self.id.clone(),
            vsock: self.vsock.clone(),
            serial: self.serial.clone(),
            timeout: self.timeout,
        }
    }

    /// A config with defaults for everything but the image.
    pub fn new(image: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            initrd: None,
            cmdline: String::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            irqchip: false,
            serial: SerialConfig::default(),
            timeout: None,
            vsock: None,
            id: String::new(),
            boot: BootProtocol::Linux,
        }
    }

    /// Check everything that can be checked without touching files or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        let host_mib = host_memory_mib();
        if u64::from(self.memory_mib) > host_mib {
            return Err(ConfigError::MemoryTooLarge {
                got: self.memory_mib,
                host_mib,
            });
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.vcpus > 1 && !self.irqchip {
            return Err(ConfigError::VcpusNeedIrqchip(self.vcpus));
        }
        if self.cmdline.len() >= CMDLINE_MAX || self.cmdline.contains('\0') {
            return Err(ConfigError::Cmdline(self.cmdline.len()));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(())
    }
}

/// Physical memory of the host in MiB (0 if unknown). From sysinfo(2), never /proc/meminfo:
/// the systemd unit's ProcSubset=pid hides everything in /proc but process directories.
pub fn host_memory_mib() -> u64 {
    // SAFETY: all zeroes is a valid value of this plain C struct of integers.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel fills `info`, which outlives the call.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return 0;
    }
    info.totalram
        .saturating_mul(u64::from(info.mem_unit.max(1)))
        >> 20
}

/// serde for `Option<Duration>` as a humantime string ("2s", "150ms").
mod duration_opt {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); use e.g. \"2s\" or \"500ms\""
                ))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_defaults() {
        let c: VmConfig = toml::from_str(
            r#"image = "/g/hello"
timeout = "2s"
serial = { file = "/tmp/x" }
vsock = { uds = "/run/v.sock" }"#,
        )
        .unwrap();
        assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.serial, SerialConfig::File("/tmp/x".into()));
        let again: VmConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let none: VmConfig = toml::from_str("image = \"a\"\nserial = \"none\"").unwrap();
        assert_eq!(none.serial, SerialConfig::None);
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let e = toml::from_str::<VmConfig>("image = \"a\"\nmemory = 5").unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        let e = serde_json::from_str::<VmConfig>(r#"{"image":"a","timeout":"soon"}"#).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = VmConfig::new("x");
        assert_eq!(c.validate(), Ok(()));
        c.memory_mib = 0;
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooSmall(0)));
        c.memory_mib = u32::MAX;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        c.memory_mib = 32;
        c.vcpus = 2;
        assert_eq!(c.validate(), Err(ConfigError::VcpusNeedIrqchip(2)));
        c.irqchip = true;
        assert_eq!(c.validate(), Ok(()));
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(0)));
        c.vcpus = 1;
        c.cmdline = "a".repeat(CMDLINE_MAX);
        assert!(matches!(c.validate(), Err(ConfigError::Cmdline(_))));
        c.cmdline.clear();
        c.timeout = Some(Duration::ZERO);
        assert_eq!(c.validate(), Err(ConfigError::ZeroTimeout));
    }

    #[test]
    fn host_memory_is_what_the_kernel_reports() {
        // The test can read /proc; the daemon under its unit cannot, hence sysinfo(2).
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert_eq!(host_memory_mib(), kib >> 10);
    }
}
