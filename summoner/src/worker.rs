//! Worker processes, seen from the summoner: one VM per process (DESIGN.md, process model).
//!
//! The lifecycle is in the types: [`IdleWorker`] (process started, VM shell built, never ran
//! guest code) -> [`RunningWorker`] (started; waits for ready, serves one request) -> dead.
//! Dropping a `RunningWorker` kills its process and reaps it off the request path; the
//! admission permit it carries is released only once the process is gone, so "VMs alive"
//! never exceeds the service's limit.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use vmm::worker::{Command as Cmd, Event, CONTROL_FD};
use vmm::{Timings, VmConfig, VmExit};

use crate::metrics::ServiceMetrics;
use crate::registry::{Registry, VmEntry, VmPhase};

/// A worker that failed before or while starting its VM.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Could not start the process.
    #[error("spawning worker {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Control socket I/O failed (the worker died).
    #[error("worker control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The worker reported an error (e.g. a bad image).
    #[error("{0}")]
    Reported(String),
    /// The worker went away without a word.
    #[error("worker exited unexpectedly")]
    Vanished,
    /// The VM ended before it was ready.
    #[error("VM ended before it was ready: {0}")]
    Ended(VmExit),
}

/// A live worker process and its control channel.
struct Process {
    child: Option<Child>,
    ctl: OwnedWriteHalf,
    events: mpsc::UnboundedReceiver<Event>,
    vsock: PathBuf,
}

impl Process {
    async fn send(&mut self, cmd: &Cmd) -> Result<(), WorkerError> {
        let mut line = serde_json::to_vec(cmd).map_err(|e| WorkerError::Reported(e.to_string()))?;
        line.push(b'\n');
        self.ctl.write_all(&line).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Event, WorkerError> {
        self.events.recv().await.ok_or(WorkerError::Vanished)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            reap(child, self.vsock.clone(), None);
        }
    }
}

/// Kill `child` and wait for it in the background; then remove its socket and drop `permit`.
fn reap(mut child: Child, vsock: PathBuf, after: Option<Box<dyn FnOnce() + Send>>) {
    let _ = child.start_kill();
    let vm = vsock
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let finish = move || {
        let _ = std::fs::remove_file(&vsock);
        crate::jail::release(&vsock);
        if let Some(f) = after {
            f();
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Ok(status) = child.wait().await {
                    crate::exit::report(&vm, status);
                }
                // Removing the VM's cgroups may wait for its last process to go.
                let _ = tokio::task::spawn_blocking(finish).await;
            });
        }
        Err(_) => {
            // No runtime (shutdown): kill_on_drop and the OS reap it; clean up now.
            finish();
        }
    }
}

/// Starts worker processes.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// The `dust` executable (run as `dust worker`).
    pub exe: PathBuf,
    /// Where VM sockets go.
    pub run_dir: PathBuf,
    /// How workers are jailed (None: not at all; seccomp still applies).
    pub jail: Option<Arc<crate::jail::Jail>>,
}

/// A worker whose VM shell is built and has never run.
pub struct IdleWorker {
    /// VM id.
    pub vm_id: String,
    /// Build phases.
    pub build: Timings,
    proc: Process,
}

impl Spawner {
    /// Start a worker and have it build `config`'s VM as `vm_id`.
    pub async fn spawn(&self, vm_id: String, config: VmConfig) -> Result<IdleWorker, WorkerError> {
        self.spawn_limited(vm_id, config, None).await
    }

    /// [`Spawner::spawn`], with the VM's memory limit (cgroup) if not the default.
    pub async fn spawn_limited(
        &self,
        vm_id: String,
        config: VmConfig,
        memory_limit_mib: Option<u32>,
    ) -> Result<IdleWorker, WorkerError> {
        // Jail: per-VM root and cgroups, in-jail paths (docs/security.md).
        let (config, jail_spec, jailed_vsock) = match &self.jail {
            Some(j) => {
                // mkdir, chown and cgroup writes: not on a runtime thread that may be
                // serving a request.
                let (j, id) = (j.clone(), vm_id.clone());
                let p =
                    tokio::task::spawn_blocking(move || j.prepare(&id, config, memory_limit_mib))
                        .await
                        .map_err(|e| WorkerError::Reported(e.to_string()))??;
                (p.config, Some(p.spec), Some(p.vsock))
            }
            None => (config, None, None),
        };
        let (ours, theirs) = StdUnixStream::pair()?;
        let child_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&self.exe);
        cmd.arg("worker")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Forwarded to the log (a jailed worker may not write files: RLIMIT_FSIZE 0).
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(spec) = &jail_spec {
            let json =
                serde_json::to_string(spec).map_err(|e| WorkerError::Reported(e.to_string()))?;
            cmd.env(vmm::jail::ENV, json);
        }
        // SAFETY: between fork and exec we only call dup2/fcntl, which are async-signal-safe,
        // on fds that are valid in the child (inherited from this process).
        unsafe {
            cmd.pre_exec(move || {
                if child_fd == CONTROL_FD {
                    let flags = libc::fcntl(CONTROL_FD, libc::F_GETFD);
                    libc::fcntl(CONTROL_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(child_fd, CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| {
            if let Some(v) = &jailed_vsock {
                crate::jail::release(v);
            }
            WorkerError::Spawn {
                exe: self.exe.clone(),
                source,
            }
        })?;
        drop(theirs);
        let mut child = child;
        if let Some(err) = child.stderr.take() {
            crate::exit::forward_stderr(vm_id.clone(), err);
        }
        ours.set_nonblocking(true)?;
        let (rd, ctl) = UnixStream::from_std(ours)?.into_split();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::warn!("worker sent an unreadable event: {e}"),
                }
            }
        });
        let vsock = jailed_vsock.unwrap_or_else(|| {
            config
                .vsock
                .as_ref()
                .map(|v| v.uds.clone())
                .unwrap_or_default()
        });
        let mut proc = Process {
            child: Some(child),
            ctl,
            events,
            vsock,
        };
        proc.send(&Cmd::Build {
            vm_id: vm_id.clone(),
            config: Box::new(config),
        })
        .await?;
        match proc.next().await? {
            Event::Built { timings } => Ok(IdleWorker {
                vm_id,
                build: timings,
                proc,
            }),
            Event::Error { message } => Err(WorkerError::Reported(message)),
            other => Err(WorkerError::Reported(format!("unexpected event {other:?}"))),
        }
    }
}

impl IdleWorker {
    /// Run the VM. `permit` (the admission slot) and `metrics` travel with it until the
    /// process is dead.
    pub async fn start(
        mut self,
        permit: Option<OwnedSemaphorePermit>,
        metrics: Arc<ServiceMetrics>,
        registry: Arc<Registry>,
        service: &str,
    ) -> Result<RunningWorker, WorkerError> {
        metrics.vm_started();
        let pid = self.proc.child.as_ref().and_then(Child::id).unwrap_or(0);
        let entry = registry.insert(&self.vm_id, service, pid);
        let mut running = RunningWorker {
            vm_id: std::mem::take(&mut self.vm_id),
            proc: Some(self.proc),
            permit,
            metrics,
            registry,
            entry,
        };
        running.proc_mut()?.send(&Cmd::Start).await?;
        Ok(running)
    }
}

/// A worker whose VM runs.
pub struct RunningWorker {
    /// VM id.
    pub vm_id: String,
    proc: Option<Process>,
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<ServiceMetrics>,
    registry: Arc<Registry>,
    entry: Arc<VmEntry>,
}

impl RunningWorker {
    fn proc_mut(&mut self) -> Result<&mut Process, WorkerError> {
        self.proc.as_mut().ok_or(WorkerError::Vanished)
    }

    /// The VM's vsock socket.
    pub fn vsock(&self) -> Option<&Path> {
        self.proc.as_ref().map(|p| p.vsock.as_path())
    }

    /// Wait for the guest's "ready".
    pub async fn ready(&mut self) -> Result<(), WorkerError> {
        loop {
            match self.proc_mut()?.next().await? {
                Event::Ready { .. } => {
                    self.entry.set_phase(VmPhase::Serving);
                    return Ok(());
                }
                Event::Exited { exit, .. } => return Err(WorkerError::Ended(exit)),
                Event::Error { message } => return Err(WorkerError::Reported(message)),
                _ => {}
            }
        }
    }

    /// Wait until the VM ends on its own; returns how.
    pub async fn ended(&mut self) -> VmExit {
        loop {
            match self.proc_mut() {
                Ok(p) => match p.next().await {
                    Ok(Event::Exited { exit, .. }) => return exit,
                    Ok(Event::Error { message }) => return VmExit::VmmError(message),
                    Ok(_) => {}
                    Err(_) => return VmExit::VmmError("worker vanished".into()),
                },
                Err(_) => return VmExit::VmmError("worker vanished".into()),
            }
        }
    }

    /// Time the guest has spent in KVM_RUN so far (a round trip to the worker; 0 if it does
    /// not answer within a few milliseconds).
    pub async fn guest_us(&mut self) -> u64 {
        let ask = async {
            let p = self.proc_mut()?;
            p.send(&Cmd::Stats).await?;
            loop {
                match p.next().await? {
                    Event::Stats { guest_us } => return Ok::<u64, WorkerError>(guest_us),
                    Event::Exited { timings, .. } => return Ok(timings.guest_us),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(20), ask)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        let permit = self.permit.take();
        let metrics = self.metrics.clone();
        let (registry, id) = (self.registry.clone(), std::mem::take(&mut self.vm_id));
        self.entry.set_phase(VmPhase::Stopping);
        let after: Box<dyn FnOnce() + Send> = Box::new(move || {
            registry.remove(&id);
            metrics.vm_stopped();
            drop(permit);
        });
        match self.proc.as_mut().and_then(|p| p.child.take()) {
            Some(child) => {
                let vsock = self
                    .proc
                    .as_ref()
                    .map(|p| p.vsock.clone())
                    .unwrap_or_default();
                reap(child, vsock, Some(after));
            }
            None => after(),
        }
    }
}
