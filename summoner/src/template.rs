//! Snapshot mode: a service's template. When a `snapshot = true` service is created, a
//! worker boots its image once to the guest's ready and saves the VM into the run dir; the
//! pool then restores every shell from that snapshot. The template VM never serves a
//! request. The snapshot is deleted when the last holder of the [`Template`] (the service and
//! its pool) goes.

use std::path::{Path, PathBuf};

use vmm::worker::protocol::Event;

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
    /// The worker answered something other than a snapshot.
    #[error("the worker answered {0} instead of a snapshot")]
    Unexpected(String),
}

/// A service's snapshot on disk.
#[derive(Debug)]
pub struct Template {
    dir: PathBuf,
    /// What taking it cost.
    pub info: vmm::snapshot::SnapshotInfo,
}

impl Template {
    /// Boot `config`'s image in a template VM and save it under the spawner's run dir.
    pub async fn take(spawner: &Spawner, config: &ServiceConfig) -> Result<Self, TemplateError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-template-{:x}-{n}", config.name, std::process::id());
        let dir = spawner.run_dir.join(format!("{id}.snap"));
        let mut vm = config.vm_config(&id, &spawner.run_dir);
        // A template does more than a request (a wasm template compiles its module: seconds
        // on an emulating KVM), so it gets at least TEMPLATE_TIMEOUT.
        vm.timeout = vm.timeout.map(|t| t.max(TEMPLATE_TIMEOUT));
        let mut this = Self {
            dir,
            info: vmm::snapshot::SnapshotInfo {
                guest_us: 0,
                total_us: 0,
                memory_bytes: 0,
            },
        };
        // `this` removes the directory if anything below fails.
        match spawner.snapshot(id, vm, &this.dir).await? {
            Event::Snapshotted { info } => {
                this.info = info;
                Ok(this)
            }
            Event::Error { message } => Err(TemplateError::Vm(message)),
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
