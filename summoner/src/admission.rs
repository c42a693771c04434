//! Admission: at most `max_concurrent` VMs of a service alive; beyond that, up to
//! `queue_depth` requests wait (fairly, in arrival order) for at most `queue_deadline`;
//! anything more is shed with 503.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The queue was full on arrival.
    #[error("queue full")]
    QueueFull,
    /// The wait exceeded the queue deadline.
    #[error("waited past the queue deadline")]
    Expired,
    /// The daemon runs its `max_vms` VMs.
    #[error("the daemon runs its maximum number of VMs")]
    MaxVms,
}

/// One service's admission state.
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    depth: usize,
    deadline: Duration,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// `max` concurrent, `depth` queued, waiting at most `deadline`.
    pub fn new(max: usize, depth: usize, deadline: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            waiting: AtomicUsize::new(0),
            depth,
            deadline,
        }
    }

    /// A slot, held until the request's VM is gone.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Rejected> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.depth {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Rejected::QueueFull);
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(self.deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Rejected::Expired),
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queues_then_sheds() {
        let a = Arc::new(Admission::new(1, 1, Duration::from_millis(50)));
        let first = a.admit().await.unwrap();
        let a2 = a.clone();
        let queued = tokio::spawn(async move { a2.admit().await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(a.waiting(), 1);
        assert_eq!(a.admit().await.unwrap_err(), Rejected::QueueFull);
        drop(first);
        assert!(queued.await.unwrap().is_ok());
        let _held = a.admit().await.unwrap();
        assert_eq!(a.admit().await.unwrap_err(), Rejected::Expired);
        assert_eq!(a.waiting(), 0);
    }
}
