//! `dust serve`: the daemon. With no arguments it serves the built-in `hello` demo service
//! (the `http-hello` guest, HTTP mode) on 127.0.0.1:8080.
//!
//! Start-up is a sequence of steps, each of which either succeeds or stops the start with
//! a message ([`Start`]): read the settings (flags over the file), prepare the process
//! (sockets systemd passed, the daemon's seccomp filter), then in the runtime create the
//! summoner, add the services, open the API and health endpoints, and wait for a signal.

mod api;
pub mod balancer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use dust_abi::status;
use summoner::config::{ApiConfig, DaemonConfig, Workload};
use summoner::{FileConfig, Mode, Summoner};

use super::service::{ServiceFlags, WasmFlags};

/// Flags of `dust serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with the daemon's settings, [jail], [api] and [[service]] tables (see
    /// dist/dust.toml); the flags below win over its keys.
    #[arg(long, conflicts_with_all = ["image", "wasm"])]
    pub config: Option<PathBuf>,
    /// Serve one service from this guest image instead of a config file.
    #[arg(long, conflicts_with = "wasm")]
    pub image: Option<PathBuf>,
    /// Serve one WebAssembly handler instead (not with --config or --image).
    #[command(flatten)]
    pub wasm: WasmFlags,
    /// Service name (with --image or --wasm).
    #[arg(long, default_value = "hello")]
    pub name: String,
    /// Listen address, ip:port (with --image, or for the built-in demo).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = summoner::config::listen_addr::parse)]
    pub listen: SocketAddr,
    /// The service's settings (with --image).
    #[command(flatten)]
    pub service: ServiceFlags,
    /// The daemon's settings (each also a top-level key of the config file).
    #[command(flatten)]
    pub daemon: DaemonConfig,
    /// Where the control API listens (each also a key of the file's [api]).
    #[command(flatten)]
    pub api: ApiConfig,
    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = summoner::config::service_duration::parse)]
    pub grace: Duration,
}

/// Where the built-in demo's guest image is looked for: $DUST_GUEST_DIR, the checkout this
/// binary was built in, then /usr/lib/dust/guests.
pub fn find_guest(name: &str) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DUST_GUEST_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/target/x86_64-unknown-none/release"),
    );
    dirs.push(PathBuf::from("/usr/lib/dust/guests"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A step of the start that failed: the message to print. Every exit is 243 (VMM error).
struct Stop(String);

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop(e.to_string())
    }
}

/// What the daemon runs with: flags over the config file, checked.
struct Settings {
    daemon: DaemonConfig,
    jail: summoner::jail::JailConfig,
    api: api::ApiPlace,
    services: Vec<summoner::ServiceConfig>,
    log_dir: PathBuf,
    run_dir: PathBuf,
    state: Arc<summoner::state::State>,
    state_dir: PathBuf,
}

impl ServeArgs {
    /// The config file, or the one service the flags describe.
    fn file(&self) -> Result<FileConfig, String> {
        if let Some(path) = &self.config {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let file = FileConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if file.services.is_empty() {
                return Err(format!("{}: no [[service]] defined", path.display()));
            }
            return Ok(file);
        }
        let workload = match (&self.image, &self.wasm.wasm) {
            (Some(i), _) => Workload::Image(i.clone()),
            (None, Some(m)) => self.wasm.workload(m.clone()),
            (None, None) => Workload::Image(find_guest("http-hello").ok_or(
                "the built-in hello service needs the http-hello guest: run scripts/build-guests \
                 (or set DUST_GUEST_DIR)",
            )?),
        };
        let mut file = FileConfig::default();
        file.services
            .push(self.service.config(&self.name, self.listen, workload));
        Ok(file)
    }

    fn settings(&self) -> Result<Settings, Stop> {
        let file = self.file()?;
        file.jail.validate()?;
        let daemon = self.daemon.over(&file.daemon);
        let log_dir = daemon
            .log_dir
            .clone()
            .unwrap_or_else(summoner::default_log_dir);
        if !log_dir.is_absolute() {
            let d = log_dir.display();
            return Err(Stop(format!("log_dir {d}: use an absolute path")));
        }
        let api = api::ApiPlace::resolve(&self.api.over(&file.api))
            .map_err(|e| Stop(format!("control API: {e}")))?;
        let run_dir = daemon
            .run_dir
            .clone()
            .unwrap_or_else(summoner::default_run_dir);
        let state_dir = daemon
            .state_dir
            .clone()
            .unwrap_or_else(summoner::state::default_state_dir);
        let state = super::restore::open(&state_dir, self.config.as_deref(), &file.services)?;
        Ok(Settings {
            daemon,
            jail: file.jail,
            api,
            services: file.services,
            log_dir,
            run_dir,
            state,
            state_dir,
        })
    }
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn serve(args: ServeArgs) -> ExitCode {
    match start(args) {
        Ok(code) => code,
        Err(Stop(message)) => {
            eprintln!("dust: {message}");
            ExitCode::from(status::VMM_ERROR)
        }
    }
}

fn start(args: ServeArgs) -> Result<ExitCode, Stop> {
    let settings = args.settings()?;
    // Before the runtime starts threads: this edits the environment.
    balancer::adopt_sockets()?;
    // Before the runtime starts a thread, so that all of them inherit it (security.md).
    dust_jail::seccomp::apply_daemon()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Stop(format!("starting the runtime: {e}")))?;
    rt.block_on(async move {
        let summoner = summoner_for(&settings)?;
        match run(&summoner, settings, args.grace).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(stop) => {
                summoner.shutdown(Duration::ZERO).await;
                Err(stop)
            }
        }
    })
}

fn summoner_for(s: &Settings) -> Result<Arc<Summoner>, Stop> {
    let exe =
        std::env::current_exe().map_err(|e| Stop(format!("cannot find my own executable: {e}")))?;
    let summoner = Summoner::with_jail(exe, s.run_dir.clone(), s.jail.clone())
        .map_err(|e| Stop(format!("run dir {}: {e}", s.run_dir.display())))?;
    let summoner = match s.daemon.max_vms {
        Some(n) => summoner.with_max_vms(n),
        None => summoner,
    };
    for m in summoner.jail_missing() {
        eprintln!("dust: worker jail: cannot apply {m}");
    }
    // Compiled wasm images (engine aot) and snapshot templates survive restarts in the
    // state dir's cache.
    let aot = match std::env::var_os("DUST_AOT_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => s.state_dir.join("cache/aot"),
    };
    let summoner = summoner.with_aot_cache(aot);
    let templates = summoner::template::TemplateCache::open(s.state_dir.join("cache/templates"))
        .map_err(|e| {
            Stop(format!(
                "state dir {}: template cache: {e}",
                s.state_dir.display()
            ))
        })?;
    Ok(Arc::new(
        summoner
            .with_log_dir(s.log_dir.clone())
            .with_state(s.state.clone())
            .with_template_cache(templates),
    ))
}

/// Add the services, open the API and health endpoints, serve until a signal, then drain.
async fn run(summoner: &Arc<Summoner>, s: Settings, grace: Duration) -> Result<(), Stop> {
    for config in s.services {
        let (name, mode) = (config.name.clone(), config.mode);
        let addr = summoner
            .add_with(config, &super::progress::Console::new())
            .await?;
        let scheme = if mode == Mode::Http {
            "http://"
        } else {
            "tcp "
        };
        eprintln!("dust: serving {name} on {scheme}{addr}");
    }
    super::restore::restore(summoner, &s.state).await;
    let pruned = summoner.prune_templates();
    if pruned > 0 {
        tracing::info!("removed {pruned} cached snapshot templates no service uses");
    }
    let api = api::bind_api(s.api, grace).map_err(|e| Stop(format!("control API: {e}")))?;
    eprintln!("dust: control API on {}", api.unix_path().display());
    if let Some(addr) = api.tcp_addr() {
        eprintln!("dust: control API on tcp {addr} (bearer token)");
    }
    balancer::warn_unclaimed();
    let health = match s.daemon.health_listen {
        Some(a) => {
            let (h, addr) = balancer::Health::start(a, summoner.clone())?;
            eprintln!("dust: health on http://{addr}/healthz");
            Some(h)
        }
        None => None,
    };
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api.serve(summoner.clone(), async move {
        let _ = api_stopped.await;
    }));
    notify_systemd();
    balancer::wait_then_drain(summoner, s.daemon.drain_delay.unwrap_or_default()).await;
    eprintln!(
        "dust: stopping (grace {})",
        humantime::format_duration(grace)
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // New connections are refused at once; in-flight requests get the grace period.
    summoner.shutdown(grace).await;
    let _ = stop_api.send(());
    let _ = api_task.await;
    if let Some(h) = health {
        h.stop().await;
    }
    Ok(())
}

/// Tell systemd (Type=notify) we are ready, and keep its watchdog fed if it has one.
fn notify_systemd() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(every) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}
