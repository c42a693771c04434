//! `services.json`: the services the control API created or replaced, as the client gave
//! them (artifact references unresolved), each with the definition it replaced so that a
//! rollback can bring it back. The file is rewritten whole on every change
//! ([`super::write_atomic`]) before the API answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::ServiceConfig;

/// The file's format version.
const VERSION: u32 = 1;

/// The file name in the state directory.
pub const FILE: &str = "services.json";

/// One API-managed service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// What runs now.
    pub current: ServiceConfig,
    /// What ran before the last replacement (what a rollback brings back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ServiceConfig>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: u32,
    services: Vec<Record>,
}

/// A state file the daemon cannot use.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Cannot create the directory or read or write the file.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is there but is not a state file this daemon can read.
    #[error(
        "state file {path} cannot be read ({reason}); dust will not start without the \
         services it holds: restore it from a backup, or move it away to start with no \
         API-created services (docs/deploy.md)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The API-managed services of a state directory.
#[derive(Debug)]
pub struct ServiceState {
    path: PathBuf,
    records: Mutex<BTreeMap<String, Record>>,
}

impl ServiceState {
    /// Read `state_dir/services.json` (none yet: no services); the directory is cleared
    /// of temporary files.
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join(FILE);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        super::open_dir(state_dir).map_err(io)?;
        let records = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|reason| StateError::Corrupt {
                path: path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            path,
            records: Mutex::new(records),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record, by name.
    pub fn records(&self) -> Vec<Record> {
        self.lock().values().cloned().collect()
    }

    /// The record of `name`.
    pub fn get(&self, name: &str) -> Option<Record> {
        self.lock().get(name).cloned()
    }

    /// Make `record` durable (replacing any of its name).
    pub fn put(&self, record: Record) -> Result<(), StateError> {
        let mut records = self.lock();
        let mut next = records.clone();
        next.insert(record.current.name.clone(), record);
        self.write(&next)?;
        *records = next;
        Ok(())
    }

    /// Forget `name` durably; false if it had no record.
    pub fn remove(&self, name: &str) -> Result<bool, StateError> {
        let mut records = self.lock();
        if !records.contains_key(name) {
            return Ok(false);
        }
        let mut next = records.clone();
        next.remove(name);
        self.write(&next)?;
        *records = next;
        Ok(true)
    }

    fn write(&self, records: &BTreeMap<String, Record>) -> Result<(), StateError> {
        let doc = Doc {
            version: VERSION,
            services: records.values().cloned().collect(),
        };
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(&doc).map_err(|e| io(e.into()))?;
        text.push(b'\n');
        super::write_atomic(&self.path, &text).map_err(io)
    }
}

fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Record>, String> {
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if doc.version != VERSION {
        return Err(format!(
            "format version {} (this dust reads {VERSION})",
            doc.version
        ));
    }
    let mut records = BTreeMap::new();
    for r in doc.services {
        let name = r.current.name.clone();
        if records.insert(name.clone(), r).is_some() {
            return Err(format!("service {name:?} is in it twice"));
        }
    }
    Ok(records)
}
