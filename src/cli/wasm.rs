//! `dust run --wasm FILE`: run one request through a WebAssembly handler in a fresh VM and
//! print the HTTP response, for developing handlers (docs/wasm.md). The module runs
//! compiled ahead of time (the default; the image is cached) or in the `dust-wasm`
//! interpreter guest (`--engine interpreter`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::Args;
use dust_abi::status;
use summoner::config::Engine;
use summoner::wasm;
use vmm::{SerialConfig, VmConfig, VsockConfig};

/// The `--wasm` flags of `dust run`.
#[derive(Args, Debug, Default)]
pub struct WasmArgs {
    /// Run one request through a handler and print the response (not with --restore,
    /// --snapshot-out or --initrd). IMAGE, if given, replaces the built-in guest.
    #[command(flatten)]
    pub flags: super::service::WasmFlags,
    /// A CGI variable of the request, e.g. REQUEST_METHOD=POST, PATH_INFO=/x,
    /// QUERY_STRING=a+b, CONTENT_TYPE=..., HTTP_ACCEPT=... (a header); any other NAME=value
    /// is added to the handler's environment (no spaces). Repeatable. With --wasm.
    #[arg(long = "env", value_name = "NAME=VALUE", requires = "wasm")]
    pub env: Vec<String>,
    /// The request body (the handler's stdin); the method defaults to POST. With --wasm.
    #[arg(long, value_name = "FILE", requires = "wasm")]
    pub body: Option<PathBuf>,
}

/// Why the request could not be run.
#[derive(Debug, thiserror::Error)]
pub enum WasmRunError {
    /// The module is refused.
    #[error("{path}: {source}")]
    Module {
        /// Module path.
        path: String,
        /// Why.
        source: wasm::WasmError,
    },
    /// A bad `--env`.
    #[error("--env {0:?}: {1}")]
    Env(String, &'static str),
    /// The body file.
    #[error("--body {0}: {1}")]
    Body(String, std::io::Error),
    /// No dust-wasm guest.
    #[error(
        "the built-in dust-wasm guest is missing: run scripts/build-guests (or set DUST_GUEST_DIR)"
    )]
    NoGuest,
    /// The module could not be compiled.
    #[error("{path}: {source}")]
    Compile {
        /// Module path.
        path: String,
        /// Why.
        source: wasm::aot::AotError,
    },
    /// The VM.
    #[error("{0}")]
    Vm(String),
    /// The VM ran past its timeout.
    #[error("timed out: the handler did not answer in time (VM killed)")]
    Timeout,
    /// Talking to the guest.
    #[error("the guest did not answer: {0}")]
    Io(#[from] std::io::Error),
}

/// The HTTP request and the extra command-line words that `--env` and `--body` describe.
fn request(args: &WasmArgs) -> Result<(Vec<u8>, String), WasmRunError> {
    let body = match &args.body {
        Some(p) => std::fs::read(p).map_err(|e| WasmRunError::Body(p.display().to_string(), e))?,
        None => Vec::new(),
    };
    let mut method = if args.body.is_some() { "POST" } else { "GET" }.to_string();
    let (mut path, mut query) = ("/".to_string(), String::new());
    let mut headers = vec![("Host".to_string(), "localhost".to_string())];
    let mut words = String::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| WasmRunError::Env(kv.clone(), "expected NAME=VALUE"))?;
        if v.contains(['\r', '\n']) {
            return Err(WasmRunError::Env(kv.clone(), "line breaks are not allowed"));
        }
        match k {
            "REQUEST_METHOD" => method = v.to_string(),
            "PATH_INFO" => path = v.to_string(),
            "QUERY_STRING" => query = v.to_string(),
            "CONTENT_TYPE" => headers.push(("Content-Type".into(), v.into())),
            _ if k.starts_with("HTTP_") => {
                let name = k["HTTP_".len()..].replace('_', "-");
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                headers.push((name, v.into()));
            }
            _ if k.is_empty()
                || v.contains(char::is_whitespace)
                || k.contains(char::is_whitespace) =>
            {
                return Err(WasmRunError::Env(
                    kv.clone(),
                    "no spaces in extra variables",
                ));
            }
            _ => words.push_str(&format!(" env.{k}={v}")),
        }
    }
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    Ok((bytes, words))
}

/// Connects to the guest's port 80 through the vsock socket and exchanges one request.
fn exchange(uds: &Path, req: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(b"CONNECT 80\n")?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    if !line.starts_with(b"OK") {
        return Err(std::io::Error::other(format!(
            "vsock CONNECT refused: {}",
            String::from_utf8_lossy(&line)
        )));
    }
    s.write_all(req)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Runs the request; returns the raw HTTP response.
fn run_one(
    image: Option<&Path>,
    module: &Path,
    args: &WasmArgs,
    memory_mib: u32,
    timeout: Option<Duration>,
) -> Result<Vec<u8>, WasmRunError> {
    wasm::check_file(module, memory_mib).map_err(|source| WasmRunError::Module {
        path: module.display().to_string(),
        source,
    })?;
    let compiled = image.is_none()
        && args.flags.engine.unwrap_or(Engine::Aot) == Engine::Aot
        && !summoner::component::is_component_file(module);
    let image = match image {
        Some(i) => i.to_path_buf(),
        None if compiled => compile(module)?,
        None => wasm::find_guest_for(module).ok_or(WasmRunError::NoGuest)?,
    };
    let (req, words) = request(args)?;
    let id = format!("run-{}", std::process::id());
    let uds = vmm::runtime_dir().join(format!("{id}.vsock"));
    std::fs::create_dir_all(vmm::runtime_dir())?;
    let config = VmConfig {
        // The interpreter gets the module as its initrd; a compiled image holds it.
        initrd: (!compiled).then(|| module.to_path_buf()),
        cmdline: format!(
            "{} verbose=1{words} vm={id}",
            wasm::cmdline(args.flags.fuel, false)
        ),
        memory_mib,
        // The handler's stderr: the serial console, onto dust's stderr.
        serial: SerialConfig::File("/dev/stderr".into()),
        timeout: Some(timeout.unwrap_or(Duration::from_secs(120))),
        vsock: Some(VsockConfig { uds: uds.clone() }),
        id,
        ..VmConfig::new(image)
    };
    let vm = vmm::build(&config).map_err(|e| WasmRunError::Vm(e.to_string()))?;
    serve_one(vm, uds, req)
}

/// Starts `vm`, sends `req` over the vsock socket `uds` once the guest is ready, kills the VM
/// when the answer is in; returns the raw answer.
fn serve_one(vm: vmm::Vm, uds: PathBuf, req: Vec<u8>) -> Result<Vec<u8>, WasmRunError> {
    let (ready_tx, ready) = mpsc::channel();
    vm.on_ready(move |_| {
        let _ = ready_tx.send(());
    });
    let handle = vm.start().map_err(|e| WasmRunError::Vm(e.to_string()))?;
    let killer = handle.killer();
    let ended = Arc::new(AtomicBool::new(false));
    let client = {
        let ended = ended.clone();
        std::thread::spawn(move || loop {
            match ready.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => {
                    let r = exchange(&uds, &req);
                    killer.kill();
                    return Some(r);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !ended.load(Ordering::Relaxed) => {}
                Err(_) => return None,
            }
        })
    };
    let report = handle.wait();
    ended.store(true, Ordering::Relaxed);
    if report.exit == vmm::VmExit::Timeout {
        let _ = client.join();
        return Err(WasmRunError::Timeout);
    }
    match client.join() {
        Ok(Some(r)) => Ok(r?),
        _ => Err(WasmRunError::Vm(format!(
            "the guest never became ready: {}",
            report.exit
        ))),
    }
}

/// The module's compiled image (from the cache, or compiled now, saying so on stderr).
fn compile(module: &Path) -> Result<PathBuf, WasmRunError> {
    let err = |source| WasmRunError::Compile {
        path: module.display().to_string(),
        source,
    };
    let bytes = std::fs::read(module).map_err(|e| WasmRunError::Module {
        path: module.display().to_string(),
        source: wasm::WasmError::Read(e.to_string()),
    })?;
    let opts = wasm::aot::AotOptions::new(wasm::aot::default_cache_dir());
    let image = wasm::aot::build_image(&bytes, &opts).map_err(err)?;
    if !image.cached {
        eprintln!(
            "dust: compiled {} ({} KB of C; {})",
            module.display(),
            image.c_bytes / 1000,
            wasm::aot::describe(&image.phases)
        );
    }
    Ok(image.path)
}

/// `dust run --wasm`: prints the response (status line, headers, body) on stdout; exits
/// 0 when a response came back, whatever its status.
pub fn run(
    image: Option<&Path>,
    module: &Path,
    args: &WasmArgs,
    memory_mib: u32,
    timeout: Option<Duration>,
) -> ExitCode {
    match run_one(image, module, args, memory_mib, timeout) {
        Ok(resp) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&resp);
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e @ WasmRunError::Timeout) => {
            eprintln!("dust: {e}");
            ExitCode::from(status::TIMEOUT)
        }
        Err(e) => {
            eprintln!("dust: {e}");
            ExitCode::from(status::VMM_ERROR)
        }
    }
}
