//! Worker processes, seen from the summoner: one VM per process (docs/architecture.md,
//! process model).
//!
//! The lifecycle is in the types: [`IdleWorker`] (process started, VM shell built, never ran
//! guest code) -> [`BootingWorker`] (started, waiting for the guest's ready) ->
//! [`ServingWorker`] (ready: its vsock socket reaches the guest) -> dead. The registry shows
//! the phase of the type that holds the VM. Dropping a booting or serving worker kills its
//! process and reaps it off the request path; the admission permit it carries is released
//! only once the process is gone, so "VMs alive" never exceeds the service's limit.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use vmm::worker::protocol::{Command as Cmd, Event, Output};
use vmm::{Timings, VmConfig, VmExit};

use crate::metrics::ServiceMetrics;
use crate::registry::{Registered, Registry, VmPhase};
use dust_jail::process::{Child, Spawn};
use dust_jail::VmJail;

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
    /// The daemon already runs `max_vms` workers.
    #[error("the daemon runs its maximum number of VMs (max_vms)")]
    TooManyVms,
    /// The VM ended (before it was ready, or while it served).
    #[error("{0}")]
    Ended(VmExit),
    /// The worker answered out of turn.
    #[error("unexpected event from the worker: {0:?}")]
    Unexpected(Box<Event>),
    /// A command could not be encoded.
    #[error("encoding a worker command: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What runs once a worker's process is dead and reaped.
type OnReaped = Box<dyn FnOnce() + Send + Sync>;

/// A live worker process and its control channel. Dropping it kills the process.
struct Process {
    /// `None` only while it is being dropped.
    child: Option<Child>,
    ctl: OwnedWriteHalf,
    events: mpsc::UnboundedReceiver<Event>,
    vsock: PathBuf,
    /// Its jail, released once it is reaped.
    jail: Option<VmJail>,
    on_reaped: Option<OnReaped>,
    /// The worker's share of `max_vms`, given back once it is reaped.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The guest's last serial output, once its VM ended.
    output: Option<Output>,
}

impl Process {
    async fn send(&mut self, cmd: &Cmd) -> Result<(), WorkerError> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        self.ctl.write_all(&line).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Event, WorkerError> {
        let ev = self.events.recv().await.ok_or(WorkerError::Vanished)?;
        if let Event::Exited { output, .. } = &ev {
            self.output = Some(output.clone());
        }
        Ok(ev)
    }

    /// The guest's last serial output: what the VM left if it ended, else asked for (a
    /// round trip; empty if the worker does not answer within a few milliseconds).
    async fn output(&mut self) -> Output {
        if let Some(o) = &self.output {
            return o.clone();
        }
        let ask = async {
            self.send(&Cmd::Output).await?;
            loop {
                match self.next().await? {
                    Event::Output { output } | Event::Exited { output, .. } => {
                        return Ok::<Output, WorkerError>(output)
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(50), ask)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

/// A VM that did not become ready: why, and what its guest wrote last.
#[derive(Debug)]
pub struct BootFailed {
    /// Why.
    pub error: WorkerError,
    /// The guest's last serial output.
    pub output: Output,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let (slot, after) = (self.slot.take(), self.on_reaped.take());
            let after: OnReaped = Box::new(move || {
                if let Some(f) = after {
                    f();
                }
                drop(slot);
            });
            let jail = self.jail.take();
            reap(child, std::mem::take(&mut self.vsock), jail, Some(after));
        }
    }
}

/// Kill `child` and wait for it in the background; then remove its socket, run `after`
/// (the VM's admission permit and `max_vms` slot go back as soon as its process is gone)
/// and release its jail (its cgroups and root: off every request's path). The socket goes
/// first: a shutdown that saw every slot free must find no socket of a reaped worker.
fn reap(mut child: Child, vsock: PathBuf, jail: Option<VmJail>, after: Option<OnReaped>) {
    child.kill();
    let vm = vsock
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let release = move || {
        if let Some(j) = jail {
            j.release();
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Ok(status) = child.wait().await {
                    dust_jail::exit::report(&vm, status);
                }
                let _ = std::fs::remove_file(&vsock);
                if let Some(f) = after {
                    f();
                }
                // Removing the VM's cgroups may wait for its last process to go.
                let _ = tokio::task::spawn_blocking(release).await;
            });
        }
        Err(_) => {
            // No runtime (shutdown): the drop kills and waits for it; clean up after.
            drop(child);
            let _ = std::fs::remove_file(&vsock);
            release();
            if let Some(f) = after {
                f();
            }
        }
    }
}

/// Starts worker processes.
#[derive(Debug, Clone)]
pub struct Spawner {
    /// The worker executable: `dust`, or a stand-in that speaks the same protocol (the
    /// summoner's tests use one that needs no /dev/kvm).
    pub exe: PathBuf,
    /// Its arguments (`worker` for `dust`).
    pub args: Vec<OsString>,
    /// Where VM sockets go.
    pub run_dir: PathBuf,
    /// Where serial files go: a VM config's serial file is a name in it
    /// ([`crate::config::serial_in`]).
    pub log_dir: PathBuf,
    /// How workers are jailed (None: not at all; seccomp still applies).
    pub jail: Option<Arc<crate::jail::Jail>>,
    /// The daemon's `max_vms`, shared by all services.
    pub slots: crate::limits::VmSlots,
    /// Fork workers from this zygote (falling back to an exec when it fails); None: exec
    /// each worker.
    pub zygote: Option<Arc<dust_jail::zygote::Zygote>>,
}

/// A worker whose VM shell is built and has never run.
pub struct IdleWorker {
    /// VM id.
    pub vm_id: String,
    /// Build phases.
    pub build: Timings,
    /// A connection to the guest's port opened ahead (restored HTTP shells: the pool's
    /// `CONNECT` waits in the device until the VM runs).
    pub stream: Option<crate::vsock::GuestStream>,
    proc: Process,
}

/// A worker process about to start: its jail (if any) and the paths it sees.
struct Launch {
    vm_id: String,
    jail: Option<VmJail>,
    /// The VM's vsock socket, as the summoner reaches it.
    vsock: PathBuf,
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
        let (config, launch) = self.prepare(vm_id, config, memory_limit_mib, None).await?;
        let cmd = Cmd::Build {
            vm_id: launch.vm_id.clone(),
            config: Box::new(config),
        };
        self.spawn_with(launch, &cmd).await
    }

    /// Start a worker and have it restore the snapshot in `snapshot` as a shell; `boot` is
    /// the VM config the snapshot was taken with, for this VM's id, socket and serial.
    pub async fn restore(
        &self,
        vm_id: String,
        boot: VmConfig,
        snapshot: &Path,
        memory_limit_mib: Option<u32>,
    ) -> Result<IdleWorker, WorkerError> {
        let mount = dust_jail::SnapshotMount {
            dir: snapshot.to_path_buf(),
            writable: false,
            max_file_bytes: 0,
        };
        let (config, launch) = self
            .prepare(vm_id, boot, memory_limit_mib, Some(mount))
            .await?;
        let rc = config.restore_from(match &launch.jail {
            Some(j) if j.own_root() => Path::new(dust_jail::SNAPSHOT),
            _ => snapshot,
        });
        let cmd = Cmd::Restore {
            config: Box::new(rc),
        };
        self.spawn_with(launch, &cmd).await
    }

    /// A template: a worker boots `config` to its guest's ready and saves it into `dir`
    /// (created here), then exits. Returns the worker's answer, and the guest's last serial
    /// output if the worker sent it (a template that failed).
    pub async fn snapshot(
        &self,
        vm_id: String,
        config: VmConfig,
        dir: &Path,
    ) -> Result<(Event, Option<Output>), WorkerError> {
        std::fs::create_dir_all(dir)?;
        let mount = dust_jail::SnapshotMount {
            dir: dir.to_path_buf(),
            writable: true,
            // The memory file is the guest's RAM; the state file is far smaller.
            max_file_bytes: (u64::from(config.memory_mib) << 20) + (16 << 20),
        };
        let (config, launch) = self.prepare(vm_id, config, None, Some(mount)).await?;
        let out = match &launch.jail {
            Some(j) if j.own_root() => dust_jail::SNAPSHOT.into(),
            _ => dir.to_path_buf(),
        };
        let cmd = Cmd::Snapshot {
            config: Box::new(config),
            dir: out,
        };
        let mut proc = self.start_process(launch)?;
        proc.send(&cmd).await?;
        let mut output = None;
        loop {
            match proc.next().await? {
                Event::Output { output: o } => output = Some(o),
                answer => return Ok((answer, output)),
            }
        }
    }

    /// Make the VM's jail (per-VM root, cgroups) and rewrite `config` to the paths the
    /// worker sees inside it. Off the runtime threads: mkdir, chown and cgroup writes.
    async fn prepare(
        &self,
        vm_id: String,
        config: VmConfig,
        memory_limit_mib: Option<u32>,
        snapshot: Option<dust_jail::SnapshotMount>,
    ) -> Result<(VmConfig, Launch), WorkerError> {
        let mut config = config;
        if let vmm::SerialConfig::File(p) = &config.serial {
            let path = crate::config::serial_in(&self.log_dir, p, false).map_err(|problem| {
                WorkerError::Reported(format!("serial file {}: {problem}", p.display()))
            })?;
            config.serial = vmm::SerialConfig::File(path);
        }
        let Some(j) = &self.jail else {
            let vsock = config
                .vsock
                .as_ref()
                .map(|v| v.uds.clone())
                .unwrap_or_default();
            let launch = Launch {
                vm_id,
                jail: None,
                vsock,
            };
            return Ok((config, launch));
        };
        let (j, id) = (j.clone(), vm_id.clone());
        let (config, jail, vsock) = tokio::task::spawn_blocking(move || {
            crate::jail::prepare(&j, &id, config, memory_limit_mib, snapshot)
        })
        .await
        .map_err(|e| WorkerError::Reported(e.to_string()))??;
        let launch = Launch {
            vm_id,
            jail: Some(jail),
            vsock,
        };
        Ok((config, launch))
    }

    async fn spawn_with(&self, launch: Launch, cmd: &Cmd) -> Result<IdleWorker, WorkerError> {
        let vm_id = launch.vm_id.clone();
        let mut proc = self.start_process(launch)?;
        proc.send(cmd).await?;
        let answer = proc.next().await;
        // The build is over: the zygote's next spare is forked now, not during it, its
        // VM's RAM made ahead at this VM's size (a restore maps its own).
        if let Some(z) = &self.zygote {
            let mib = match cmd {
                Cmd::Build { config, .. } | Cmd::Snapshot { config, .. } => Some(config.memory_mib),
                _ => None,
            };
            z.refill(mib);
        }
        match answer? {
            Event::Built { timings } => Ok(IdleWorker {
                vm_id,
                build: timings,
                stream: None,
                proc,
            }),
            Event::Error { message } => Err(WorkerError::Reported(message)),
            other => Err(WorkerError::Unexpected(Box::new(other))),
        }
    }

    fn start_process(&self, launch: Launch) -> Result<Process, WorkerError> {
        let slot = self.slots.try_take().ok_or(WorkerError::TooManyVms)?;
        let (ours, theirs) = StdUnixStream::pair()?;
        let spec = launch.jail.as_ref().map(VmJail::spec);
        let json = match spec {
            Some(spec) => Some(
                serde_json::to_string(spec).map_err(|e| WorkerError::Reported(e.to_string()))?,
            ),
            None => None,
        };
        let spawn = Spawn {
            exe: &self.exe,
            args: &self.args,
            env: json.map(|j| (dust_jail::ENV, j)),
            control: theirs.as_raw_fd(),
            namespaces: spec.is_some_and(|s| s.namespaces),
        };
        // Its stderr is forwarded to the log (a jailed worker may not write files:
        // RLIMIT_FSIZE 0).
        let forked = self.zygote.as_ref().and_then(|z| {
            z.spawn(spec, theirs.as_raw_fd())
                .inspect_err(|e| tracing::warn!("zygote: {e}; starting the worker by exec"))
                .ok()
        });
        let started = match forked {
            Some(f) => Ok(f),
            None => Child::spawn(&spawn),
        };
        // A worker that did not start: its jail (`launch`) is released when dropped.
        let (child, stderr) = started.map_err(|source| WorkerError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        drop(theirs);
        dust_jail::exit::forward_stderr(launch.vm_id.clone(), stderr);
        ours.set_nonblocking(true)?;
        let (rd, ctl) = UnixStream::from_std(ours)?.into_split();
        Ok(Process {
            child: Some(child),
            ctl,
            events: read_events(rd),
            vsock: launch.vsock,
            jail: launch.jail,
            on_reaped: None,
            slot: Some(slot),
            output: None,
        })
    }
}

/// The events a worker writes on its control socket (one JSON object a line), read by a
/// task until the socket closes or nobody listens.
fn read_events(rd: OwnedReadHalf) -> mpsc::UnboundedReceiver<Event> {
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
    events
}

impl IdleWorker {
    /// The VM's vsock socket.
    pub fn vsock(&self) -> &Path {
        &self.proc.vsock
    }

    /// Run the VM. `permit` (the admission slot) and `metrics`' running count travel with
    /// it until the process is dead.
    pub async fn start(
        mut self,
        permit: Option<OwnedSemaphorePermit>,
        metrics: Arc<ServiceMetrics>,
        registry: &Arc<Registry>,
        service: &str,
    ) -> Result<BootingWorker, WorkerError> {
        metrics.vm_started();
        let pid = self.proc.child.as_ref().map_or(0, Child::id);
        let entry = Registered::new(registry, &self.vm_id, service, pid);
        let (registry, id) = (registry.clone(), self.vm_id.clone());
        // Last out of the registry, so that a VM it no longer lists has given back its slot.
        self.proc.on_reaped = Some(Box::new(move || {
            metrics.vm_stopped();
            drop(permit);
            registry.remove(&id);
        }));
        let mut booting = BootingWorker {
            entry,
            vm_id: self.vm_id,
            proc: self.proc,
        };
        booting.proc.send(&Cmd::Start).await?;
        Ok(booting)
    }
}

/// A worker whose VM runs and whose guest is not ready yet. Dropping it kills the VM.
pub struct BootingWorker {
    // Fields drop in order: the registry shows "stopping" before the kill.
    entry: Registered,
    /// VM id.
    pub vm_id: String,
    proc: Process,
}

impl BootingWorker {
    /// The VM's vsock socket (it exists before the guest is ready).
    pub fn vsock(&self) -> &Path {
        &self.proc.vsock
    }

    /// Set once an operator kills the VM.
    pub fn kill_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.entry.kill_flag()
    }

    /// Wait for the guest's "ready".
    pub async fn ready(mut self) -> Result<ServingWorker, BootFailed> {
        let error = loop {
            match self.proc.next().await {
                Ok(Event::Ready { .. }) => {
                    self.entry.set_phase(VmPhase::Serving);
                    return Ok(ServingWorker {
                        _entry: self.entry,
                        vm_id: self.vm_id,
                        proc: self.proc,
                    });
                }
                Ok(Event::Exited { exit, .. }) => break WorkerError::Ended(exit),
                Ok(Event::Error { message }) => break WorkerError::Reported(message),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        let output = self.proc.output.take().unwrap_or_default();
        Err(BootFailed { error, output })
    }
}

/// A worker whose guest is ready: its vsock socket reaches the guest. Dropping it kills the
/// VM.
pub struct ServingWorker {
    // Held for its drop, which marks the VM stopping before the kill.
    _entry: Registered,
    /// VM id.
    pub vm_id: String,
    proc: Process,
}

impl ServingWorker {
    /// Whether an operator killed the VM.
    pub fn killed(&self) -> bool {
        self._entry
            .kill_flag()
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The VM's vsock socket.
    pub fn vsock(&self) -> &Path {
        &self.proc.vsock
    }

    /// The guest's last serial output (what it left when it ended, or what it wrote so far).
    pub async fn output(&mut self) -> Output {
        self.proc.output().await
    }

    /// Wait until the VM ends on its own; returns how.
    pub async fn ended(&mut self) -> VmExit {
        loop {
            match self.proc.next().await {
                Ok(Event::Exited { exit, .. }) => return exit,
                Ok(Event::Error { message }) => return VmExit::VmmError(message),
                Ok(_) => {}
                Err(_) => return VmExit::VmmError("worker vanished".into()),
            }
        }
    }

    /// Time the guest has spent in KVM_RUN so far (a round trip to the worker; 0 if it does
    /// not answer within a few milliseconds).
    pub async fn guest_us(&mut self) -> u64 {
        let p = &mut self.proc;
        let ask = async {
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
