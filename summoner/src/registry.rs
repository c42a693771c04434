//! Every VM a summoner has started and not yet reaped, by id: what `GET /v1/vms` lists and
//! `DELETE /v1/vms/{id}` kills.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// One live VM.
struct VmEntry {
    service: String,
    pid: u32,
    started: Instant,
    phase: VmPhase,
    /// Set when an operator killed it (`DELETE /v1/vms/{id}`).
    killed: Arc<AtomicBool>,
}

/// A VM's place in the registry, held by the worker type that owns the VM: the booting
/// worker registers it, the serving worker moves it to [`VmPhase::Serving`], and dropping it
/// (the worker is being killed) marks it [`VmPhase::Stopping`]. The entry itself is removed
/// once the process is reaped.
pub struct Registered {
    registry: Arc<Registry>,
    id: String,
    killed: Arc<AtomicBool>,
}

impl Registered {
    /// Register a started VM as booting.
    pub fn new(registry: &Arc<Registry>, id: &str, service: &str, pid: u32) -> Self {
        let killed = Arc::new(AtomicBool::new(false));
        let e = VmEntry {
            service: service.to_string(),
            pid,
            started: Instant::now(),
            phase: VmPhase::Booting,
            killed: killed.clone(),
        };
        registry.map().insert(id.to_string(), e);
        Self {
            registry: registry.clone(),
            id: id.to_string(),
            killed,
        }
    }

    /// Set once an operator kills the VM; stays readable after the VM is gone.
    pub fn kill_flag(&self) -> Arc<AtomicBool> {
        self.killed.clone()
    }

    /// Move to `phase`.
    pub fn set_phase(&self, phase: VmPhase) {
        self.registry.set_phase(&self.id, phase);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.set_phase(VmPhase::Stopping);
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
    vms: Mutex<BTreeMap<String, VmEntry>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VmEntry>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_phase(&self, id: &str, phase: VmPhase) {
        if let Some(e) = self.map().get_mut(id) {
            e.phase = phase;
        }
    }

    /// Forget a reaped VM.
    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    fn info(id: &str, e: &VmEntry) -> VmInfo {
        VmInfo {
            id: id.to_string(),
            service: e.service.clone(),
            phase: e.phase,
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

    /// Kill a VM's worker (its client gets 502); false if there is no such VM, or it is
    /// already stopping.
    pub fn kill(&self, id: &str) -> bool {
        let mut map = self.map();
        let Some(e) = map.get_mut(id).filter(|e| e.phase != VmPhase::Stopping) else {
            return false;
        };
        e.phase = VmPhase::Stopping;
        e.killed.store(true, Ordering::SeqCst);
        tracing::info!(vm = %id, service = %e.service, "VM killed by the operator");
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet (entries are removed
        // only after the reaper's wait), so it cannot name a recycled process.
        unsafe { libc::kill(e.pid as i32, libc::SIGKILL) };
        true
    }
}
