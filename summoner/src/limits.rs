//! File-descriptor headroom. Every client connection costs the daemon one fd; so do the
//! control API's connections, each VM's worker (control socket, vsock stream, process
//! handle) and the pool's refills. At start the soft `RLIMIT_NOFILE` is raised to the hard
//! one, and client connections of all services together get a budget that leaves
//! [`RESERVED_FDS`] (plus a few per VM the daemon may run) untouched, so that no number of
//! clients can starve the control API or the VMs: past the budget a connection is answered
//! 503 (HTTP) or closed (TCP), never left to fail an `accept` elsewhere with EMFILE.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Fds kept out of the client budget for the control API, logs, the run dir and the
/// runtime itself.
pub const RESERVED_FDS: u64 = 256;
/// Fds one VM may hold in the daemon (worker control socket, its reader, vsock stream,
/// process handle).
pub const FDS_PER_VM: u64 = 4;
/// The largest soft limit we set when the hard one is unlimited.
const MAX_NOFILE: u64 = 1 << 20;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let hard = if lim.rlim_max == libc::RLIM_INFINITY {
        MAX_NOFILE
    } else {
        lim.rlim_max
    };
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < hard {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from a struct we own; raising the soft limit
        // up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = hard;
    }
    Ok(lim.rlim_cur.min(MAX_NOFILE))
}

/// How many client connections all services together may hold, given the soft fd limit
/// and the most VMs the daemon runs at once.
pub fn client_budget(nofile: u64, max_vms: usize) -> usize {
    let reserved = RESERVED_FDS.saturating_add(FDS_PER_VM.saturating_mul(max_vms as u64));
    // At least a handful, so that a tiny limit still serves someone.
    usize::try_from(nofile.saturating_sub(reserved).max(16)).unwrap_or(usize::MAX)
}

/// MiB of host memory counted per VM for the default `max_vms`: the default guest memory
/// plus the worker process around it.
pub const MIB_PER_VM: u64 = vmm::config::DEFAULT_MEMORY_MIB as u64 + 16;

/// The default `max_vms`: as many default-sized VMs as the host's memory holds.
pub fn default_max_vms() -> usize {
    usize::try_from((vmm::config::host_memory_mib() / MIB_PER_VM).max(1)).unwrap_or(usize::MAX)
}

/// The daemon-wide cap on worker processes (idle shells, booting and serving VMs alike).
/// A slot is given back once its worker is reaped and its vsock socket removed.
#[derive(Debug, Clone)]
pub struct VmSlots(Arc<Semaphore>, u32);

impl VmSlots {
    /// `n` workers at most.
    pub fn new(n: usize) -> Self {
        let n = u32::try_from(n.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self(Arc::new(Semaphore::new(n as usize)), n)
    }

    /// Wait until every worker is reaped (its socket removed).
    pub async fn all_free(&self) {
        let _ = self.0.acquire_many(self.1).await;
    }

    /// One worker's slot, if the daemon is below its cap.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The daemon-wide client connection budget.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    /// `n` connections.
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))))
    }

    /// One connection's share, if any is left.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_reserve() {
        assert_eq!(client_budget(1024, 10), 1024 - 256 - 40);
        assert_eq!(client_budget(100, 10), 16);
        let soft = raise_nofile().unwrap();
        assert!(soft >= 16);
        let b = Budget::new(1);
        let p = b.try_take();
        assert!(p.is_some() && b.try_take().is_none());
    }
}
