//! The part of a request both modes share: admission -> a VM shell -> run it -> guest ready
//! -> vsock CONNECT to the guest's port. What comes back is a byte stream into a VM that did
//! not exist a moment before, plus the time each phase took.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dust_abi::vsock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::admission::Rejected;
use crate::metrics::{Outcome, Phase};
use crate::service::ServiceInner;
use crate::worker::{ServingWorker, WorkerError};
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

/// Why the request could not reach the guest's port.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The VM's vsock socket cannot be connected.
    #[error("vsock {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The handshake broke off.
    #[error("vsock CONNECT: {0}")]
    Io(#[from] std::io::Error),
    /// The device closed the socket: nothing listens on the port.
    #[error("guest is not listening on vsock port {0}")]
    NotListening(u32),
    /// Something other than `OK <port>` came back.
    #[error("vsock CONNECT refused: {0:?}")]
    Refused(String),
    /// HTTP mode: the guest did not speak HTTP/1.1.
    #[error("HTTP handshake with the guest: {0}")]
    Handshake(#[source] hyper::Error),
    /// HTTP mode: the guest closed or broke the connection instead of answering.
    #[error("guest did not answer: {0}")]
    NoAnswer(#[source] hyper::Error),
}

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
    /// The stream to the guest's port.
    pub stream: UnixStream,
    /// Phases so far.
    pub phases: Phases,
}

/// Get a fresh, ready, connected VM for one request.
pub async fn summon(
    svc: &Arc<ServiceInner>,
    t0: Instant,
    deadline: Instant,
) -> Result<Summoned, Failure> {
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

    let t = Instant::now();
    let booting = idle
        .start(
            Some(permit),
            svc.metrics.clone(),
            &svc.registry,
            &svc.config.name,
        )
        .await
        .map_err(SummonError::Internal)?;
    let (id, killed) = (booting.vm_id.clone(), booting.kill_flag());
    let failed = |e| Failure::of(e, &id, &killed);
    let vm = tokio::time::timeout_at(by, booting.ready())
        .await
        .map_err(|_| failed(SummonError::Timeout))?
        .map_err(|b| Failure {
            output: Some(b.output),
            ..failed(SummonError::Guest(b.error))
        })?;
    phases.boot = t.elapsed();

    let t = Instant::now();
    let stream = tokio::time::timeout_at(by, connect(vm.vsock(), svc.config.guest_port))
        .await
        .map_err(|_| failed(SummonError::Timeout))?
        .map_err(|e| failed(e.into()))?;
    phases.connect = t.elapsed();
    Ok(Summoned { vm, stream, phases })
}

/// Firecracker's hybrid vsock handshake on the VM's socket `path`: `CONNECT <port>\n` ->
/// `OK <host_port>\n` (`dust_abi::vsock`).
async fn connect(path: &Path, port: u32) -> Result<UnixStream, ConnectError> {
    let mut s = UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
    s.write_all(vsock::connect_line(port).as_bytes()).await?;
    // Byte by byte, so that nothing the guest sends after the OK line is consumed here.
    let mut line = Vec::with_capacity(vsock::LINE_MAX);
    while line.last() != Some(&b'\n') && line.len() < vsock::LINE_MAX {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(ConnectError::NotListening(port));
        }
        line.push(b[0]);
    }
    match vsock::parse_ok(&line) {
        Some(_) => Ok(s),
        None => Err(ConnectError::Refused(
            String::from_utf8_lossy(&line).into_owned(),
        )),
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
