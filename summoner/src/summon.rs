//! The part of a request both modes share: admission -> a VM shell -> run it -> guest ready
//! -> vsock CONNECT to the guest's port. What comes back is a byte stream into a VM that did
//! not exist a moment before, plus the time each phase took.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::Rejected;
use crate::metrics::{Outcome, Phase};
use crate::service::ServiceInner;
use crate::vsock::{self, connect, Answer, GuestStream, Handshake};
use crate::worker::{BootingWorker, ServingWorker, WorkerError};
use vmm::worker::protocol::Output;

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
    /// The guest crashed or exited before it was ready, or while the request was forwarded.
    #[error("guest failed: {0}")]
    Guest(#[source] WorkerError),
    /// The guest did not take the connection or did not answer on it.
    #[error("guest failed: {0}")]
    Connect(#[from] ConnectError),
    /// Past the request deadline.
    #[error("deadline exceeded")]
    Timeout,
    /// The summoner could not get a VM.
    #[error("cannot start a VM: {0}")]
    Internal(#[source] WorkerError),
}

pub use crate::vsock::ConnectError;

impl SummonError {
    /// The outcome to count.
    pub fn outcome(&self) -> Outcome {
        match self {
            SummonError::Shed(_) => Outcome::shed,
            SummonError::Guest(_) | SummonError::Connect(_) => Outcome::crash,
            SummonError::Timeout => Outcome::timeout,
            SummonError::Internal(_) => Outcome::error,
        }
    }
}

/// A request that got no VM to answer it, and which VM it had, if any.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: SummonError,
    /// The VM that was started for it.
    pub vm: Option<String>,
    /// Whether an operator killed that VM.
    pub killed: bool,
    /// What that VM's guest wrote last on its serial console, if known.
    pub output: Option<Output>,
}

impl From<SummonError> for Failure {
    fn from(error: SummonError) -> Self {
        Self {
            error,
            vm: None,
            killed: false,
            output: None,
        }
    }
}

impl Failure {
    /// The failure of the request whose VM is `vm`.
    pub fn of(error: SummonError, vm: &str, killed: &std::sync::atomic::AtomicBool) -> Self {
        Self {
            error,
            vm: Some(vm.to_string()),
            killed: killed.load(std::sync::atomic::Ordering::SeqCst),
            output: None,
        }
    }

    /// The failure of a request whose VM was serving, with what its guest wrote last when
    /// `log` would report it (fetching it is a round trip to the worker).
    pub async fn of_vm(
        error: SummonError,
        vm: &mut ServingWorker,
        log: &crate::diagnose::GuestLog,
    ) -> Self {
        let output = if log.open() {
            Some(vm.output().await)
        } else {
            None
        };
        Self {
            error,
            vm: Some(vm.vm_id.clone()),
            killed: vm.killed(),
            output,
        }
    }

    /// What the service's client is told: nothing of the host (paths, worker errors); the
    /// daemon's log has the details.
    pub fn client_message(&self) -> String {
        if self.killed {
            return "dust: the VM was stopped by the operator".into();
        }
        match &self.error {
            SummonError::Shed(r) => format!("dust: overloaded: {r}"),
            SummonError::Guest(WorkerError::Ended(vmm::VmExit::Crash(why))) => {
                format!("dust: guest failed: the guest crashed ({why})")
            }
            SummonError::Guest(_) => "dust: guest failed: the VM ended before answering".into(),
            SummonError::Connect(ConnectError::NotListening(port)) => {
                format!("dust: guest failed: the guest is not listening on vsock port {port}")
            }
            SummonError::Connect(_) => "dust: guest failed: the guest did not answer".into(),
            SummonError::Timeout => "dust: deadline exceeded".into(),
            SummonError::Internal(_) => {
                "dust: cannot start a VM (the daemon's log says why)".into()
            }
        }
    }
}

/// A VM ready for this request, connected.
pub struct Summoned {
    /// The serving VM (killed when dropped).
    pub vm: ServingWorker,
    /// The stream to the guest's port, its `OK` line consumed.
    pub stream: GuestStream,
    /// Phases so far.
    pub phases: Phases,
}

/// A VM started for one request, not known to be ready yet.
struct Started {
    vm: BootingWorker,
    /// A connection the pool opened ahead.
    stream: Option<GuestStream>,
    phases: Phases,
    /// When it was started.
    at: Instant,
    by: tokio::time::Instant,
}

/// Admission -> a shell -> start it.
async fn start(
    svc: &Arc<ServiceInner>,
    t0: Instant,
    deadline: Instant,
) -> Result<Started, Failure> {
    let mut phases = Phases::default();
    let permit = svc.admission.admit().await.map_err(SummonError::from)?;
    phases.queue = t0.elapsed();

    let t = Instant::now();
    let by = tokio::time::Instant::from_std(deadline);
    let (idle, warm) = tokio::time::timeout_at(by, svc.pool.take())
        .await
        .map_err(|_| SummonError::Timeout)?
        .map_err(|e| match e {
            WorkerError::TooManyVms => SummonError::Shed(Rejected::MaxVms),
            e => SummonError::Internal(e),
        })?;
    phases.warm = warm;
    phases.spawn = t.elapsed();

    let at = Instant::now();
    let mut idle = idle;
    let stream = idle.stream.take();
    let vm = idle
        .start(
            Some(permit),
            svc.metrics.clone(),
            &svc.registry,
            &svc.config.name,
        )
        .await
        .map_err(SummonError::Internal)?;
    Ok(Started {
        vm,
        stream,
        phases,
        at,
        by,
    })
}

/// Wait for the started VM's guest to be ready; the instant it was.
async fn ready(
    vm: BootingWorker,
    by: tokio::time::Instant,
) -> Result<(ServingWorker, Instant), Failure> {
    let (id, killed) = (vm.vm_id.clone(), vm.kill_flag());
    let failed = |e| Failure::of(e, &id, &killed);
    let vm = tokio::time::timeout_at(by, vm.ready())
        .await
        .map_err(|_| failed(SummonError::Timeout))?
        .map_err(|b| Failure {
            output: Some(b.output),
            ..failed(SummonError::Guest(b.error))
        })?;
    Ok((vm, Instant::now()))
}

/// Get a fresh, ready, connected VM for one request.
pub async fn summon(
    svc: &Arc<ServiceInner>,
    t0: Instant,
    deadline: Instant,
) -> Result<Summoned, Failure> {
    let Started {
        vm,
        mut phases,
        at,
        by,
        ..
    } = start(svc, t0, deadline).await?;
    let (id, killed) = (vm.vm_id.clone(), vm.kill_flag());
    let failed = |e| Failure::of(e, &id, &killed);
    let (vm, ready_at) = ready(vm, by).await?;
    phases.boot = ready_at - at;

    let t = Instant::now();
    let stream = tokio::time::timeout_at(by, connect(vm.vsock(), svc.config.guest_port))
        .await
        .map_err(|_| failed(SummonError::Timeout))?
        .map_err(|e| failed(e.into()))?;
    phases.connect = t.elapsed();
    Ok(Summoned { vm, stream, phases })
}

/// A VM for one HTTP request, its `CONNECT` written but perhaps not answered yet.
pub struct Opened {
    /// The serving VM (killed when dropped).
    pub vm: ServingWorker,
    /// The stream to the guest's port; the request may be written at once.
    pub stream: GuestStream,
    /// Phases so far (`connect` is known once the guest accepts: [`Opened::connected`]).
    pub phases: Phases,
    /// When the handshake started to count: the guest was ready and the line written.
    pub since: Instant,
}

impl Opened {
    /// The `connect` phase and the instant it ended, once the guest has accepted.
    pub fn connected(handshake: &Handshake, since: Instant) -> Option<(Duration, Instant)> {
        match handshake.answer() {
            Answer::Accepted(at) => Some((at.saturating_duration_since(since), at)),
            _ => None,
        }
    }
}

/// [`summon`] for an HTTP request: the `CONNECT` line goes out without waiting for the
/// guest's answer (`crate::vsock::open`), and a restored shell, whose guest is past ready
/// by construction, is connected to while its start is still being confirmed. What a
/// failed start or a refused connection answers is the same as with [`summon`].
pub async fn summon_http(
    svc: &Arc<ServiceInner>,
    t0: Instant,
    deadline: Instant,
) -> Result<Opened, Failure> {
    let Started {
        vm,
        stream: pre,
        mut phases,
        at,
        by,
    } = start(svc, t0, deadline).await?;
    let port = svc.config.guest_port;
    let (id, killed) = (vm.vm_id.clone(), vm.kill_flag());
    let failed = |e| Failure::of(e, &id, &killed);
    // The pool's connection if it opened one, else a new one.
    let open = |path: PathBuf, pre: Option<GuestStream>| async move {
        let s = match pre {
            Some(s) => Ok(Ok(s)),
            None => tokio::time::timeout_at(by, vsock::open(&path, port)).await,
        };
        (s, Instant::now())
    };
    let ((vm, ready_at), (stream, opened_at)) = if svc.pool.snapshot_mode() {
        let path = vm.vsock().to_path_buf();
        let (vm, stream) = tokio::join!(ready(vm, by), open(path, pre));
        (vm?, stream)
    } else {
        let (vm, ready_at) = ready(vm, by).await?;
        let stream = open(vm.vsock().to_path_buf(), pre).await;
        ((vm, ready_at), stream)
    };
    phases.boot = ready_at - at;
    let stream = stream
        .map_err(|_| failed(SummonError::Timeout))?
        .map_err(|e| failed(e.into()))?;
    Ok(Opened {
        vm,
        stream,
        phases,
        since: ready_at.max(opened_at),
    })
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

    /// Settle with `outcome`, having sent the client `status` (`None`: no HTTP status).
    pub fn settle(&mut self, outcome: Outcome, status: Option<u16>) {
        if !self.done {
            self.done = true;
            self.svc.metrics.request(outcome, status);
        }
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        self.settle(Outcome::client_gone, None);
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
