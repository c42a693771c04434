//! What the daemon keeps across restarts, in its state directory (docs/deploy.md):
//!
//! - `services.json`: the services created or replaced through the control API, each with
//!   the definition it replaced (for rollback) ([`services`]);
//! - `artifacts/sha256-<hex>`: uploaded wasm modules and guest images, content-addressed
//!   ([`artifacts`]).
//!
//! Every write goes to a temporary file in the same directory, is fsync'd, renamed over
//! the old one and the directory fsync'd ([`write_atomic`]): after a crash a reader sees
//! the old file or the new one, never half of one. Temporary files a crash leaves behind
//! start with [`TMP_PREFIX`] and are removed when the directory is opened. Directories are
//! created (mode 0700) by the first write, so a daemon whose API changes nothing leaves
//! nothing behind.

pub mod artifacts;
pub mod services;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use artifacts::{ArtifactError, Artifacts, Digest};
pub use services::{Record, ServiceState, StateError};

/// A daemon's state directory: its API-managed services and its artifacts.
#[derive(Debug)]
pub struct State {
    /// `services.json`.
    pub services: ServiceState,
    /// `artifacts/`.
    pub artifacts: Artifacts,
}

impl State {
    /// Open the state directory `dir` (created by its first write); a state file that
    /// cannot be read is an error naming it.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let services = ServiceState::load(dir)?;
        let artifacts = Artifacts::open(dir).map_err(|source| StateError::Io {
            path: dir.join("artifacts"),
            source,
        })?;
        Ok(Self {
            services,
            artifacts,
        })
    }

    /// Every artifact reference of the API's services, now and before their last
    /// replacement, with the names using it.
    pub fn users(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for r in self.services.records() {
            for c in std::iter::once(&r.current).chain(r.previous.as_ref()) {
                for d in Artifacts::references(c) {
                    let names = users.entry(d).or_default();
                    if !names.contains(&c.name) {
                        names.push(c.name.clone());
                    }
                }
            }
        }
        users
    }
}

/// Name prefix of the temporary files of [`write_atomic`] and of uploads in progress.
pub const TMP_PREFIX: &str = ".tmp-";

/// The default state directory of `dust serve`: /var/lib/dust as root (the systemd unit's
/// `StateDirectory`), else $XDG_STATE_HOME/dust, else ~/.local/state/dust.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return PathBuf::from("/var/lib/dust");
    }
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(d) = absolute(std::env::var_os("XDG_STATE_HOME")) {
        return d.join("dust");
    }
    match absolute(std::env::var_os("HOME")) {
        Some(h) => h.join(".local/state/dust"),
        None => vmm::runtime_dir().join("state"),
    }
}

/// Remove the temporary files a crash left in `dir` (if it exists).
pub fn open_dir(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A new temporary file in `dir` (created mode 0700 if missing) with `mode`, named so
/// that [`open_dir`] removes it if it is never renamed.
pub fn temp_file(dir: &Path, mode: u32) -> std::io::Result<(File, PathBuf)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Move the fsync'd temporary file `tmp` to `dest` and fsync their directory, so that the
/// rename survives a power cut.
pub fn commit(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let renamed = std::fs::rename(tmp, dest);
    if renamed.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    renamed?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Replace `dest` with `bytes` (mode 0600): temporary file, fsync, rename, fsync of the
/// directory.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let (mut f, tmp) = temp_file(dir, 0o600)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    commit(&tmp, dest)
}

#[cfg(test)]
mod tests;
