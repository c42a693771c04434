//! Every VM a summoner has started and not yet reaped, by id: what `GET /v1/vms` lists and
//! `DELETE /v1/vms/{id}` kills.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Where a VM is in its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Started, guest not ready yet.
    Booting,
    /// Ready; the request is being forwarded or answered.
    Serving,
    /// Being killed and reaped.
    Stopping,
}

impl VmPhase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => VmPhase::Booting,
            1 => VmPhase::Serving,
            _ => VmPhase::Stopping,
        }
    }
}

/// One live VM.
pub struct VmEntry {
    /// Its service.
    pub service: String,
    /// Worker process id.
    pub pid: u32,
    /// When it was started.
    pub started: Instant,
    phase: AtomicU8,
}

impl VmEntry {
    /// Current phase.
    pub fn phase(&self) -> VmPhase {
        VmPhase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    /// Move to `phase`.
    pub fn set_phase(&self, phase: VmPhase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    /// VM id.
    pub id: String,
    /// Service.
    pub service: String,
    /// Phase.
    pub phase: VmPhase,
    /// Milliseconds since start.
    pub age_ms: u64,
    /// Worker process id.
    pub pid: u32,
}

/// The live VMs.
#[derive(Default)]
pub struct Registry {
    vms: Mutex<BTreeMap<String, Arc<VmEntry>>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<VmEntry>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a started VM.
    pub fn insert(&self, id: &str, service: &str, pid: u32) -> Arc<VmEntry> {
        let e = Arc::new(VmEntry {
            service: service.to_string(),
            pid,
            started: Instant::now(),
            phase: AtomicU8::new(VmPhase::Booting as u8),
        });
        self.map().insert(id.to_string(), e.clone());
        e
    }

    /// Forget a reaped VM.
    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    fn info(id: &str, e: &VmEntry) -> VmInfo {
        VmInfo {
            id: id.to_string(),
            service: e.service.clone(),
            phase: e.phase(),
            age_ms: e.started.elapsed().as_millis() as u64,
            pid: e.pid,
        }
    }

    /// All live VMs.
    pub fn list(&self) -> Vec<VmInfo> {
        self.map().iter().map(|(id, e)| Self::info(id, e)).collect()
    }

    /// One VM.
    pub fn get(&self, id: &str) -> Option<VmInfo> {
        self.map().get(id).map(|e| Self::info(id, e))
    }

    /// Kill a VM's worker (its client gets 502); false if there is no such VM.
    pub fn kill(&self, id: &str) -> bool {
        let Some(e) = self.map().get(id).cloned() else {
            return false;
        };
        e.set_phase(VmPhase::Stopping);
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet (entries are removed
        // only after the reaper's wait), so it cannot name a recycled process.
        unsafe { libc::kill(e.pid as i32, libc::SIGKILL) };
        true
    }
}
