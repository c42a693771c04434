//! Client verbs over the control API, on its Unix socket or (`--api-tcp`, with a bearer
//! token) over TCP from another machine: `dust ps`, `dust services ...`, `dust kill`.
//! Tables for people by default, `--json` for scripts. `services add/replace` upload
//! their `--wasm`/`--image` file first ([`super::deploy`]), so the same command works on
//! the daemon's host and elsewhere.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use api::models::{ErrorBody, ErrorDetail, Service, ServiceList, Vm, VmList};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};

use summoner::config::Workload;
use summoner::ServiceConfig;
use vmm::SerialConfig;

use super::service::{ServiceFlags, WasmFlags};

/// Where to reach the daemon.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The daemon's API socket (default: /run/dust/api.sock as root, else
    /// $XDG_RUNTIME_DIR/dust/api.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Reach the daemon's TCP API at HOST:PORT instead of its socket (its `--api-tcp`);
    /// the bearer token comes from $DUST_API_TOKEN, else from --token-file.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub api_tcp: Option<String>,
    /// The file holding the TCP API's token (with --api-tcp, when $DUST_API_TOKEN is not
    /// set).
    #[arg(long, global = true, requires = "api_tcp")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `dust services` verbs.
#[derive(Subcommand, Debug)]
pub enum ServicesCmd {
    /// List services.
    List,
    /// Show one service: its whole config, bound address and counters.
    Show {
        /// Service name.
        name: String,
    },
    /// Add a service (fails if the name exists; `replace` changes one).
    Add(AddArgs),
    /// Replace a service's config live (or create it): the API's PUT. Settings not given
    /// take their defaults, as with `add`.
    Replace(AddArgs),
    /// Bring back the definition the service had before its last replacement (a second
    /// rollback undoes the first).
    Rollback {
        /// Service name.
        name: String,
    },
    /// Stop and remove a service (in-flight requests finish first).
    Rm {
        /// Service name.
        name: String,
    },
}

/// Flags of `dust services add` and `replace`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Service name.
    pub name: String,
    /// Guest image (or --wasm): a local file, uploaded to the daemon first, or
    /// `sha256:<hex>` naming one uploaded before.
    #[arg(long, required_unless_present = "wasm", conflicts_with = "wasm")]
    pub image: Option<PathBuf>,
    /// Or a WebAssembly handler: a local file, uploaded to the daemon first, or
    /// `sha256:<hex>`.
    #[command(flatten)]
    pub wasm: WasmFlags,
    /// Listen address, ip:port (port 0: a free one, printed).
    #[arg(long, value_parser = summoner::config::listen_addr::parse)]
    pub listen: SocketAddr,
    /// The service's settings.
    #[command(flatten)]
    pub service: ServiceFlags,
}

impl AddArgs {
    /// The config to send, its files named by the digests [`super::deploy::upload`]
    /// answered: the daemon may run on another machine.
    async fn config(self, conn: &Conn) -> Result<ServiceConfig, CliError> {
        let workload = match (&self.image, &self.wasm.wasm) {
            (_, Some(w)) => self
                .wasm
                .workload(super::deploy::upload(conn, "--wasm", w).await?),
            (Some(i), None) => Workload::Image(super::deploy::upload(conn, "--image", i).await?),
            (None, None) => return Err(CliError::argument("give --image or --wasm".into())),
        };
        let cfg = self.service.config(&self.name, self.listen, workload);
        // A serial file is not resolved here: the daemon takes only names inside its own
        // log directory and resolves them there.
        Ok(cfg)
    }
}

/// A failed verb: the API's error code and message, or one of the client's own
/// (`invalid_argument`, `daemon_unreachable`, `bad_answer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    code: String,
    message: String,
}

impl CliError {
    pub(super) fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    pub(super) fn argument(message: String) -> Self {
        Self::new("invalid_argument", message)
    }

    fn answer(e: impl std::fmt::Display) -> Self {
        Self::new(
            "bad_answer",
            format!("cannot read the daemon's answer: {e}"),
        )
    }

    /// The API's error body, or (a body that is not one) its text.
    pub(super) fn api(r: &Reply) -> Self {
        match serde_json::from_slice::<ErrorBody>(&r.body) {
            Ok(b) => Self::new(&b.error.code, b.error.message),
            Err(_) => Self::new(
                "bad_answer",
                format!(
                    "the daemon answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body).trim_end()
                ),
            ),
        }
    }

    pub(super) fn code(&self) -> &str {
        &self.code
    }

    pub(super) fn message(&self) -> &str {
        &self.message
    }

    /// What the user sees: a line for people, or the API's error shape for `--json`.
    fn render(&self, json: bool) -> String {
        if json {
            let body = ErrorBody {
                error: ErrorDetail {
                    code: self.code.clone(),
                    message: self.message.clone(),
                },
            };
            format!(
                "{}\n",
                serde_json::to_string(&body).unwrap_or_else(|_| "{}".into())
            )
        } else {
            format!("dust: {}\n", self.message)
        }
    }
}

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: Bytes,
}

async fn request(
    conn: &Conn,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Reply, CliError> {
    let body = body.map(|b| ("application/json", Bytes::from(b)));
    send(conn, method, path, body).await
}

/// Longest the daemon may take to answer (an upload, or a snapshot service's template).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// One request with a body of the given media type, on the socket or over TCP.
pub(super) async fn send(
    conn: &Conn,
    method: &str,
    path: &str,
    body: Option<(&str, Bytes)>,
) -> Result<Reply, CliError> {
    let (mut send, token, place) = super::deploy::connect(conn).await?;
    let unreachable = |e: &dyn std::fmt::Display| {
        CliError::new(
            "daemon_unreachable",
            format!("cannot reach the dust daemon at {place}: {e} (is `dust serve` running?)"),
        )
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "dust");
    if let Some(token) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some((ctype, _)) = &body {
        req = req.header(hyper::header::CONTENT_TYPE, *ctype);
    }
    let req = req
        .body(Full::new(body.map(|(_, b)| b).unwrap_or_default()))
        .map_err(|e| CliError::argument(format!("cannot make the request: {e}")))?;
    let resp = tokio::time::timeout(ANSWER_TIMEOUT, send.send_request(req))
        .await
        .map_err(|_| unreachable(&"no answer within 120 s"))?
        .map_err(|e| unreachable(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok(Reply { status, body })
}

fn run<F: std::future::Future<Output = Result<String, CliError>>>(json: bool, f: F) -> ExitCode {
    let out = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new("internal", e.to_string()))
        .and_then(|rt| rt.block_on(f));
    match out {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        // Scripts that asked for JSON read stdout; people read stderr.
        Err(e) if json => {
            print!("{}", e.render(true));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprint!("{}", e.render(false));
            ExitCode::FAILURE
        }
    }
}

async fn get_json(conn: &Conn, path: &str) -> Result<Reply, CliError> {
    let r = request(conn, "GET", path, None).await?;
    if r.status != 200 {
        return Err(CliError::api(&r));
    }
    Ok(r)
}

/// What a verb without an answer body (kill, rm) prints: a line, or `{"VERB": "WHAT"}`.
fn done(json: bool, verb: &str, what: &str) -> String {
    if json {
        format!("{}\n", serde_json::json!({ verb: what }))
    } else {
        format!("{verb} {what}\n")
    }
}

/// Every field of a service, one `key: value` line each, for `services show`.
fn service_details(s: &Service) -> String {
    let c = &s.config;
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let or_default = |v: Option<String>, default: &str| v.unwrap_or_else(|| default.into());
    let rows: Vec<(&str, String)> = vec![
        ("name", c.name.clone()),
        ("listen", c.listen.to_string()),
        ("address", s.address.to_string()),
        ("mode", c.mode.to_string()),
        ("runs", runs(s)),
        (
            "engine_running",
            or_default(s.engine_running.map(|e| e.to_string()), "-"),
        ),
        ("cmdline", format!("{:?}", c.cmdline)),
        ("memory_mib", c.memory_mib.to_string()),
        (
            "memory_limit_mib",
            or_default(
                c.memory_limit_mib.map(|m| m.to_string()),
                "default (memory + jail overhead)",
            ),
        ),
        ("vcpus", c.vcpus.to_string()),
        ("irqchip", c.irqchip.to_string()),
        ("guest_port", c.guest_port.to_string()),
        ("snapshot", c.snapshot.to_string()),
        (
            "fuel",
            or_default(
                c.wasm_workload()
                    .and_then(|w| w.fuel)
                    .map(|f| f.to_string()),
                "-",
            ),
        ),
        ("serial", serial(&c.serial)),
        ("max_concurrent", c.max_concurrent.to_string()),
        ("queue_depth", c.queue_depth.to_string()),
        ("queue_deadline", d(c.queue_deadline)),
        ("request_deadline", d(c.request_deadline)),
        ("pool_size", c.pool_size.to_string()),
        ("header_timeout", d(c.header_timeout)),
        ("idle_timeout", d(c.idle_timeout)),
        ("max_connections", c.max_connections.to_string()),
        ("stats", stats(s)),
    ];
    rows.iter().map(|(k, v)| format!("{k:<17} {v}\n")).collect()
}

/// Where a service's guest console goes, as `--serial` spells it.
fn serial(serial: &SerialConfig) -> String {
    match serial {
        SerialConfig::None => "none".to_string(),
        SerialConfig::Stdout => "stdout".to_string(),
        SerialConfig::File(f) => format!("file:{}", f.display()),
    }
}

/// A service's live counts, on one line.
fn stats(s: &Service) -> String {
    format!(
        "running {} (max {}), idle {}, waiting {}, connections {}",
        s.stats.running, s.stats.max_running, s.stats.idle, s.stats.waiting, s.stats.connections
    )
}

/// What a service runs, in one word: its image, or `wasm:<module> (<engine>)`, the engine
/// that runs it (and the one asked for when that differs: a component on the interpreter).
fn runs(s: &Service) -> String {
    match &s.config.workload {
        Workload::Image(i) => i.display().to_string(),
        Workload::Wasm(w) => match s.engine_running {
            Some(e) if e != w.engine => {
                format!("wasm:{} ({e}; {} asked)", w.module.display(), w.engine)
            }
            _ => format!("wasm:{} ({})", w.module.display(), w.engine),
        },
    }
}

fn vm_table(vms: &[Vm]) -> String {
    let mut out = format!(
        "{:<32} {:<16} {:<9} {:>9} {:>8}\n",
        "VM", "SERVICE", "PHASE", "AGE", "PID"
    );
    for v in vms {
        out += &format!(
            "{:<32} {:<16} {:<9} {:>8}ms {:>8}\n",
            v.id, v.service, v.phase, v.age_ms, v.pid
        );
    }
    out
}

fn service_table(services: &[Service]) -> String {
    let mut out = format!(
        "{:<16} {:<5} {:<8} {:<22} {:>7} {:>4} {:>7}  {}\n",
        "SERVICE", "MODE", "START", "ADDRESS", "RUNNING", "IDLE", "WAITING", "RUNS"
    );
    for s in services {
        let start = if s.config.snapshot {
            "snapshot"
        } else {
            "boot"
        };
        out += &format!(
            "{:<16} {:<5} {:<8} {:<22} {:>7} {:>4} {:>7}  {}\n",
            s.config.name,
            s.config.mode.to_string(),
            start,
            s.address,
            s.stats.running,
            s.stats.idle,
            s.stats.waiting,
            runs(s)
        );
    }
    out
}

fn text(body: &Bytes) -> String {
    let mut s = String::from_utf8_lossy(body).into_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// `dust ps`.
pub fn ps(conn: Conn) -> ExitCode {
    run(conn.json, async move {
        let r = get_json(&conn, "/v1/vms").await?;
        if conn.json {
            return Ok(text(&r.body));
        }
        let list: VmList = serde_json::from_slice(&r.body).map_err(CliError::answer)?;
        Ok(vm_table(&list.vms))
    })
}

/// `dust kill VM`.
pub fn kill(conn: Conn, vm: String) -> ExitCode {
    run(conn.json, async move {
        let r = request(&conn, "DELETE", &format!("/v1/vms/{vm}"), None).await?;
        match r.status {
            204 => Ok(done(conn.json, "killed", &vm)),
            _ => Err(CliError::api(&r)),
        }
    })
}

/// `dust services ...`.
pub fn services(conn: Conn, cmd: ServicesCmd) -> ExitCode {
    run(conn.json, async move {
        match cmd {
            ServicesCmd::List => {
                let r = get_json(&conn, "/v1/services").await?;
                if conn.json {
                    return Ok(text(&r.body));
                }
                let list: ServiceList =
                    serde_json::from_slice(&r.body).map_err(CliError::answer)?;
                Ok(service_table(&list.services))
            }
            ServicesCmd::Show { name } => {
                let r = get_json(&conn, &format!("/v1/services/{name}")).await?;
                if conn.json {
                    return Ok(text(&r.body));
                }
                let s: Service = serde_json::from_slice(&r.body).map_err(CliError::answer)?;
                Ok(service_details(&s))
            }
            ServicesCmd::Add(a) => put(&conn, a, false).await,
            ServicesCmd::Replace(a) => put(&conn, a, true).await,
            ServicesCmd::Rollback { name } => {
                let path = format!("/v1/services/{name}/rollback");
                let r = request(&conn, "POST", &path, None).await?;
                if r.status != 200 {
                    return Err(CliError::api(&r));
                }
                if conn.json {
                    return Ok(text(&r.body));
                }
                let s: Service = serde_json::from_slice(&r.body).map_err(CliError::answer)?;
                Ok(format!("rolled back {name} on {}\n", s.address))
            }
            ServicesCmd::Rm { name } => {
                let r = request(&conn, "DELETE", &format!("/v1/services/{name}"), None).await?;
                match r.status {
                    204 => Ok(done(conn.json, "removed", &name)),
                    _ => Err(CliError::api(&r)),
                }
            }
        }
    })
}

/// `services add` (POST: never replaces) or `services replace` (PUT). Prints the bound
/// address, which is the one to use when `--listen` had port 0.
async fn put(conn: &Conn, a: AddArgs, replace: bool) -> Result<String, CliError> {
    let name = a.name.clone();
    let cfg = a.config(conn).await?;
    let body = serde_json::to_string(&cfg).map_err(|e| CliError::new("internal", e.to_string()))?;
    // Creating a wasm service compiles it and takes a snapshot: seconds, with a spinner.
    let doing = if replace { "replacing" } else { "adding" };
    let waiting = super::progress::spinner(format!("dust: {doing} {name}"));
    let r = if replace {
        request(conn, "PUT", &format!("/v1/services/{name}"), Some(body)).await
    } else {
        request(conn, "POST", "/v1/services", Some(body)).await
    };
    if let Some(w) = waiting {
        w.finish_and_clear();
    }
    let r = r?;
    let verb = match r.status {
        201 => "added",
        200 if replace => "replaced",
        _ => return Err(CliError::api(&r)),
    };
    if conn.json {
        return Ok(text(&r.body));
    }
    let s: Service = serde_json::from_slice(&r.body).map_err(CliError::answer)?;
    // What the creation did, on stderr: stdout stays the one line scripts read.
    for step in &s.creation {
        eprintln!("{}", super::progress::line(&name, step));
    }
    Ok(format!("{verb} {name} on {}\n", s.address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_mode_prints_json_for_errors_and_bodiless_answers() {
        let e = CliError::new("service_not_found", "there is no service named \"x\"");
        let v: serde_json::Value = serde_json::from_str(&e.render(true)).unwrap_or_default();
        assert_eq!(v["error"]["code"], "service_not_found");
        assert_eq!(v["error"]["message"], "there is no service named \"x\"");
        assert_eq!(e.render(false), "dust: there is no service named \"x\"\n");
        let v: serde_json::Value =
            serde_json::from_str(&done(true, "killed", "vm-1")).unwrap_or_default();
        assert_eq!(v, serde_json::json!({"killed": "vm-1"}));
        assert_eq!(done(false, "removed", "web"), "removed web\n");
        // A body that is not the API's error shape still ends up in one.
        let r = Reply {
            status: 502,
            body: Bytes::from_static(b"bad gateway\n"),
        };
        let e = CliError::api(&r);
        assert_eq!(e.code, "bad_answer");
        assert_eq!(e.message, "the daemon answered 502: bad gateway");
    }

    #[test]
    fn a_wasm_service_shows_the_engine_that_runs_it() {
        use summoner::config::Engine;
        let c = ServiceConfig::wasm("w", "127.0.0.1:0".parse().unwrap(), "/m/h.wasm");
        let mut s = Service {
            config: c,
            address: "127.0.0.1:1".parse().unwrap(),
            stats: summoner::ServiceStats {
                running: 0,
                max_running: 0,
                idle: 0,
                waiting: 0,
                connections: 0,
            },
            engine_running: Some(Engine::Aot),
            creation: Vec::new(),
        };
        assert_eq!(runs(&s), "wasm:/m/h.wasm (aot)");
        s.engine_running = Some(Engine::Interpreter);
        assert_eq!(runs(&s), "wasm:/m/h.wasm (interpreter; aot asked)");
    }
}
