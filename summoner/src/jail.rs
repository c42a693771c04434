//! The `[jail]` config and the summoner's half of the jail (docs/security.md): before a
//! worker starts, make its per-VM directory (which becomes its `/`) and its cgroups, and
//! rewrite its VM config to the paths it will see inside; when the worker is gone, remove
//! both. The worker's half (namespaces, mounts, uid, rlimits) is `vmm::jail`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use vmm::jail::JailSpec;
use vmm::{SerialConfig, VmConfig};

use crate::cgroup::{self, Hierarchy, Limits};

/// `[jail]` in the config file. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailConfig {
    /// Jail workers at all (namespaces, chroot, uid, cgroups; seccomp is always on).
    pub enabled: bool,
    /// The unprivileged uid workers run as (not 0).
    pub uid: u32,
    /// Their gid (not 0).
    pub gid: u32,
    /// Where per-VM root directories are made (default: the run dir).
    pub chroot_base: Option<PathBuf>,
    /// A cgroup per VM (memory, pids, CPU limits).
    pub cgroups: bool,
    /// The cgroup (under each controller's root) that holds one cgroup per VM.
    pub cgroup_parent: String,
    /// Memory the VMM itself may use on top of guest memory, MiB (services can set their
    /// whole limit with `memory_limit_mib`).
    pub memory_overhead_mib: u32,
    /// Processes + threads per VM.
    pub pids_max: u32,
    /// CPU weight per VM, 1-10000 (100 = default share).
    pub cpu_weight: u32,
    /// CPU quota per VM in percent of one CPU (none by default).
    pub cpu_quota_percent: Option<u32>,
    /// RLIMIT_NOFILE of a worker.
    pub max_open_files: u64,
    /// RLIMIT_NPROC of the workers' uid.
    pub max_processes: u64,
    /// Largest serial output file a worker may write, MiB (RLIMIT_FSIZE).
    pub serial_max_mib: u64,
}

impl Default for JailConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            uid: 65534,
            gid: 65534,
            chroot_base: None,
            cgroups: true,
            cgroup_parent: "dust".into(),
            memory_overhead_mib: 64,
            pids_max: 64,
            cpu_weight: 100,
            cpu_quota_percent: None,
            max_open_files: 1024,
            max_processes: 16384,
            serial_max_mib: 64,
        }
    }
}

/// A `[jail]` that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JailConfigError {
    /// Root as the workers' user would defeat the jail.
    #[error("[jail] uid and gid must not be 0")]
    Root,
    /// Out of range.
    #[error("[jail] cpu_weight must be 1-10000")]
    Weight,
}

impl JailConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), JailConfigError> {
        if self.enabled && (self.uid == 0 || self.gid == 0) {
            return Err(JailConfigError::Root);
        }
        if !(1..=10000).contains(&self.cpu_weight) {
            return Err(JailConfigError::Weight);
        }
        Ok(())
    }
}

/// The jail as this daemon can apply it.
#[derive(Debug)]
pub struct Jail {
    config: JailConfig,
    base: PathBuf,
    privileged: bool,
    cgroups: Option<Hierarchy>,
    /// `<cgroup_parent>/<this daemon>`: two daemons on one host (or a restart next to a
    /// live one) never sweep or remove each other's VM cgroups. Named after the run dir,
    /// so a restarted daemon finds what its predecessor left.
    cgroup_dir: String,
    /// What could not be applied here, said once at start-up.
    pub missing: Vec<String>,
}

/// The vsock socket's name in a jailed worker's `run/`.
const VSOCK_NAME: &str = "vm.vsock";

impl Jail {
    /// The host's path to the vsock socket of jailed VM `vm`, when workers get a root of
    /// their own (else `None`: the socket is in the run dir).
    pub fn vsock_path(&self, vm: &str) -> Option<PathBuf> {
        self.privileged.then(|| {
            self.base
                .join(vm)
                .join(&vmm::jail::RUN[1..])
                .join(VSOCK_NAME)
        })
    }
}

/// What one jailed worker gets.
pub struct Prepared {
    /// The VM config with in-jail paths.
    pub config: VmConfig,
    /// For the worker's environment.
    pub spec: JailSpec,
    /// The vsock socket as the summoner reaches it.
    pub vsock: PathBuf,
}

/// What to remove once a worker is gone: its root directory and its cgroups.
type Leftovers = (Option<PathBuf>, Vec<PathBuf>);

/// Leftovers of live workers, by the VM's host vsock path.
fn live() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Leftovers>> {
    static LIVE: OnceLock<Mutex<HashMap<PathBuf, Leftovers>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

impl Jail {
    /// The jail `config` describes, cut down to what this process may do.
    pub fn new(config: JailConfig, run_dir: &Path) -> Self {
        let cgroup_dir = format!(
            "{}/{:016x}",
            config.cgroup_parent,
            vmm::snapshot::fnv1a(run_dir.as_os_str().as_encoded_bytes())
        );
        // SAFETY: geteuid has no preconditions.
        let privileged = unsafe { libc::geteuid() } == 0;
        let mut missing = Vec::new();
        let mut cgroups = None;
        if privileged {
            if config.cgroups {
                cgroups = cgroup::detect();
                if let Some(h) = &cgroups {
                    h.sweep(&cgroup_dir);
                    h.sweep_stale(&config.cgroup_parent);
                }
                if cgroups.is_none() {
                    missing.push("cgroups (no memory+pids controllers found)".into());
                }
            }
        } else {
            missing.push(
                "namespaces, chroot, uid/gid change and cgroups (not root); \
                 seccomp, rlimits and no_new_privs still apply"
                    .into(),
            );
        }
        let base = config
            .chroot_base
            .clone()
            .unwrap_or_else(|| run_dir.to_path_buf());
        if privileged {
            sweep_roots(&base);
        }
        Self {
            base,
            config,
            privileged,
            cgroups,
            cgroup_dir,
            missing,
        }
    }

    /// Make `vm`'s directory and cgroups; `memory_limit_mib` overrides guest memory +
    /// overhead.
    pub fn prepare(
        &self,
        vm: &str,
        mut config: VmConfig,
        memory_limit_mib: Option<u32>,
        snapshot: Option<vmm::jail::SnapshotMount>,
    ) -> io::Result<Prepared> {
        let c = &self.config;
        let mut spec = JailSpec {
            root: self.base.clone(),
            namespaces: false,
            uid: c.uid,
            gid: c.gid,
            image: config.image.clone(),
            initrd: config.initrd.clone(),
            serial: None,
            cgroups: Vec::new(),
            max_open_files: c.max_open_files,
            max_processes: c.max_processes,
            serial_max_bytes: c.serial_max_mib << 20,
            snapshot,
        };
        let host_vsock = config.vsock.as_ref().map(|v| v.uds.clone());
        let mut dir = None;
        if self.privileged {
            let root = self.base.join(vm);
            make_root(&root, c.uid, c.gid, &config, spec.snapshot.as_ref())?;
            dir = Some(root.clone());
            spec.root = root.clone();
            spec.namespaces = true;
            config.image = vmm::jail::IMAGE.into();
            if config.initrd.is_some() {
                config.initrd = Some(vmm::jail::INITRD.into());
            }
            if let SerialConfig::File(p) = &config.serial {
                spec.serial = Some(p.clone());
                config.serial = SerialConfig::File(vmm::jail::SERIAL.into());
            }
            if let Some(v) = config.vsock.as_mut() {
                // The root is the VM's own: a short fixed name keeps the host's path to it
                // (root + this) within a Unix socket path's 108 bytes.
                v.uds = Path::new(vmm::jail::RUN).join(VSOCK_NAME);
            }
        }
        let vsock = match (&dir, &config.vsock) {
            (Some(root), Some(v)) => root.join(v.uds.strip_prefix("/").unwrap_or(&v.uds)),
            _ => host_vsock.unwrap_or_default(),
        };
        if let Some(h) = &self.cgroups {
            let limits = Limits {
                memory_bytes: u64::from(
                    memory_limit_mib.unwrap_or(config.memory_mib + c.memory_overhead_mib),
                ) << 20,
                pids: c.pids_max,
                cpu_weight: c.cpu_weight,
                cpu_quota_percent: c.cpu_quota_percent,
            };
            match h.create(&self.cgroup_dir, vm, &limits) {
                Ok(dirs) => spec.cgroups = dirs,
                Err(e) => {
                    if let Some(d) = &dir {
                        let _ = std::fs::remove_dir_all(d);
                    }
                    return Err(e);
                }
            }
        }
        live().insert(vsock.clone(), (dir, spec.cgroups.clone()));
        Ok(Prepared {
            config,
            spec,
            vsock,
        })
    }
}

/// Remove per-VM roots a daemon that did not shut down cleanly left in `base` (a
/// directory holding exactly what [`make_root`] makes: an `image` file and a `run/`).
fn sweep_roots(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.join(&vmm::jail::IMAGE[1..]).is_file() && p.join(&vmm::jail::RUN[1..]).is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

impl Jail {
    /// This daemon holds the run dir, so every VM cgroup under its cgroup directory is a
    /// dead predecessor's: kill what still runs there (workers still exiting) and remove
    /// them.
    pub fn reclaim(&self) {
        if let Some(h) = &self.cgroups {
            h.reclaim(&self.cgroup_dir);
        }
    }

    /// The daemon is done: remove the cgroup parent if it is empty.
    pub fn finish(&self) {
        if let Some(h) = &self.cgroups {
            h.remove_parent(&self.cgroup_dir);
            h.remove_parent(&self.config.cgroup_parent);
        }
    }
}

/// The per-VM root: `run/` for the vsock socket (the worker's), empty files to mount the
/// image, initrd and serial file on.
fn make_root(
    root: &Path,
    uid: u32,
    gid: u32,
    config: &VmConfig,
    snapshot: Option<&vmm::jail::SnapshotMount>,
) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", root.display()));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(root)
        .map_err(ctx)?;
    let run = root.join(&vmm::jail::RUN[1..]);
    let made = (|| {
        std::fs::DirBuilder::new().mode(0o700).create(&run)?;
        std::os::unix::fs::chown(&run, Some(uid), Some(gid))?;
        let mut files = vec![vmm::jail::IMAGE];
        if config.initrd.is_some() {
            files.push(vmm::jail::INITRD);
        }
        if matches!(config.serial, SerialConfig::File(_)) {
            files.push(vmm::jail::SERIAL);
        }
        if let Some(s) = snapshot {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(root.join(&vmm::jail::SNAPSHOT[1..]))?;
            if s.writable {
                // A template writes its snapshot as the jail's uid.
                std::os::unix::fs::chown(&s.dir, Some(uid), Some(gid))?;
            }
        }
        for f in files {
            let p = root.join(&f[1..]);
            std::fs::File::create(&p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444))?;
        }
        Ok(())
    })();
    made.map_err(|e| {
        let _ = std::fs::remove_dir_all(root);
        ctx(e)
    })
}

/// The worker behind `vsock` is gone: remove its directory and cgroups (blocking).
pub fn release(vsock: &Path) {
    let Some((dir, cgroups)) = live().get(vsock).cloned() else {
        return;
    };
    cgroup::remove(&cgroups);
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
    // Only now: `released` waits for this map to empty.
    live().remove(vsock);
}

/// Wait (at most `limit`) until every prepared worker has been released.
pub async fn released(limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !live().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_table_parses_with_defaults_and_refuses_root() {
        let f: crate::FileConfig =
            toml::from_str("[jail]\nuid = 1234\ncpu_quota_percent = 50\n").unwrap();
        assert_eq!(f.jail.uid, 1234);
        assert_eq!(f.jail.gid, 65534);
        assert_eq!(f.jail.cpu_quota_percent, Some(50));
        assert!(f.jail.enabled);
        assert_eq!(f.jail.validate(), Ok(()));
        let root = JailConfig {
            uid: 0,
            ..JailConfig::default()
        };
        assert_eq!(root.validate(), Err(JailConfigError::Root));
        assert!(toml::from_str::<crate::FileConfig>("[jail]\nuser = 3\n").is_err());
        assert_eq!(
            toml::from_str::<crate::FileConfig>("").unwrap().jail,
            JailConfig::default()
        );
    }
}
