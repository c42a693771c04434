//! Snapshot templates kept across restarts: a daemon with a state directory takes each
//! service's template into `<state dir>/cache/templates/<key>.snap`, where `key` hashes
//! everything the snapshot depends on (the image's and the module's bytes, the VM settings
//! the guest sees, this dust executable). A restart with nothing changed restores from the
//! cached template instead of booting the guest again. An entry is used only if its header
//! checks out against this host and this dust ([`vmm::snapshot::inspect`]); anything else
//! is removed and taken again. Entries no service uses are pruned at start
//! ([`TemplateCache::prune`]).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::Digest as _;

use crate::config::ServiceConfig;

/// The template cache directory.
#[derive(Debug)]
pub struct TemplateCache {
    dir: PathBuf,
    /// Keys the services of this daemon use (what [`TemplateCache::prune`] keeps).
    used: Mutex<BTreeSet<String>>,
}

/// Where a template goes: a cached entry to use as it is, or a directory to take it into.
pub enum Slot {
    /// A checked entry.
    Hit(PathBuf),
    /// Take the template into `tmp`, then [`TemplateCache::publish`] it as `entry`.
    Miss {
        /// Where the worker writes the snapshot.
        tmp: PathBuf,
        /// Its name once complete.
        entry: PathBuf,
    },
}

impl TemplateCache {
    /// The cache in `dir` (made 0700 when a template first goes in, so a daemon without
    /// snapshot services leaves nothing); half-written entries of a daemon that died are
    /// removed.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().contains(".tmp-") {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            dir,
            used: Mutex::default(),
        })
    }

    /// The slot of `config`'s template (reads the image and module to hash them).
    pub fn slot(&self, config: &ServiceConfig, template_id: &str) -> std::io::Result<Slot> {
        let key = key(config)?;
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        let entry = self.dir.join(format!("{key}.snap"));
        if entry.exists() {
            match vmm::snapshot::inspect(&entry) {
                Ok(_) => {
                    tracing::info!(service = %config.name, "using the cached snapshot template");
                    return Ok(Slot::Hit(entry));
                }
                Err(e) => {
                    tracing::warn!(service = %config.name, "cached snapshot template refused ({e}); taking it again");
                    let _ = std::fs::remove_dir_all(&entry);
                }
            }
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tmp = self.dir.join(format!("{key}.tmp-{template_id}"));
        Ok(Slot::Miss { tmp, entry })
    }

    /// Make a complete template in `tmp` the entry: read-only, owned by the daemon, then
    /// renamed into place (if another service published the same entry first, that one
    /// stays). Returns the entry.
    pub fn publish(&self, tmp: &Path, entry: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        for e in std::fs::read_dir(tmp)?.flatten() {
            std::os::unix::fs::chown(e.path(), Some(uid), Some(gid))?;
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o444))?;
        }
        std::os::unix::fs::chown(tmp, Some(uid), Some(gid))?;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))?;
        if let Err(e) = std::fs::rename(tmp, entry) {
            if !entry.exists() {
                return Err(e);
            }
            let _ = std::fs::remove_dir_all(tmp);
        }
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(entry.to_path_buf())
    }

    /// Remove every entry no service of this daemon has asked for; call once the services
    /// are up. Returns how many went.
    pub fn prune(&self) -> usize {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut gone = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = name.strip_suffix(".snap").is_some_and(|k| used.contains(k))
                || name.contains(".tmp-");
            if !keep && std::fs::remove_dir_all(e.path()).is_ok() {
                gone += 1;
            }
        }
        gone
    }
}

/// What a template depends on, hashed: the VM settings the guest sees (not its id or
/// sockets), the image's and the module's bytes, and this executable.
fn key(config: &ServiceConfig) -> std::io::Result<String> {
    let mut h = sha2::Sha256::new();
    let vm = config.vm_config("template", Path::new("/"));
    let settings = format!(
        "cmdline={}\0memory={}\0vcpus={}\0irqchip={}\0boot={:?}\0",
        config.cmdline.trim(),
        vm.memory_mib,
        vm.vcpus,
        vm.irqchip,
        vm.boot,
    );
    h.update(settings.as_bytes());
    // The wasm guest's own words (fuel, warm-up) are part of the command line it boots with.
    h.update(vm.cmdline.replace("vm=template", "").as_bytes());
    hash_file(&mut h, &vm.image)?;
    if let Some(initrd) = &vm.initrd {
        hash_file(&mut h, initrd)?;
    }
    // A rebuilt dust may lay out its devices' state differently: key on the executable.
    if let Ok(m) = std::env::current_exe().and_then(std::fs::metadata) {
        use std::os::unix::fs::MetadataExt;
        h.update(format!("exe={}:{}:{}\0", m.len(), m.mtime(), m.mtime_nsec()).as_bytes());
    }
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let sum = h.finalize();
    Ok(sum.iter().map(|b| format!("{b:02x}")).collect())
}

fn hash_file(h: &mut sha2::Sha256, path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    h.update(path.as_os_str().as_encoded_bytes());
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}
