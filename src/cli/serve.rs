//! `dust serve`: the daemon. With no arguments it serves the built-in `hello` demo service
//! (the `http-hello` guest, HTTP mode) on 127.0.0.1:8080.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dust_abi::status;
use summoner::{FileConfig, Mode, Summoner};

use super::service::ServiceFlags;

/// Flags of `dust serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with `[[service]]` tables (see dist/dust.toml).
    #[arg(long, conflicts_with = "image")]
    pub config: Option<PathBuf>,
    /// Serve one service from this guest image instead of a config file.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Serve one WebAssembly handler (wasm32-wasip1 module, WAGI) run by the built-in
    /// dust-wasm guest, in snapshot mode (see docs/wasm.md).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub wasm: Option<PathBuf>,
    /// Fuel per request of the --wasm service (out of fuel: 504).
    #[arg(long, requires = "wasm")]
    pub fuel: Option<u64>,
    /// Service name (with --image or --wasm).
    #[arg(long, default_value = "hello")]
    pub name: String,
    /// Listen address (with --image, or for the built-in demo).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The service's settings (with --image).
    #[command(flatten)]
    pub service: ServiceFlags,
    /// Directory for per-VM sockets.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Directory for services' serial files, which must be file names in it (default: the
    /// file's log_dir, else /var/log/dust as root, else $XDG_STATE_HOME/dust/log or
    /// ~/.local/state/dust/log).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Most worker processes (idle shells and running VMs of all services) at once
    /// (default: `max_vms` of the config file, else as many default-sized VMs as the
    /// host's memory holds).
    #[arg(long)]
    pub max_vms: Option<usize>,
    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Control API socket (default: the file's [api] socket, else /run/dust/api.sock as
    /// root, else $XDG_RUNTIME_DIR/dust/api.sock).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Also serve the control API on TCP at this address (default: the file's [api] tcp);
    /// every request then needs `Authorization: Bearer <token>` with the token from
    /// $DUST_API_TOKEN, else from the file's [api] token_file.
    // `--api-listen` was the documented name for a while; it keeps working, unlisted.
    #[arg(long, alias = "api-listen")]
    pub api_tcp: Option<SocketAddr>,
    /// Serve /healthz, /readyz and /livez here for load balancers (docs/deploy.md).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// After SIGTERM or POST /v1/drain, keep accepting this long while /healthz already
    /// answers 503, so balancers stop sending first (default 0, or the file's drain_delay).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_delay: Option<Duration>,
    /// Where services created through the control API and uploaded artifacts are kept
    /// across restarts (default: the file's state_dir, else /var/lib/dust as root, else
    /// $XDG_STATE_HOME/dust or ~/.local/state/dust); see docs/deploy.md.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Largest artifact upload through the control API, MiB (default: the file's [api]
    /// max_upload_mib, else 64).
    #[arg(long)]
    pub api_max_upload_mib: Option<usize>,
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

impl ServeArgs {
    fn services(&self) -> Result<FileConfig, String> {
        if let Some(path) = &self.config {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let file: FileConfig =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if file.services.is_empty() {
                return Err(format!("{}: no [[service]] defined", path.display()));
            }
            return Ok(file);
        }
        let image = match (&self.image, &self.wasm) {
            (Some(i), _) => i.clone(),
            (None, Some(_)) => PathBuf::new(), // the built-in dust-wasm guest
            (None, None) => find_guest("http-hello").ok_or(
                "the built-in hello service needs the http-hello guest: run scripts/build-guests \
                 (or set DUST_GUEST_DIR)",
            )?,
        };
        let mut s = self.service.config(&self.name, self.listen, image);
        s.wasm = self.wasm.clone();
        s.fuel = self.fuel;
        Ok(FileConfig {
            services: vec![s],
            ..FileConfig::default()
        })
    }
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn serve(args: ServeArgs) -> ExitCode {
    let file = match args.services() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dust: {e}");
            return ExitCode::from(status::VMM_ERROR);
        }
    };
    if let Err(e) = file.jail.validate() {
        eprintln!("dust: {e}");
        return ExitCode::from(status::VMM_ERROR);
    }
    // Before the runtime starts threads: this edits the environment.
    if let Err(e) = super::drain::adopt_sockets() {
        eprintln!("dust: {e}");
        return ExitCode::from(status::VMM_ERROR);
    }
    let log_dir = match args
        .log_dir
        .clone()
        .or(file.log_dir.clone())
        .unwrap_or_else(summoner::default_log_dir)
    {
        d if d.is_absolute() => d,
        d => {
            eprintln!("dust: log_dir {}: use an absolute path", d.display());
            return ExitCode::from(status::VMM_ERROR);
        }
    };
    // Read now, so that a token file the daemon cannot use stops it before anything listens.
    let api = match ApiPlace::resolve(&args, &file.api) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dust: control API: {e}");
            return ExitCode::from(status::VMM_ERROR);
        }
    };
    let services = file.services;
    let state_dir = super::restore::dir(args.state_dir.as_ref(), file.state_dir.as_ref());
    let state = match super::restore::open(&state_dir, args.config.as_deref(), &services) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dust: {e}");
            return ExitCode::from(status::VMM_ERROR);
        }
    };
    let max_upload = args
        .api_max_upload_mib
        .or(file.api.max_upload_mib)
        .map_or(api::body::MAX_UPLOAD_BYTES, |m| m.saturating_mul(1 << 20));
    let health_listen = args.health_listen.or(file.health_listen);
    let drain_delay = args.drain_delay.unwrap_or(file.drain_delay);
    let jail = file.jail;
    // Before the runtime starts a thread, so that all of them inherit it (security.md).
    if let Err(e) = vmm::seccomp::apply_daemon() {
        eprintln!("dust: {e}");
        return ExitCode::from(status::VMM_ERROR);
    }
    let run_dir = args
        .run_dir
        .clone()
        .or(file.run_dir)
        .unwrap_or_else(summoner::default_run_dir);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dust: starting the runtime: {e}");
            return ExitCode::from(status::VMM_ERROR);
        }
    };
    rt.block_on(async move {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("dust: cannot find my own executable: {e}");
                return ExitCode::from(status::VMM_ERROR);
            }
        };
        let max_vms = args.max_vms.or(file.max_vms);
        let summoner = match Summoner::with_jail(exe, run_dir.clone(), jail) {
            Ok(s) => std::sync::Arc::new(
                match max_vms {
                    Some(n) => s.with_max_vms(n),
                    None => s,
                }
                .with_log_dir(log_dir)
                .with_state(state.clone()),
            ),
            Err(e) => {
                eprintln!("dust: run dir {}: {e}", run_dir.display());
                return ExitCode::from(status::VMM_ERROR);
            }
        };
        for m in summoner.jail_missing() {
            eprintln!("dust: worker jail: cannot apply {m}");
        }
        for s in services {
            let (name, mode) = (s.name.clone(), s.mode);
            match summoner.add(s).await {
                Ok(addr) => {
                    let scheme = if mode == Mode::Http {
                        "http://"
                    } else {
                        "tcp "
                    };
                    eprintln!("dust: serving {name} on {scheme}{addr}");
                }
                Err(e) => {
                    eprintln!("dust: {e}");
                    summoner.shutdown(Duration::ZERO).await;
                    return ExitCode::from(status::VMM_ERROR);
                }
            }
        }
        super::restore::restore(&summoner, &state).await;
        let api = match bind_api(api, args.grace, max_upload) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("dust: control API: {e}");
                summoner.shutdown(Duration::ZERO).await;
                return ExitCode::from(status::VMM_ERROR);
            }
        };
        eprintln!("dust: control API on {}", api.unix_path().display());
        if let Some(addr) = api.tcp_addr() {
            eprintln!("dust: control API on tcp {addr} (bearer token)");
        }
        super::drain::warn_unclaimed();
        let health = match health_listen.map(|a| super::drain::Health::start(a, summoner.clone())) {
            Some(Ok((h, addr))) => {
                eprintln!("dust: health on http://{addr}/healthz");
                Some(h)
            }
            Some(Err(e)) => {
                eprintln!("dust: {e}");
                summoner.shutdown(Duration::ZERO).await;
                return ExitCode::from(status::VMM_ERROR);
            }
            None => None,
        };
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api_task = tokio::spawn(api.serve(summoner.clone(), async move {
            let _ = api_stopped.await;
        }));
        notify_systemd();
        super::drain::wait_then_drain(&summoner, drain_delay).await;
        let grace = humantime::format_duration(args.grace);
        eprintln!("dust: stopping (grace {grace})");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        // New connections are refused at once; in-flight requests get the grace period.
        summoner.shutdown(args.grace).await;
        let _ = stop_api.send(());
        let _ = api_task.await;
        if let Some(h) = health {
            h.stop().await;
        }
        ExitCode::SUCCESS
    })
}

/// Where the control API listens, from the flags over the file's `[api]`.
struct ApiPlace {
    socket: PathBuf,
    tcp: Option<(SocketAddr, String)>,
}

impl ApiPlace {
    fn resolve(args: &ServeArgs, file: &summoner::config::ApiFileConfig) -> Result<Self, String> {
        let socket = args
            .api_socket
            .clone()
            .or(file.socket.clone())
            .unwrap_or_else(api::default_socket_path);
        let tcp = match args.api_tcp.or(file.tcp) {
            Some(addr) => Some((addr, api_token(file.token_file.as_deref())?)),
            None => None,
        };
        Ok(Self { socket, tcp })
    }
}

/// The TCP API's bearer token: `$DUST_API_TOKEN`, else the content of `token_file`.
fn api_token(token_file: Option<&Path>) -> Result<String, String> {
    if let Ok(t) = std::env::var("DUST_API_TOKEN") {
        return Ok(t);
    }
    let Some(path) = token_file else {
        return Err(
            "the TCP API needs a token: set $DUST_API_TOKEN or [api] token_file".to_string(),
        );
    };
    use std::os::unix::fs::PermissionsExt;
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("token_file {name}: {e}"))?;
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "token_file {name}: readable by every user (mode {:o}); chmod o-r it",
            mode & 0o7777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("token_file {name}: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token_file {name}: empty"));
    }
    Ok(token.to_string())
}

fn bind_api(place: ApiPlace, grace: Duration, max_upload: usize) -> Result<api::ApiServer, String> {
    let settings = api::Settings {
        drain_grace: grace,
        max_upload,
        ..Default::default()
    };
    api::ApiServer::bind(&place.socket, place.tcp)
        .map(|a| a.with_settings(settings))
        .map_err(|e| e.to_string())
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
