//! The daemon's half of the jail (docs/security.md): the `[jail]` config, and before a
//! worker starts, its per-VM directory (which becomes its `/`) and its cgroups, owned by a
//! [`VmJail`] that removes both once the worker is gone. The worker's half (namespaces,
//! mounts, uid, rlimits) is [`crate::enter`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ahead::{Ahead, Made, Maker, Shape};
use crate::cgroup::{self, Hierarchy, Limits};
use crate::{JailSpec, SnapshotMount};

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
    /// How many of its [`VmJail`]s are not released yet.
    live: Arc<AtomicUsize>,
    /// Roots and cgroups made ahead (with root only).
    ahead: Option<Ahead>,
}

/// Where a jailed worker's vsock socket is inside its jail (a short fixed name: the host's
/// path to it, root + this, stays within a Unix socket path's 108 bytes).
pub const VSOCK: &str = "/run/vm.vsock";

impl Jail {
    /// The host's path to the vsock socket of jailed VM `vm`, when workers get a root of
    /// their own (else `None`: the socket is in the run dir).
    pub fn vsock_path(&self, vm: &str) -> Option<PathBuf> {
        self.privileged
            .then(|| self.base.join(vm).join(&VSOCK[1..]))
    }
}

/// What of a VM's config the jail needs: the files it mounts and the memory it limits.
/// Paths are host paths.
#[derive(Debug, Clone)]
pub struct VmFiles {
    /// The guest image.
    pub image: PathBuf,
    /// The initrd, if any.
    pub initrd: Option<PathBuf>,
    /// The serial output file, if the VM writes one.
    pub serial: Option<PathBuf>,
    /// Snapshot mode: the snapshot directory.
    pub snapshot: Option<SnapshotMount>,
    /// Guest memory, MiB (the cgroup allows this plus the VMM's overhead).
    pub memory_mib: u32,
    /// The VM's whole memory limit, MiB, if the service sets one.
    pub memory_limit_mib: Option<u32>,
}

/// One worker's jail, owned by whoever owns the worker: its spec and what was made for it
/// (per-VM root, cgroups), removed by [`VmJail::release`] once the worker is gone (or,
/// failing that, when dropped).
#[derive(Debug)]
pub struct VmJail {
    spec: JailSpec,
    root: Option<PathBuf>,
    live: Arc<AtomicUsize>,
    released: bool,
}

impl VmJail {
    /// What the worker is told (its environment, or the zygote's request).
    pub fn spec(&self) -> &JailSpec {
        &self.spec
    }

    /// Whether the worker gets a root of its own: then its config must name the in-jail
    /// paths ([`crate::IMAGE`], [`crate::INITRD`], [`crate::SERIAL`], [`VSOCK`],
    /// [`crate::SNAPSHOT`]).
    pub fn own_root(&self) -> bool {
        self.root.is_some()
    }

    /// The host's path to the VM's vsock socket, when it has a root of its own.
    pub fn vsock(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join(&VSOCK[1..]))
    }

    /// The worker is gone: kill whatever is left in its cgroups, remove them and its root
    /// (blocking: a cgroup can only go once its last process has).
    pub fn release(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        cgroup::remove(&self.spec.cgroups);
        if let Some(d) = &self.root {
            let _ = std::fs::remove_dir_all(d);
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for VmJail {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl Jail {
    /// The jail `config` describes, cut down to what this process may do.
    pub fn new(config: JailConfig, run_dir: &Path) -> Self {
        let cgroup_dir = format!(
            "{}/{:016x}",
            config.cgroup_parent,
            fnv1a(run_dir.as_os_str().as_encoded_bytes())
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
        let ahead = privileged.then(|| {
            Ahead::new(Maker {
                base: base.clone(),
                uid: config.uid,
                gid: config.gid,
                cgroups: cgroups.clone(),
                cgroup_dir: cgroup_dir.clone(),
            })
        });
        Self {
            base,
            config,
            privileged,
            cgroups,
            cgroup_dir,
            missing,
            live: Arc::default(),
            ahead,
        }
    }

    /// Make `vm`'s directory and cgroups (or take ones made ahead in its shape).
    pub fn prepare(&self, vm: &str, files: VmFiles) -> io::Result<VmJail> {
        let c = &self.config;
        let mut spec = JailSpec {
            root: self.base.clone(),
            namespaces: false,
            uid: c.uid,
            gid: c.gid,
            image: files.image.clone(),
            initrd: files.initrd.clone(),
            serial: None,
            cgroups: Vec::new(),
            max_open_files: c.max_open_files,
            max_processes: c.max_processes,
            serial_max_bytes: c.serial_max_mib << 20,
            snapshot: files.snapshot.clone(),
        };
        let shape = self.shape(&files);
        if let Some(ahead) = &self.ahead {
            // A template's writable snapshot directory is made its uid's: never ahead.
            let writable = files.snapshot.as_ref().is_some_and(|s| s.writable);
            let made = (!writable).then(|| ahead.take(vm, &shape)).flatten();
            let made = match made {
                Some(m) => m,
                None => self.make(ahead, vm, &shape, &files)?,
            };
            spec.root = made.root;
            spec.cgroups = made.cgroups;
            spec.namespaces = true;
            spec.serial = files.serial.clone();
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(VmJail {
            root: spec.namespaces.then(|| spec.root.clone()),
            spec,
            live: self.live.clone(),
            released: false,
        })
    }

    /// `vm`'s root and cgroups made now (and its snapshot directory made the jail uid's if
    /// a template writes it).
    fn make(&self, ahead: &Ahead, vm: &str, shape: &Shape, files: &VmFiles) -> io::Result<Made> {
        if let Some(s) = files.snapshot.as_ref().filter(|s| s.writable) {
            std::os::unix::fs::chown(&s.dir, Some(self.config.uid), Some(self.config.gid))?;
        }
        ahead.make(vm, shape)
    }

    /// What of `files` a root and cgroups made ahead must match.
    fn shape(&self, files: &VmFiles) -> Shape {
        let c = &self.config;
        let limits = Limits {
            memory_bytes: u64::from(
                files
                    .memory_limit_mib
                    .unwrap_or(files.memory_mib + c.memory_overhead_mib),
            ) << 20,
            pids: c.pids_max,
            cpu_weight: c.cpu_weight,
            cpu_quota_percent: c.cpu_quota_percent,
        };
        Shape {
            initrd: files.initrd.is_some(),
            serial: files.serial.is_some(),
            snapshot: files.snapshot.is_some(),
            limits: self.cgroups.is_some().then_some(limits),
        }
    }

    /// Wait (at most `limit`) until every [`VmJail`] this jail prepared has been released.
    pub async fn released(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.live.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// FNV-1a, 64 bits: a stable short name for a run dir.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Remove per-VM roots a daemon that did not shut down cleanly left in `base`: directories
/// holding nothing but what [`make_root`] makes (`image`, `initrd`, `serial`, `run/`,
/// `snapshot/`), so also one it was killed in the middle of making. Template snapshot
/// directories (`.snap`) are the run dir's own sweep.
fn sweep_roots(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let made = [
        crate::IMAGE,
        crate::INITRD,
        crate::SERIAL,
        crate::RUN,
        crate::SNAPSHOT,
    ];
    for e in entries.flatten() {
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || p.extension().is_some_and(|x| x == "snap") {
            continue;
        }
        let Ok(inside) = std::fs::read_dir(&p) else {
            continue;
        };
        let ours = inside
            .flatten()
            .all(|f| made.iter().any(|m| f.file_name().as_os_str() == &m[1..]));
        if ours {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

impl Jail {
    /// This daemon holds the run dir, so every VM cgroup under its cgroup directory and
    /// every per-VM root in its base is a dead predecessor's: kill what still runs there
    /// (workers still exiting), remove the cgroups, then the roots.
    pub fn reclaim(&self) {
        if let Some(h) = &self.cgroups {
            h.reclaim(&self.cgroup_dir);
        }
        if self.privileged {
            sweep_roots(&self.base);
        }
    }

    /// The daemon is done: remove what was made ahead, then the cgroup parent if it is
    /// empty.
    pub fn finish(&self) {
        if let Some(a) = &self.ahead {
            a.close();
        }
        if let Some(h) = &self.cgroups {
            h.remove_parent(&self.cgroup_dir);
            h.remove_parent(&self.config.cgroup_parent);
        }
    }
}

/// The per-VM root: `run/` for the vsock socket (the worker's), empty files to mount the
/// image, initrd and serial file on, a directory for the snapshot.
pub(crate) fn make_root(root: &Path, uid: u32, gid: u32, shape: &Shape) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", root.display()));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(root)
        .map_err(ctx)?;
    let run = root.join(&crate::RUN[1..]);
    let made = (|| {
        std::fs::DirBuilder::new().mode(0o700).create(&run)?;
        std::os::unix::fs::chown(&run, Some(uid), Some(gid))?;
        let mut mounts = vec![crate::IMAGE];
        if shape.initrd {
            mounts.push(crate::INITRD);
        }
        if shape.serial {
            mounts.push(crate::SERIAL);
        }
        if shape.snapshot {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(root.join(&crate::SNAPSHOT[1..]))?;
        }
        for f in mounts {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_vm_jail_owns_its_root_and_cgroups_and_removes_them() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("*** SKIPPED: the jail's roots and cgroups need root ***");
            return;
        }
        let dir = std::env::temp_dir().join(format!("dust-vmjail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("image.elf");
        std::fs::write(&image, b"x").unwrap();
        let config = JailConfig {
            cgroup_parent: "dust-unit-vmjail".into(),
            ..JailConfig::default()
        };
        let jail = Jail::new(config, &dir.join("run"));
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let files = VmFiles {
            image: image.clone(),
            initrd: None,
            serial: None,
            snapshot: None,
            memory_mib: 16,
            memory_limit_mib: None,
        };
        let a = jail.prepare("vm-a", files.clone()).unwrap();
        let b = jail.prepare("vm-b", files).unwrap();
        let root = dir.join("run/vm-a");
        assert!(a.own_root() && root.join("image").is_file() && root.join("run").is_dir());
        assert_eq!(a.vsock(), Some(root.join("run/vm.vsock")));
        assert_eq!(a.spec().image, image);
        let cgroups = a.spec().cgroups.clone();
        assert_eq!(cgroups.is_empty(), jail.cgroups.is_none());
        assert!(cgroups.iter().all(|c| c.is_dir()), "{cgroups:?}");
        a.release();
        assert!(!root.exists());
        assert!(cgroups.iter().all(|c| !c.exists()), "{cgroups:?}");
        // Dropping one releases it too; then nothing is left to wait for.
        let b_root = dir.join("run/vm-b");
        assert!(b_root.is_dir());
        drop(b);
        assert!(!b_root.exists());
        assert_eq!(jail.live.load(Ordering::SeqCst), 0);
        jail.released(std::time::Duration::from_secs(5)).await;
        jail.finish();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn roots_and_cgroups_are_made_ahead_used_once_and_removed_at_the_end() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("*** SKIPPED: the jail's roots and cgroups need root ***");
            return;
        }
        let dir = std::env::temp_dir().join(format!("dust-ahead-{}", std::process::id()));
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let config = JailConfig {
            cgroup_parent: "dust-unit-ahead".into(),
            ..JailConfig::default()
        };
        let jail = Jail::new(config, &run);
        let files = VmFiles {
            image: dir.join("image.elf"),
            initrd: None,
            serial: None,
            snapshot: None,
            memory_mib: 16,
            memory_limit_mib: None,
        };
        let ahead = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("ahead-")
                })
                .collect()
        };
        let first = jail.prepare("vm-1", files.clone()).unwrap();
        // The first build ordered one ahead; wait for the thread to make it and put it on
        // the shelf (its directory exists a moment before it is ready to take).
        let t = std::time::Instant::now();
        while jail.ahead.as_ref().map_or(0, Ahead::ready) == 0 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "nothing made ahead"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let waiting = ahead(&run);
        let second = jail.prepare("vm-2", files.clone()).unwrap();
        // It got one made ahead, renamed after it: the one that waited is gone.
        assert!(waiting.iter().any(|w| !w.exists()), "{waiting:?}");
        assert_eq!(second.spec().root, run.join("vm-2"));
        assert!(run.join("vm-2/run").is_dir() && run.join("vm-2/image").is_file());
        let cgroups = second.spec().cgroups.clone();
        assert_eq!(cgroups.is_empty(), jail.cgroups.is_none());
        assert!(cgroups.iter().all(|c| c.is_dir()), "{cgroups:?}");
        if matches!(jail.cgroups, Some(Hierarchy::V1 { .. })) {
            assert!(cgroups.iter().all(|c| c.ends_with("vm-2")), "{cgroups:?}");
        }
        drop((first, second));
        assert!(cgroups.iter().all(|c| !c.exists()), "{cgroups:?}");
        jail.finish();
        assert_eq!(ahead(&run), Vec::<PathBuf>::new());
        if let Some(h) = &jail.cgroups {
            for root in h.roots() {
                assert!(!root.join(&jail.cgroup_dir).exists(), "{}", root.display());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
