//! Client verbs over the control API's Unix socket: `dust ps`, `dust services ...`,
//! `dust kill`. Tables for people by default, `--json` for scripts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use api::models::{Service, ServiceList, Vm, VmList};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::service::ServiceFlags;

/// Where to reach the daemon.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The daemon's API socket (default: /run/dust/api.sock as root, else
    /// $XDG_RUNTIME_DIR/dust/api.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `dust services` verbs.
#[derive(Subcommand, Debug)]
pub enum ServicesCmd {
    /// List services.
    List,
    /// Show one service.
    Show {
        /// Service name.
        name: String,
    },
    /// Add a service (fails if the name exists; the API's PUT replaces).
    Add(AddArgs),
    /// Stop and remove a service (in-flight requests finish first).
    Rm {
        /// Service name.
        name: String,
    },
}

/// Flags of `dust services add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Service name.
    pub name: String,
    /// Guest image (not needed with --wasm).
    #[arg(long, required_unless_present = "wasm")]
    pub image: Option<PathBuf>,
    /// A WebAssembly handler (wasm32-wasip1 module) run by the built-in dust-wasm guest
    /// (see docs/wasm.md); snapshot mode.
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// Fuel per request of a --wasm service (out of fuel: 504).
    #[arg(long, requires = "wasm")]
    pub fuel: Option<u64>,
    /// Listen address.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The service's settings.
    #[command(flatten)]
    pub service: ServiceFlags,
}

struct Reply {
    status: u16,
    body: Bytes,
}

async fn request(
    conn: &Conn,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<Reply, String> {
    let sock = conn.socket.clone().unwrap_or_else(api::default_socket_path);
    let stream = tokio::net::UnixStream::connect(&sock).await.map_err(|e| {
        format!(
            "cannot reach the dust daemon at {}: {e} (is `dust serve` running?)",
            sock.display()
        )
    })?;
    let (mut send, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(c);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "dust");
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .map_err(|_| "the daemon did not answer within 30 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply { status, body })
}

/// The API's error message, or the raw body.
fn api_error(r: &Reply) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned())
}

fn run<F: std::future::Future<Output = Result<String, String>>>(f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dust: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dust: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn get_json(conn: &Conn, path: &str) -> Result<Reply, String> {
    let r = request(conn, "GET", path, None).await?;
    if r.status != 200 {
        return Err(api_error(&r));
    }
    Ok(r)
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
        "SERVICE", "MODE", "START", "ADDRESS", "RUNNING", "IDLE", "WAITING", "IMAGE"
    );
    for s in services {
        let start = if s.config.snapshot_mode() {
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
            s.config.image.display()
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
    run(async move {
        let r = get_json(&conn, "/v1/vms").await?;
        if conn.json {
            return Ok(text(&r.body));
        }
        let list: VmList = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        Ok(vm_table(&list.vms))
    })
}

/// `dust kill VM`.
pub fn kill(conn: Conn, vm: String) -> ExitCode {
    run(async move {
        let r = request(&conn, "DELETE", &format!("/v1/vms/{vm}"), None).await?;
        match r.status {
            204 => Ok(format!("killed {vm}\n")),
            _ => Err(api_error(&r)),
        }
    })
}

/// `dust services ...`.
pub fn services(conn: Conn, cmd: ServicesCmd) -> ExitCode {
    run(async move {
        match cmd {
            ServicesCmd::List => {
                let r = get_json(&conn, "/v1/services").await?;
                if conn.json {
                    return Ok(text(&r.body));
                }
                let list: ServiceList =
                    serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                Ok(service_table(&list.services))
            }
            ServicesCmd::Show { name } => {
                let r = get_json(&conn, &format!("/v1/services/{name}")).await?;
                if conn.json {
                    return Ok(text(&r.body));
                }
                let s: Service = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                let mut out = service_table(std::slice::from_ref(&s));
                out += &format!(
                    "limits: max_concurrent {} queue_depth {} queue_deadline {} request_deadline {} pool {}\n",
                    s.config.max_concurrent,
                    s.config.queue_depth,
                    humantime::format_duration(s.config.queue_deadline),
                    humantime::format_duration(s.config.request_deadline),
                    s.config.pool_size
                );
                Ok(out)
            }
            ServicesCmd::Add(a) => {
                let mut cfg = a
                    .service
                    .config(&a.name, a.listen, a.image.unwrap_or_default());
                // The daemon reads the module: give it an absolute path.
                cfg.wasm = a.wasm.map(|w| std::path::absolute(&w).unwrap_or(w));
                cfg.fuel = a.fuel;
                let body = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
                let r = request(&conn, "POST", "/v1/services", Some(body)).await?;
                match r.status {
                    201 if conn.json => Ok(text(&r.body)),
                    201 => Ok(format!("added {}\n", a.name)),
                    _ => Err(api_error(&r)),
                }
            }
            ServicesCmd::Rm { name } => {
                let r = request(&conn, "DELETE", &format!("/v1/services/{name}"), None).await?;
                match r.status {
                    204 => Ok(format!("removed {name}\n")),
                    _ => Err(api_error(&r)),
                }
            }
        }
    })
}
