//! The part of a request both modes share: admission -> a VM shell -> run it -> guest ready
//! -> vsock CONNECT to the guest's port. What comes back is a byte stream into a VM that did
//! not exist a moment before, plus the time each phase took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use vmm::VmExit;

use crate::admission::Rejected;
use crate::metrics::{Outcome, Phase};
use crate::service::ServiceInner;
use crate::worker::{RunningWorker, WorkerError};

/// Phase durations of one request so far.
#[derive(Debug, Default, Clone)]
pub struct Phases {
    /// Waiting for admission.
    pub queue: Duration,
    /// Getting a built shell.
    pub spawn: Duration,
    /// Start -> ready.
    pub boot: Duration,
    /// vsock CONNECT.
    pub connect: Duration,
    /// Whether a pre-built shell was waiting.
    pub warm: bool,
}

/// Why no VM could serve the request.
#[derive(Debug, thiserror::Error)]
pub enum SummonError {
    /// Admission refused.
    #[error("overloaded: {0}")]
    Shed(#[from] Rejected),
    /// The guest crashed, exited early or refused the connection.
    #[error("guest failed: {0}")]
    Guest(String),
    /// Past the request deadline.
    #[error("deadline exceeded")]
    Timeout,
    /// The summoner could not get a VM.
    #[error("cannot start a VM: {0}")]
    Internal(String),
}

impl SummonError {
    /// The outcome to count.
    pub fn outcome(&self) -> Outcome {
        match self {
            SummonError::Shed(_) => Outcome::shed,
            SummonError::Guest(_) => Outcome::crash,
            SummonError::Timeout => Outcome::timeout,
            SummonError::Internal(_) => Outcome::error,
        }
    }
}

/// A VM ready for this request, connected.
pub struct Summoned {
    /// The running VM (killed when dropped).
    pub vm: RunningWorker,
    /// The stream to the guest's port.
    pub stream: UnixStream,
    /// Phases so far.
    pub phases: Phases,
}

fn guest_failed(e: WorkerError) -> SummonError {
    match e {
        WorkerError::Ended(exit @ VmExit::Timeout) => SummonError::Guest(exit.to_string()),
        WorkerError::Ended(exit) => SummonError::Guest(exit.to_string()),
        other => SummonError::Guest(other.to_string()),
    }
}

/// Get a fresh, ready, connected VM for one request.
pub async fn summon(
    svc: &Arc<ServiceInner>,
    t0: Instant,
    deadline: Instant,
) -> Result<Summoned, SummonError> {
    let mut phases = Phases::default();
    let permit = svc.admission.admit().await?;
    phases.queue = t0.elapsed();

    let t = Instant::now();
    let by = tokio::time::Instant::from_std(deadline);
    let (idle, warm) = tokio::time::timeout_at(by, svc.pool.take())
        .await
        .map_err(|_| SummonError::Timeout)?
        .map_err(|e| SummonError::Internal(e.to_string()))?;
    phases.warm = warm;
    phases.spawn = t.elapsed();

    let t = Instant::now();
    let mut vm = idle
        .start(
            Some(permit),
            svc.metrics.clone(),
            svc.registry.clone(),
            &svc.config.name,
        )
        .await
        .map_err(|e| SummonError::Internal(e.to_string()))?;
    tokio::time::timeout_at(by, vm.ready())
        .await
        .map_err(|_| SummonError::Timeout)?
        .map_err(guest_failed)?;
    phases.boot = t.elapsed();

    let t = Instant::now();
    let stream = tokio::time::timeout_at(by, connect(&vm, svc.config.guest_port))
        .await
        .map_err(|_| SummonError::Timeout)?
        .map_err(SummonError::Guest)?;
    phases.connect = t.elapsed();
    Ok(Summoned { vm, stream, phases })
}

/// Firecracker's hybrid vsock handshake: `CONNECT <port>\n` -> `OK <host_port>\n`.
async fn connect(vm: &RunningWorker, port: u32) -> Result<UnixStream, String> {
    let path = vm.vsock().ok_or("VM has no vsock socket")?;
    let mut s = UnixStream::connect(path)
        .await
        .map_err(|e| format!("vsock {}: {e}", path.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| format!("vsock CONNECT: {e}"))?;
    // Byte by byte, so that nothing the guest sends after the OK line is consumed here.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) if line.len() < 32 => line.push(b[0]),
            Ok(_) => return Err(format!("guest is not listening on vsock port {port}")),
            Err(e) => return Err(format!("vsock CONNECT: {e}")),
        }
    }
    if line.starts_with(b"OK ") {
        Ok(s)
    } else {
        Err(format!(
            "vsock CONNECT refused: {}",
            String::from_utf8_lossy(&line)
        ))
    }
}

/// Records the request's outcome once; a request dropped before it is settled (the client
/// went away) counts as `client_gone`.
pub struct OutcomeGuard {
    svc: Arc<ServiceInner>,
    done: bool,
}

impl OutcomeGuard {
    /// Start tracking.
    pub fn new(svc: &Arc<ServiceInner>) -> Self {
        Self {
            svc: svc.clone(),
            done: false,
        }
    }

    /// Settle with `outcome`.
    pub fn settle(&mut self, outcome: Outcome) {
        if !self.done {
            self.done = true;
            self.svc.metrics.request(outcome);
        }
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        self.settle(Outcome::client_gone);
    }
}

/// Record the phases of a request that got a VM.
pub fn record(svc: &ServiceInner, p: &Phases) {
    let m = &svc.metrics;
    m.phase(Phase::queue, p.queue);
    m.phase(Phase::spawn, p.spawn);
    m.phase(Phase::boot, p.boot);
    m.phase(Phase::connect, p.connect);
}
