//! The cache of compiled images: `<dir>/<key>.img` with its SHA-256 in `<dir>/<key>.sum`.
//! The key is a digest of everything the image depends on (module, dust version, compile
//! flags, runtime sources and archive), so an entry is either right or absent. An entry
//! is verified (digest and image check) every time it is used; a bad one is removed and
//! rebuilt, never trusted. Entries are written atomically (temp, fsync, rename, fsync dir).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of an image: a digest over each part, length-prefixed.
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex(&h.finalize())
}

/// One entry of the cache.
pub struct Entry {
    /// The image.
    pub image: PathBuf,
    sum: PathBuf,
}

/// What a lookup found.
pub enum Lookup {
    /// A verified image.
    Hit,
    /// No entry.
    Miss,
    /// An entry that failed verification (removed); why.
    Corrupt(String),
}

impl Entry {
    /// The entry for `key` in `dir`.
    pub fn new(dir: &Path, key: &str) -> Self {
        Self {
            image: dir.join(format!("{key}.img")),
            sum: dir.join(format!("{key}.sum")),
        }
    }

    /// Whether the entry is there and sound (`check` judges the image bytes).
    pub fn lookup(&self, check: impl Fn(&[u8]) -> Result<(), String>) -> Lookup {
        let (Ok(image), Ok(sum)) = (
            std::fs::read(&self.image),
            std::fs::read_to_string(&self.sum),
        ) else {
            return if self.image.exists() || self.sum.exists() {
                self.remove();
                Lookup::Corrupt("incomplete entry".into())
            } else {
                Lookup::Miss
            };
        };
        let why = if sha256_hex(&image) != sum.trim() {
            Some("digest mismatch".to_string())
        } else {
            check(&image).err()
        };
        match why {
            None => Lookup::Hit,
            Some(why) => {
                self.remove();
                Lookup::Corrupt(why)
            }
        }
    }

    /// Stores `image` (already checked).
    pub fn store(&self, dir: &Path, image: &[u8]) -> std::io::Result<()> {
        write_atomic(dir, &self.sum, sha256_hex(image).as_bytes())?;
        write_atomic(dir, &self.image, image)
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_file(&self.sum);
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_entry_is_removed_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let e = Entry::new(dir.path(), "k");
        assert!(matches!(e.lookup(|_| Ok(())), Lookup::Miss));
        e.store(dir.path(), b"\x7fELF image").unwrap();
        assert!(matches!(e.lookup(|_| Ok(())), Lookup::Hit));
        assert!(matches!(
            e.lookup(|_| Err("bad".into())),
            Lookup::Corrupt(_)
        ));
        assert!(!e.image.exists());
        e.store(dir.path(), b"\x7fELF image").unwrap();
        std::fs::write(&e.image, b"\x7fELF imagE").unwrap();
        assert!(matches!(e.lookup(|_| Ok(())), Lookup::Corrupt(w) if w.contains("digest")));
        assert!(matches!(e.lookup(|_| Ok(())), Lookup::Miss));
    }

    #[test]
    fn keys_differ_by_every_part() {
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_eq!(key(&[b"a"]), key(&[b"a"]));
    }
}
