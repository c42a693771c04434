//! The pool of idle workers of one service: VM shells built ahead of time (process started,
//! /dev/kvm open, VM and vCPU created, image loaded, registers set) so that a request only
//! has to run the vCPU. Refilled in the background, off the request path. Every request
//! still gets a VM no one used before: a shell is used once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::ServiceConfig;
use crate::metrics::ServiceMetrics;
use crate::template::Template;
use crate::worker::{IdleWorker, Spawner, WorkerError};

/// How many shells a pool builds at once while it is short. Two: a build is mostly one
/// process's serial work (fork, jail, KVM set-up), and one slow build (the host busy, the
/// previous VM still being torn down) no longer leaves the next request without a shell.
pub const PARALLEL_BUILDS: usize = 2;

/// Idle shells of one service.
pub struct Pool {
    config: Arc<ServiceConfig>,
    spawner: Spawner,
    metrics: Arc<ServiceMetrics>,
    idle: Mutex<VecDeque<IdleWorker>>,
    refill: Notify,
    closed: AtomicBool,
    id_prefix: String,
    /// Snapshot mode: shells are restored from this instead of booted.
    template: Option<Arc<Template>>,
    /// Why the last background build failed, until one succeeds (health reads it).
    failure: Mutex<Option<String>>,
}

impl Pool {
    /// An empty pool; call [`Pool::run`] to fill it.
    pub fn new(
        config: Arc<ServiceConfig>,
        spawner: Spawner,
        metrics: Arc<ServiceMetrics>,
        template: Option<Arc<Template>>,
    ) -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id_prefix: format!(
                "{}-{:x}{:x}",
                config.name,
                epoch & 0xffff_ffff,
                std::process::id()
            ),
            config,
            spawner,
            metrics,
            template,
            idle: Mutex::new(VecDeque::new()),
            refill: Notify::new(),
            closed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    fn new_id(&self) -> String {
        // One counter for the whole process: a service replaced within the same second must
        // not hand out the ids of VMs its predecessor still has alive.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<IdleWorker>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawn a worker and build a shell now.
    pub async fn spawn(&self) -> Result<IdleWorker, WorkerError> {
        let id = self.new_id();
        let run_dir = &self.spawner.run_dir;
        let limit = self.config.memory_limit_mib;
        let boot = self.config.vm_config(&id, run_dir);
        let t = std::time::Instant::now();
        let mut shell = match &self.template {
            Some(t) => self.spawner.restore(id, boot, t.dir(), limit).await,
            None => self.spawner.spawn_limited(id, boot, limit).await,
        }?;
        if self.template.is_some() && self.config.mode == crate::config::Mode::Http {
            // The restored guest is past ready: its connection can wait in the device, so
            // that a request finds it accepted as soon as the VM runs. Should this fail,
            // the request opens its own.
            let port = self.config.guest_port;
            shell.stream = crate::vsock::open(shell.vsock(), port).await.ok();
        }
        self.metrics
            .shell_built(self.template.is_some(), t.elapsed());
        Ok(shell)
    }

    /// An idle shell if one is ready (warm), else a freshly built one (cold).
    pub async fn take(&self) -> Result<(IdleWorker, bool), WorkerError> {
        let warm = {
            let mut idle = self.idle();
            let w = idle.pop_front();
            self.metrics.set_idle(idle.len());
            w
        };
        self.refill.notify_one();
        match warm {
            Some(w) => Ok((w, true)),
            None => {
                self.metrics.pool_wait();
                Ok((self.spawn().await?, false))
            }
        }
    }

    /// Keep `pool_size` shells ready until [`Pool::close`]: up to [`PARALLEL_BUILDS`] of them
    /// built at once, a new build started as soon as a shell is taken, so that a take
    /// right after a slow build (a busy host, the previous VM's teardown) still finds one.
    pub async fn run(self: Arc<Self>) {
        let mut builds = tokio::task::JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        while !self.closed.load(Ordering::SeqCst) {
            let short = self.config.pool_size > self.idle().len() + builds.len();
            if short && builds.len() < PARALLEL_BUILDS {
                let pool = self.clone();
                builds.spawn(async move { pool.spawn().await });
                continue;
            }
            tokio::select! {
                () = self.refill.notified() => {}
                Some(built) = builds.join_next(), if !builds.is_empty() => {
                    let Ok(built) = built else { continue };
                    if let Some(wait) = self.built(built, &mut backoff) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        // Builds still running end here; their workers are killed and reaped.
        builds.shutdown().await;
        self.drain();
    }

    /// A background build ended: its shell joins the pool; or, if it failed, how long to
    /// wait before the next.
    fn built(
        &self,
        built: Result<IdleWorker, WorkerError>,
        backoff: &mut Duration,
    ) -> Option<Duration> {
        let wait = *backoff;
        match built {
            Ok(w) => {
                *backoff = Duration::from_millis(100);
                self.set_failure(None);
                if !self.closed.load(Ordering::SeqCst) {
                    let mut idle = self.idle();
                    idle.push_back(w);
                    self.metrics.set_idle(idle.len());
                }
                return None;
            }
            Err(WorkerError::TooManyVms) => {
                tracing::debug!(service = %self.config.name, "pool refill waits: max_vms reached");
            }
            Err(e) => {
                tracing::warn!(service = %self.config.name, "cannot pre-build a VM: {e}");
                self.set_failure(Some(self.cause(&e)));
            }
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        Some(wait)
    }

    /// Stop refilling and kill the idle workers.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.refill.notify_one();
        self.drain();
    }

    fn drain(&self) {
        let drained: Vec<_> = self.idle().drain(..).collect();
        self.metrics.set_idle(0);
        drop(drained);
    }

    /// Whether shells are restored from a snapshot.
    pub fn snapshot_mode(&self) -> bool {
        self.template.is_some()
    }

    /// Why a shell could not be built, as an operator needs it: a worker that died early
    /// often died of a file the service needs being gone, which the worker cannot say.
    fn cause(&self, e: &WorkerError) -> String {
        let missing = match &self.template {
            Some(t) if !t.dir().join(vmm::snapshot::STATE_FILE).exists() => {
                Some("its snapshot template")
            }
            None if !self.config.image_path().is_file() => Some("its image file"),
            _ => None,
        };
        match missing {
            Some(what) => format!("{what} is missing ({e})"),
            None => e.to_string(),
        }
    }

    fn set_failure(&self, why: Option<String>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why the pool cannot build shells, if its last attempt failed: the image is gone, the
    /// snapshot cannot be restored, workers cannot start. `None` while filled or filling.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Shells ready now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }
}
