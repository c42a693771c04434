//! Uploaded wasm modules and guest images, stored by their SHA-256 in
//! `<state dir>/artifacts/sha256-<hex>`. The directories are 0700, so no other user of the
//! host reaches the files; the files themselves are 0644 because a jailed worker, running
//! as the `[jail]` uid, opens its image or module through a bind mount, where only the
//! file's own mode counts. A service names one as
//! `"wasm": "sha256:<hex>"` or `"image": "sha256:<hex>"`; [`Artifacts::resolve`] turns the
//! reference into the stored file, after checking that the file still has that digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::config::{ServiceConfig, Workload};

/// The scheme of an artifact reference.
pub const SCHEME: &str = "sha256:";

/// Guest memory an upload is checked against: the upload is checked for its format; the
/// fit into a service's own memory is checked when a service uses it.
const CHECK_MEMORY_MIB: u32 = 3072;

/// A SHA-256 digest, 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let sum = sha2::Sha256::digest(bytes);
        Self(sum.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `sha256:<hex>` (what the API shows and services name), or `None` if `s` is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(SCHEME)?;
        let ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(hex.to_string()))
    }

    /// The file name in the artifact directory.
    fn file_name(&self) -> String {
        format!("sha256-{}", self.0)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}", self.0)
    }
}

/// Why an artifact cannot be stored or used. The texts never name a host path: they go to
/// API clients.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Not a reference of the form `sha256:<64 hex digits>`.
    #[error("{0:?} is not an artifact digest (sha256:<64 lowercase hex digits>)")]
    BadDigest(String),
    /// No such artifact.
    #[error("artifact {0} is not stored (upload it with POST /v1/artifacts)")]
    NotFound(Digest),
    /// The stored bytes no longer have their digest.
    #[error("artifact {0} is corrupt (its bytes no longer match its digest): upload it again")]
    Corrupt(Digest),
    /// The bytes are neither a usable wasm module nor a bootable guest image.
    #[error("not a usable {kind}: {why}")]
    Invalid {
        /// `wasm module` or `guest image`.
        kind: &'static str,
        /// Why.
        why: String,
    },
    /// Reading or writing the store failed.
    #[error("the artifact store failed: {0}")]
    Io(#[from] std::io::Error),
}

/// One stored artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// The artifact store of a state directory.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
}

impl Artifacts {
    /// The store in `state_dir/artifacts` (created by the first upload); temporary files a
    /// crash left there are removed.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("artifacts");
        super::open_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Where the artifact `d` is (or would be) stored.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.file_name())
    }

    /// Check `bytes` as a wasm module (if they start with the wasm magic) or as a guest
    /// image, and store them. True if they were new, false if already stored.
    pub fn store(&self, bytes: &[u8]) -> Result<(Digest, bool), ArtifactError> {
        let digest = Digest::of(bytes);
        let dest = self.path(&digest);
        if self.verify(&digest).is_ok() {
            return Ok((digest, false));
        }
        let (mut f, tmp) = super::temp_file(&self.dir, 0o644)?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        drop(f);
        let checked = match written {
            Ok(()) => check(bytes, &tmp),
            Err(e) => Err(ArtifactError::Io(e)),
        };
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        super::commit(&tmp, &dest)?;
        Ok((digest, true))
    }

    /// The stored file of `d`, after checking that its bytes still have that digest.
    pub fn verify(&self, d: &Digest) -> Result<PathBuf, ArtifactError> {
        let path = self.path(d);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound(d.clone()))
            }
            Err(e) => return Err(ArtifactError::Io(e)),
        };
        if Digest::of(&bytes) != *d {
            return Err(ArtifactError::Corrupt(d.clone()));
        }
        Ok(path)
    }

    /// Every stored artifact, by digest.
    pub fn list(&self) -> std::io::Result<Vec<Stored>> {
        let mut all = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(digest) = name
                .strip_prefix("sha256-")
                .and_then(|h| Digest::parse(&format!("{SCHEME}{h}")))
            else {
                continue;
            };
            all.push(Stored {
                digest,
                size: entry.metadata()?.len(),
            });
        }
        all.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(all)
    }

    /// Remove an artifact (and fsync the directory); false if it was not stored.
    pub fn remove(&self, d: &Digest) -> std::io::Result<bool> {
        match std::fs::remove_file(self.path(d)) {
            Ok(()) => std::fs::File::open(&self.dir)?.sync_all().map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The digest `config` names in `wasm` or `image`, if it names one.
    pub fn references(config: &ServiceConfig) -> Vec<String> {
        let s = file(&config.workload).to_string_lossy();
        match s.starts_with(SCHEME) {
            true => vec![s.into_owned()],
            false => Vec::new(),
        }
    }

    /// `config` with a `sha256:<hex>` in `wasm` or `image` replaced by the stored file,
    /// verified. The one place where a reference becomes a path, before validation.
    pub fn resolve(&self, config: &ServiceConfig) -> Result<ServiceConfig, ArtifactError> {
        let mut out = config.clone();
        let s = file(&config.workload).to_string_lossy();
        if s.starts_with(SCHEME) {
            let d = Digest::parse(&s).ok_or_else(|| ArtifactError::BadDigest(s.into_owned()))?;
            *file_mut(&mut out.workload) = self.verify(&d)?;
        }
        Ok(out)
    }

    /// `config` with a path into this store shown as the `sha256:<hex>` it was given as
    /// (so that clients see references, never the daemon's paths).
    pub fn unresolve(&self, config: &ServiceConfig) -> ServiceConfig {
        let mut out = config.clone();
        let back = |p: &Path| -> Option<PathBuf> {
            let name = p.strip_prefix(&self.dir).ok()?.to_str()?;
            let d = Digest::parse(&format!("{SCHEME}{}", name.strip_prefix("sha256-")?))?;
            Some(PathBuf::from(d.to_string()))
        };
        if let Some(p) = back(file(&config.workload)) {
            *file_mut(&mut out.workload) = p;
        }
        out
    }
}

/// The one file a workload names: its image or its module.
pub fn file(w: &Workload) -> &Path {
    match w {
        Workload::Image(p) => p,
        Workload::Wasm(w) => &w.module,
    }
}

fn file_mut(w: &mut Workload) -> &mut PathBuf {
    match w {
        Workload::Image(p) => p,
        Workload::Wasm(w) => &mut w.module,
    }
}

/// Check an upload the way a service's module or image is checked.
fn check(bytes: &[u8], path: &Path) -> Result<(), ArtifactError> {
    if bytes.starts_with(b"\0asm") {
        crate::wasm::check(bytes, CHECK_MEMORY_MIB)
            .map(drop)
            .map_err(|e| ArtifactError::Invalid {
                kind: "wasm module",
                why: e.to_string(),
            })
    } else {
        vmm::check_image(path, CHECK_MEMORY_MIB).map_err(|e| ArtifactError::Invalid {
            kind: "guest image",
            why: without_path(&e.to_string(), path),
        })
    }
}

/// `text` with `path` taken out (image errors name the file they read).
fn without_path(text: &str, path: &Path) -> String {
    text.replace(&format!("{}: ", path.display()), "")
        .replace(&path.display().to_string(), "the upload")
}
