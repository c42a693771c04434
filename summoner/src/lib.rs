//! The summoner: dust's front proxy. For every request (HTTP mode) or connection (TCP mode)
//! it holds the client while it summons a fresh microVM, forwards into it over vsock,
//! streams the answer back, and dissolves the VM when the request is done.
//!
//! - [`config`]: services as plain serde data.
//! - [`worker`]: worker processes (one VM each) and their typed lifecycle.
//! - [`pool`]: pre-built idle VM shells per service.
//! - [`admission`]: concurrency limit, bounded queue, deadlines.
//! - [`summon`], [`http`], [`tcp`]: the per-request path.
//! - [`metrics`]: counters and phase histograms.
//! - [`health`]: `/healthz` for load balancers, and the drain flag.
//! - [`listen`]: sockets inherited through systemd socket activation, or bound.

pub mod admission;
pub mod component;
pub mod config;
pub mod conn;
pub mod diagnose;
#[cfg(feature = "fake-worker")]
pub mod fake_worker;
pub mod health;
pub mod http;
pub mod jail;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod pool;
pub mod progress;
mod refuse;
pub mod registry;
pub mod rundir;
pub mod service;
pub mod state;
pub mod summon;
pub mod tcp;
pub mod template;
pub mod vsock;
pub mod wasm;
pub mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::Workload;
pub use config::{default_log_dir, FileConfig, Mode, ServiceConfig};
pub use service::{Service, StartError};

/// Why a service could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// A service of that name exists.
    #[error("a service named {0:?} already exists")]
    Duplicate(String),
    /// It could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Counters of one service, read exactly (the API shows them as a service's `stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStats {
    /// VMs alive now.
    pub running: usize,
    /// Most VMs alive at once since the service started.
    pub max_running: usize,
    /// Pre-built idle VM shells ready.
    pub idle: usize,
    /// Requests waiting for admission.
    pub waiting: usize,
    /// Client connections open now.
    #[serde(default)]
    pub connections: usize,
}

/// `DUST_NO_ZYGOTE` set: exec every worker (for comparison; docs/benchmarks.md).
pub fn no_zygote() -> bool {
    std::env::var_os("DUST_NO_ZYGOTE").is_some()
}

/// The most bytes of a Unix socket path, with its NUL (`sun_path`).
const SUN_PATH_MAX: usize = 108;

/// All services of one dust daemon.
pub struct Summoner {
    spawner: worker::Spawner,
    /// The run dir's lock ([`rundir`]), held for the daemon's life.
    _run_lock: Option<std::fs::File>,
    metrics: Arc<metrics::Metrics>,
    services: Mutex<BTreeMap<String, Service>>,
    registry: Arc<registry::Registry>,
    drain: health::Drain,
    budget: limits::Budget,
    nofile: u64,
    /// Where compiled wasm images are cached.
    aot_cache: PathBuf,
    state: Option<Arc<state::State>>,
    templates: Option<template::TemplateCache>,
}

/// The default directory for per-VM sockets: /run/dust as root, else
/// $XDG_RUNTIME_DIR/dust, else /tmp/dust-<uid>.
pub fn default_run_dir() -> PathBuf {
    vmm::runtime_dir()
}

impl Summoner {
    /// A summoner whose workers run `exe worker` and keep sockets in `run_dir` (created,
    /// mode 0700).
    pub fn new(exe: PathBuf, run_dir: PathBuf) -> std::io::Result<Self> {
        Self::with_worker(
            exe,
            vec!["worker".into()],
            run_dir,
            jail::JailConfig::default(),
        )
    }

    /// [`Summoner::new`] with workers jailed as `jail` says (docs/security.md).
    pub fn with_jail(
        exe: PathBuf,
        run_dir: PathBuf,
        jail: jail::JailConfig,
    ) -> std::io::Result<Self> {
        Self::with_worker(exe, vec!["worker".into()], run_dir, jail)
    }

    /// A summoner whose workers run `exe args...` (any program that speaks
    /// [`vmm::worker::protocol`] on fd 3; tests use a stand-in that needs no /dev/kvm),
    /// jailed as `jail` says (docs/security.md).
    pub fn with_worker(
        exe: PathBuf,
        args: Vec<std::ffi::OsString>,
        run_dir: PathBuf,
        jail: jail::JailConfig,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&run_dir)?;
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))?;
        let run_lock = rundir::claim(&run_dir)?;
        match &run_lock {
            Some(_) => {
                let n = rundir::sweep(&run_dir);
                if n > 0 {
                    tracing::info!("removed {n} leftovers of a dead daemon from the run dir");
                }
            }
            None => tracing::warn!(
                "another daemon holds the run dir {}: not sweeping it",
                run_dir.display()
            ),
        }
        let jail = jail
            .enabled
            .then(|| Arc::new(jail::Jail::new(jail, &run_dir)));
        if let (Some(j), Some(_)) = (&jail, &run_lock) {
            j.reclaim();
        }
        // `dust worker` forks workers as a zygote; stand-ins may not.
        let zygote = (args.len() == 1 && args[0] == "worker" && !no_zygote())
            .then(|| Arc::new(dust_jail::zygote::Zygote::new(exe.clone())));
        let nofile = limits::raise_nofile()?;
        let max_vms = limits::default_max_vms();
        Ok(Self {
            budget: limits::Budget::new(limits::client_budget(nofile, max_vms)),
            spawner: worker::Spawner {
                jail,
                exe,
                args,
                run_dir: run_dir.clone(),
                log_dir: default_log_dir(),
                slots: limits::VmSlots::new(max_vms),
                zygote,
            },
            nofile,
            aot_cache: run_dir.parent().unwrap_or(&run_dir).join("aot-cache"),
            _run_lock: run_lock,
            metrics: Arc::new(metrics::Metrics::default()),
            services: Mutex::new(BTreeMap::new()),
            registry: Arc::default(),
            drain: health::Drain::default(),
            state: None,
            templates: None,
        })
    }

    /// Cap the worker processes of all services together at `max_vms` (default: as many
    /// default-sized VMs as the host's memory holds). Call before adding services.
    pub fn with_max_vms(mut self, max_vms: usize) -> Self {
        self.spawner.slots = limits::VmSlots::new(max_vms.max(1));
        self.budget = limits::Budget::new(limits::client_budget(self.nofile, max_vms));
        self
    }

    /// Write services' serial files into `log_dir` (default: [`default_log_dir`]), created
    /// (mode 0700) when a service first needs it. Call before adding services.
    pub fn with_log_dir(mut self, log_dir: PathBuf) -> Self {
        self.spawner.log_dir = log_dir;
        self
    }

    /// Cache compiled wasm images (engine `aot`) in `dir` (default: `aot-cache` beside the
    /// run dir), made when first needed. Call before adding services.
    pub fn with_aot_cache(mut self, dir: PathBuf) -> Self {
        self.aot_cache = dir;
        self
    }

    /// Resolves a WebAssembly service's guest image once: compiles its module when its
    /// engine is `aot` (or takes the image from the cache), on a blocking thread (other
    /// services' changes do not wait for it), else locates the built-in guest that
    /// interprets it.
    async fn compile(
        &self,
        mut config: ServiceConfig,
        progress: &dyn progress::Progress,
    ) -> Result<(ServiceConfig, Option<progress::Step>), StartError> {
        let Workload::Wasm(w) = &mut config.workload else {
            return Ok((config, None));
        };
        if w.compiled.is_some() || w.interpreter.is_some() {
            return Ok((config, None));
        }
        if !w.compiles() {
            // Interpreted: its guest is located now, once, not on every spawn.
            w.interpreter = wasm::find_guest_for(&w.module);
            return Ok((config, None));
        }
        let name = config.name.clone();
        let file = w.module.file_name().unwrap_or_default().to_string_lossy();
        progress.begin(&name, &format!("compiling {file} (wasm2c, clang, lld)"));
        let t = std::time::Instant::now();
        let module = std::fs::read(&w.module).map_err(|e| {
            StartError::Config(config::ServiceConfigError::Wasm {
                name: name.clone(),
                path: w.module.display().to_string(),
                source: wasm::WasmError::Read(e.to_string()),
            })
        })?;
        let opts = wasm::aot::AotOptions::new(self.aot_cache.clone());
        let span = tracing::info_span!("service", name = %name);
        let built = tokio::task::spawn_blocking(move || {
            span.in_scope(|| wasm::aot::build_image(&module, &opts))
        })
        .await
        .map_err(|e| wasm::aot::AotError::Io {
            what: "the compile thread".into(),
            source: std::io::Error::other(e.to_string()),
        })
        .and_then(|r| r)
        .map_err(|source| StartError::Compile { name, source })?;
        let step = progress::step("compile", progress::compiled(&built), t.elapsed());
        w.compiled = Some(built.path);
        Ok((config, Some(step)))
    }

    /// Keep the control API's services and artifacts in `state` (docs/deploy.md).
    pub fn with_state(mut self, state: Arc<state::State>) -> Self {
        self.state = Some(state);
        self
    }

    /// Keep snapshot templates in `cache` across restarts (docs/snapshots.md).
    pub fn with_template_cache(mut self, cache: template::TemplateCache) -> Self {
        self.templates = Some(cache);
        self
    }

    /// Remove the cached templates no service of this daemon uses; how many went.
    pub fn prune_templates(&self) -> usize {
        self.templates.as_ref().map_or(0, |c| c.prune())
    }

    /// The state directory, if this daemon keeps one.
    pub fn state(&self) -> Option<&Arc<state::State>> {
        self.state.as_ref()
    }

    /// Where services' serial files go.
    pub fn log_dir(&self) -> &std::path::Path {
        &self.spawner.log_dir
    }

    /// Everything [`Summoner::add`] checks before it starts anything: the config
    /// ([`ServiceConfig::validate`]) and that its serial file, if any, is in the log
    /// directory (the daemon writes it with its own rights, so a client of the control API
    /// must not choose any path).
    pub fn check(&self, config: &ServiceConfig) -> Result<(), config::ServiceConfigError> {
        if let Some(path) = config.serial_path(self.log_dir())? {
            // Up front too, without creating anything: a live replacement through the API
            // removes the old service before it adds the new one.
            let problem = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => Some("is a symbolic link"),
                Ok(m) if !m.is_file() => Some("is not a regular file"),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(self.serial_error(config, problem.to_string()));
            }
        }
        self.check_socket_path(config)?;
        config.validate()
    }

    /// A VM's vsock socket path must fit in a Unix socket address: the run dir and the
    /// service name make its length.
    fn check_socket_path(&self, config: &ServiceConfig) -> Result<(), config::ServiceConfigError> {
        // The longest VM id of this service: name, epoch and pid in hex, a counter.
        let vm = format!("{}-{:x}{:x}-{}", config.name, u32::MAX, 0x40_0000, u32::MAX);
        let path = self
            .spawner
            .jail
            .as_ref()
            .and_then(|j| j.vsock_path(&vm))
            .unwrap_or_else(|| config::vsock_path(&self.spawner.run_dir, &vm));
        let len = path.as_os_str().len();
        match len < SUN_PATH_MAX {
            true => Ok(()),
            false => Err(config::ServiceConfigError::SocketPath {
                name: config.name.clone(),
                len,
            }),
        }
    }

    fn serial_error(&self, config: &ServiceConfig, problem: String) -> config::ServiceConfigError {
        config::ServiceConfigError::SerialFile {
            name: config.name.clone(),
            problem,
            dir: self.log_dir().display().to_string(),
        }
    }

    /// Create the service's serial file now, so that a symlink or a directory in its place
    /// is refused when the service is added rather than on each VM.
    fn create_serial_file(&self, config: &ServiceConfig) -> Result<(), StartError> {
        let Some(path) = config.serial_path(self.log_dir())? else {
            return Ok(());
        };
        let made = (|| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.log_dir())?;
            config::open_serial_file(&path).map(drop)
        })();
        made.map_err(|e| StartError::Config(self.serial_error(config, e.to_string())))
    }

    fn services(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Service>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a new service; returns its bound address. In snapshot mode the template VM is
    /// booted and saved first; if it fails, nothing is left behind.
    pub async fn add(&self, config: ServiceConfig) -> Result<SocketAddr, AddError> {
        self.add_with(config, &progress::Quiet).await
    }

    /// [`Summoner::add`], telling `progress` each step of the creation as it goes (the
    /// steps are logged, and kept: [`Summoner::creation`]).
    pub async fn add_with(
        &self,
        config: ServiceConfig,
        progress: &dyn progress::Progress,
    ) -> Result<SocketAddr, AddError> {
        if self.services().contains_key(&config.name) {
            return Err(AddError::Duplicate(config.name));
        }
        self.check(&config).map_err(StartError::from)?;
        let (config, compiled) = self.compile(config, progress).await?;
        let name = config.name.clone();
        let mut steps = Vec::new();
        if let Some(s) = compiled {
            progress::finished(progress, &name, s, &mut steps);
        }
        self.check(&config).map_err(StartError::from)?;
        self.create_serial_file(&config)?;
        let template = match config.snapshot {
            true => Some(Arc::new(
                self.template(&config, progress, &mut steps).await?,
            )),
            false => None,
        };
        let mut services = self.services();
        if services.contains_key(&name) {
            return Err(AddError::Duplicate(name));
        }
        let mut svc = Service::start(
            config,
            self.spawner.clone(),
            &self.metrics,
            self.registry.clone(),
            template,
            self.budget.clone(),
        )?;
        svc.creation = steps;
        let addr = svc.local_addr();
        services.insert(name, svc);
        Ok(addr)
    }

    /// `config`'s snapshot template: booted, warmed up and saved (or from the cache).
    async fn template(
        &self,
        config: &ServiceConfig,
        progress: &dyn progress::Progress,
        steps: &mut Vec<progress::Step>,
    ) -> Result<template::Template, StartError> {
        progress.begin(&config.name, "booting the template VM, warm-up, snapshot");
        let t = std::time::Instant::now();
        let taken = template::Template::take(&self.spawner, config, self.templates.as_ref())
            .await
            .map_err(|source| StartError::Template {
                name: config.name.clone(),
                source,
            })?;
        let detail = progress::template(&taken.info);
        let s = progress::step("template", detail, t.elapsed());
        progress::finished(progress, &config.name, s, steps);
        Ok(taken)
    }

    /// The steps the creation of service `name` took (empty for an unknown service).
    pub fn creation(&self, name: &str) -> Vec<progress::Step> {
        self.services()
            .get(name)
            .map(|s| s.creation.clone())
            .unwrap_or_default()
    }

    /// Stop and remove a service; false if there was none of that name.
    pub async fn remove(&self, name: &str, grace: Duration) -> bool {
        let svc = self.services().remove(name);
        match svc {
            Some(svc) => {
                let metrics = svc.inner().metrics.clone();
                svc.stop(grace).await;
                metrics.retire();
                true
            }
            None => false,
        }
    }

    /// Drop the metric series of a removed service (not after a replacement, whose
    /// counters go on under the same name).
    pub fn forget_metrics(&self, name: &str) {
        if !self.services().contains_key(name) {
            self.metrics.forget(name);
        }
    }

    /// Configs and bound addresses of all services.
    pub fn list(&self) -> Vec<(ServiceConfig, SocketAddr)> {
        self.services()
            .values()
            .map(|s| (s.config().clone(), s.local_addr()))
            .collect()
    }

    /// Exact counters of one service.
    pub fn stats(&self, name: &str) -> Option<ServiceStats> {
        self.services().get(name).map(|s| {
            let i = s.inner();
            ServiceStats {
                running: i.metrics.running(),
                max_running: i.metrics.max_running(),
                idle: i.pool.idle_count(),
                waiting: i.admission.waiting(),
                connections: i.open_connections(),
            }
        })
    }

    /// Live VMs (started, not yet reaped).
    pub fn vms(&self) -> Vec<registry::VmInfo> {
        self.registry.list()
    }

    /// One live VM.
    pub fn vm(&self, id: &str) -> Option<registry::VmInfo> {
        self.registry.get(id)
    }

    /// Kill a VM (its client gets 502); false if there is no such VM.
    pub fn kill_vm(&self, id: &str) -> bool {
        self.registry.kill(id)
    }

    /// What the worker jail cannot apply in this process (e.g. not root), for the log.
    pub fn jail_missing(&self) -> Vec<String> {
        match &self.spawner.jail {
            Some(j) => j.missing.clone(),
            None => vec!["the whole jail ([jail] enabled = false); seccomp still applies".into()],
        }
    }

    /// The metrics exposition in `format` (see [`metrics::Format::negotiate`]).
    pub fn metrics_text(&self, format: metrics::Format) -> String {
        self.metrics.render(format)
    }

    /// Stop every service within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let all: Vec<Service> = std::mem::take(&mut *self.services())
            .into_values()
            .collect();
        for s in all {
            s.stop(grace).await;
        }
        // Every worker reaped and its vsock socket removed before the daemon exits (the
        // reaper tasks would otherwise die with the runtime and leave the sockets behind).
        let reaped = self.spawner.slots.all_free();
        if tokio::time::timeout(Duration::from_secs(5), reaped)
            .await
            .is_err()
        {
            tracing::warn!("some workers were not reaped within 5 s of the shutdown");
        }
        // Workers reaped in the background leave their jail directories and cgroups
        // behind until they are gone; wait for that, briefly.
        if let Some(j) = &self.spawner.jail {
            j.released(Duration::from_secs(5)).await;
        }
        if let Some(z) = &self.spawner.zygote {
            z.stop();
        }
        if let Some(j) = &self.spawner.jail {
            j.finish();
        }
    }
}
