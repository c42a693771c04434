//! Snapshot mode: a service's template. When a `snapshot = true` service is created, a
//! worker boots its image once to the guest's ready and saves the VM into the run dir; the
//! pool then restores every shell from that snapshot. The template VM never serves a
//! request. The snapshot is deleted when the last holder of the [`Template`] (the service and
//! its pool) goes.

mod cache;

use std::path::{Path, PathBuf};

use vmm::worker::protocol::Event;

pub use cache::TemplateCache;

use crate::config::ServiceConfig;
use crate::worker::{Spawner, WorkerError};

/// The least time a template VM gets to reach ready.
pub const TEMPLATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Why a template could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The worker could not be started or talked to.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The template VM failed before it was saved (the worker's report: the guest never got
    /// ready, crashed, or the snapshot could not be written).
    #[error("{0}")]
    Vm(String),
    /// The template cache could not be read or written.
    #[error("template cache: {0}")]
    Cache(std::io::Error),
    /// The worker answered something other than a snapshot.
    #[error("the worker answered {0} instead of a snapshot")]
    Unexpected(String),
}

/// A service's snapshot on disk.
#[derive(Debug)]
pub struct Template {
    dir: PathBuf,
    /// A cache entry outlives the service (and the daemon); a run-dir template does not.
    cached: bool,
    /// What taking it cost.
    pub info: vmm::snapshot::SnapshotInfo,
}

impl Template {
    /// `config`'s template: from `cache` when it holds a good one, else booted in a
    /// template VM and saved (into `cache`, or under the spawner's run dir without one).
    pub async fn take(
        spawner: &Spawner,
        config: &ServiceConfig,
        cache: Option<&TemplateCache>,
    ) -> Result<Self, TemplateError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-template-{:x}-{n}", config.name, std::process::id());
        let slot = match cache {
            Some(c) => Some(c.slot(config, &id).map_err(TemplateError::Cache)?),
            None => None,
        };
        let (dir, entry) = match slot {
            Some(cache::Slot::Hit(entry)) => {
                let info = vmm::snapshot::SnapshotInfo {
                    guest_us: 0,
                    total_us: 0,
                    memory_bytes: 0,
                };
                return Ok(Self {
                    dir: entry,
                    cached: true,
                    info,
                });
            }
            Some(cache::Slot::Miss { tmp, entry }) => (tmp, Some(entry)),
            None => (spawner.run_dir.join(format!("{id}.snap")), None),
        };
        let mut this = Self::boot(spawner, config, id, dir).await?;
        if let (Some(c), Some(entry)) = (cache, entry) {
            let published = c.publish(&this.dir, &entry).map_err(TemplateError::Cache)?;
            // The tmp dir is gone (renamed, or removed when another won the race).
            this.dir = published;
            this.cached = true;
        }
        Ok(this)
    }

    /// Boot `config`'s image in a template VM named `id` and save it into `dir`.
    async fn boot(
        spawner: &Spawner,
        config: &ServiceConfig,
        id: String,
        dir: PathBuf,
    ) -> Result<Self, TemplateError> {
        let mut vm = config.vm_config(&id, &spawner.run_dir);
        // A template does more than a request (a wasm template compiles its module: seconds
        // on an emulating KVM), so it gets at least TEMPLATE_TIMEOUT.
        vm.timeout = vm.timeout.map(|t| t.max(TEMPLATE_TIMEOUT));
        let mut this = Self {
            dir,
            cached: false,
            info: vmm::snapshot::SnapshotInfo {
                guest_us: 0,
                total_us: 0,
                memory_bytes: 0,
            },
        };
        // `this` removes the directory if anything below fails.
        let (answer, output) = spawner.snapshot(id.clone(), vm, &this.dir).await?;
        match answer {
            Event::Snapshotted { info } => {
                this.info = info;
                Ok(this)
            }
            Event::Error { message } => {
                // Why the guest failed (a warm-up that trapped, a panic) is in its output.
                match output.filter(|o| !o.is_empty()) {
                    Some(o) => {
                        crate::diagnose::template_failed(&config.name, &id, &o);
                        Err(TemplateError::Vm(format!(
                            "{message} (the daemon's log has the guest's last serial output)"
                        )))
                    }
                    None => Err(TemplateError::Vm(message)),
                }
            }
            other => Err(TemplateError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        if !self.cached {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
