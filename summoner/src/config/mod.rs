//! Service configuration: plain serde data (TOML file, CLI flags and API bodies all become a
//! [`ServiceConfig`]), validated before anything listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm::SerialConfig;

mod daemon;
mod error;
mod parse;
mod validate;
mod workload;

pub use daemon::{ApiConfig, DaemonConfig};
pub use error::ServiceConfigError;
pub use parse::{listen_addr, service_duration, DURATION_PATTERN};
pub use validate::{serial_in, DURATIONS};
pub use workload::{Engine, ServiceSpec, UnknownEngine, WasmWorkload, Workload, WorkloadError};

/// How a service maps connections to VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One VM per HTTP request (keep-alive clients get a fresh VM for each request).
    #[default]
    Http,
    /// One VM per TCP connection, bytes spliced both ways.
    Tcp,
}

/// A mode name that is neither `http` nor `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mode {0:?}: use http or tcp")]
pub struct UnknownMode(String);

/// The names serde reads, so that flags and config files accept the same words.
impl std::str::FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        use serde::de::value::{Error, StrDeserializer};
        Self::deserialize(StrDeserializer::<Error>::new(s)).map_err(|_| UnknownMode(s.into()))
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        })
    }
}

/// One service: a listener whose every request (or connection) summons a fresh VM.
///
/// Plain data; TOML tables, API bodies and CLI flags all become one of these through
/// [`ServiceSpec`], the flat form they share (see [`workload`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ServiceSpec", into = "ServiceSpec")]
pub struct ServiceConfig {
    /// Name: lowercase letters, digits and '-', at most 32 characters.
    pub name: String,
    /// Where clients connect, e.g. "127.0.0.1:8080" (see [`listen_addr`] for the forms).
    pub listen: SocketAddr,
    /// `http` or `tcp`.
    pub mode: Mode,
    /// What each VM runs: a guest image or a WebAssembly handler.
    pub workload: Workload,
    /// Guest command line; dust appends `vm=<id>`.
    pub cmdline: String,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// vCPUs of each VM (more than one needs `irqchip`).
    pub vcpus: u8,
    /// Create the in-kernel irqchip, as Linux guests need; unikernels poll without it.
    pub irqchip: bool,
    /// vsock port the guest listens on.
    pub guest_port: u32,
    /// Most VMs of this service alive at once; in HTTP mode also the most HTTP/2 streams one
    /// client connection may have open at once.
    pub max_concurrent: usize,
    /// Requests that may wait for a free slot; beyond it, 503.
    pub queue_depth: usize,
    /// Longest a request waits for a slot before 503.
    pub queue_deadline: Duration,
    /// Longest a request may take from accept to its last byte; then 504 and the VM dies.
    pub request_deadline: Duration,
    /// Pre-started idle workers (VM shells built, never run) kept ready.
    pub pool_size: usize,
    /// Guest serial output (default: discarded).
    pub serial: SerialConfig,
    /// Snapshot mode: boot the image once to its guest's ready in a template VM when the
    /// service is created, and restore every request's VM from that snapshot. The wire
    /// form's default: on for WebAssembly services, off for the others.
    pub snapshot: bool,
    /// Memory limit of each VM's worker (cgroup), MiB; default: guest memory + the
    /// `[jail]` overhead. Past it the kernel kills the worker and the client gets 502.
    pub memory_limit_mib: Option<u32>,
    /// HTTP mode: longest a client may take to send a request head, from its first byte
    /// (or from the connection's opening, for its first request); then the connection is
    /// closed.
    pub header_timeout: Duration,
    /// HTTP mode: longest a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Most client connections open at once; beyond it, HTTP clients get a 503 and TCP
    /// clients a closed connection.
    pub max_connections: usize,
}

/// Defaults of the optional fields, for the config file, the API and the CLI flags alike.
pub mod defaults {
    use std::time::Duration;

    /// `memory_mib`.
    pub const MEMORY_MIB: u32 = vmm::config::DEFAULT_MEMORY_MIB;
    /// `vcpus`.
    pub const VCPUS: u8 = 1;
    /// `guest_port`.
    pub const GUEST_PORT: u32 = 80;
    /// `max_concurrent`.
    pub const MAX_CONCURRENT: usize = 4;
    /// `queue_depth`.
    pub const QUEUE_DEPTH: usize = 256;
    /// `queue_deadline`.
    pub const QUEUE_DEADLINE: Duration = Duration::from_secs(5);
    /// `request_deadline`.
    pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
    /// `pool_size`.
    pub const POOL_SIZE: usize = 2;
    /// `header_timeout`.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// `idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `max_connections`.
    pub const MAX_CONNECTIONS: usize = 1024;
}

/// The most `max_concurrent`, `queue_depth`, `pool_size` and `max_connections` may be: far
/// above any host's means, and below what the semaphores behind them can count.
pub const MAX_COUNT: usize = 1 << 20;

impl ServiceConfig {
    /// A service with defaults for everything but name, address and image.
    pub fn new(name: &str, listen: SocketAddr, image: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            listen,
            mode: Mode::Http,
            workload: Workload::Image(image.into()),
            cmdline: String::new(),
            memory_mib: defaults::MEMORY_MIB,
            vcpus: defaults::VCPUS,
            irqchip: false,
            guest_port: defaults::GUEST_PORT,
            max_concurrent: defaults::MAX_CONCURRENT,
            queue_depth: defaults::QUEUE_DEPTH,
            queue_deadline: defaults::QUEUE_DEADLINE,
            request_deadline: defaults::REQUEST_DEADLINE,
            pool_size: defaults::POOL_SIZE,
            serial: SerialConfig::None,
            snapshot: false,
            memory_limit_mib: None,
            header_timeout: defaults::HEADER_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
        }
    }

    /// A WebAssembly service: `module` run by the default engine, snapshot mode.
    pub fn wasm(name: &str, listen: SocketAddr, module: impl Into<PathBuf>) -> Self {
        Self {
            workload: Workload::Wasm(WasmWorkload {
                module: module.into(),
                engine: Engine::default(),
                fuel: None,
                compiled: None,
                interpreter: None,
            }),
            snapshot: true,
            ..Self::new(name, listen, PathBuf::new())
        }
    }

    /// The WebAssembly handler, for a wasm service.
    pub fn wasm_workload(&self) -> Option<&WasmWorkload> {
        match &self.workload {
            Workload::Wasm(w) => Some(w),
            Workload::Image(_) => None,
        }
    }

    /// The guest image each VM boots: the service's image, for a compiled WebAssembly
    /// service the module's own image (empty until the summoner has compiled it), else the
    /// built-in guest that interprets it: the one the summoner located when it added the
    /// service, or, before that, looked for now (see [`crate::wasm::find_guest_for`];
    /// empty when it is missing, which validation names).
    pub fn image_path(&self) -> PathBuf {
        match &self.workload {
            Workload::Image(i) => i.clone(),
            Workload::Wasm(WasmWorkload {
                compiled: Some(image),
                ..
            })
            | Workload::Wasm(WasmWorkload {
                interpreter: Some(image),
                ..
            }) => image.clone(),
            Workload::Wasm(w) => crate::wasm::find_guest_for(&w.module).unwrap_or_default(),
        }
    }

    /// The VM config of one request's VM.
    pub fn vm_config(&self, vm_id: &str, run_dir: &Path) -> vmm::VmConfig {
        let mut cmdline = if self.cmdline.trim().is_empty() {
            format!("vm={vm_id}")
        } else {
            format!("{} vm={vm_id}", self.cmdline.trim())
        };
        // Fuel and the template's warm-up run are the interpreter's.
        if let Some(w) = self.wasm_workload().filter(|w| w.compiled.is_none()) {
            cmdline = format!("{} {cmdline}", crate::wasm::cmdline(w.fuel, self.snapshot));
        }
        vmm::VmConfig {
            cmdline,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            irqchip: self.irqchip,
            serial: self.serial.clone(),
            // A safety net behind the summoner's own deadline, which kills the worker first.
            timeout: Some(self.request_deadline + Duration::from_secs(5)),
            vsock: Some(vmm::VsockConfig {
                uds: vsock_path(run_dir, vm_id),
            }),
            id: vm_id.to_string(),
            // An interpreted module is the dust-wasm guest's initrd (a compiled one is in
            // its image).
            initrd: self
                .wasm_workload()
                .filter(|w| w.compiled.is_none())
                .map(|w| w.module.clone()),
            ..vmm::VmConfig::new(self.image_path())
        }
    }

    /// How a VM of this service restored from `snapshot` is set up.
    pub fn restore_config(
        &self,
        vm_id: &str,
        run_dir: &Path,
        snapshot: &Path,
    ) -> vmm::RestoreConfig {
        self.vm_config(vm_id, run_dir).restore_from(snapshot)
    }
}

/// Serial files are opened as a jailed worker opens them (see [`vmm::open_serial_file`]).
pub use vmm::open_serial_file;

/// The default log directory of `dust serve`: /var/log/dust as root (the systemd unit's
/// LogsDirectory), else $XDG_STATE_HOME/dust/log, else ~/.local/state/dust/log.
pub fn default_log_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return PathBuf::from("/var/log/dust");
    }
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(d) = absolute(std::env::var_os("XDG_STATE_HOME")) {
        return d.join("dust/log");
    }
    match absolute(std::env::var_os("HOME")) {
        Some(h) => h.join(".local/state/dust/log"),
        // No home: the per-user runtime directory's neighbour, never the cwd.
        None => vmm::runtime_dir().join("log"),
    }
}

/// Where a VM's vsock socket lives.
pub fn vsock_path(run_dir: &Path, vm_id: &str) -> PathBuf {
    run_dir.join(format!("{vm_id}.vsock"))
}

/// A config file: the daemon's settings at the top level, `[jail]`, `[api]` and
/// `[[service]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileConfig {
    /// The daemon's top-level settings; `dust serve` has a flag of the same name for each.
    #[serde(flatten)]
    pub daemon: DaemonConfig,
    /// How workers are jailed (docs/security.md); on by default.
    #[serde(default)]
    pub jail: crate::jail::JailConfig,
    /// The control API (`[api]`); `dust serve` flags override each key.
    #[serde(default)]
    pub api: ApiConfig,
    /// The services.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Keys nobody reads: refused by [`FileConfig::parse`] (serde cannot deny unknown fields
    /// next to a flattened struct).
    #[serde(flatten, skip_serializing)]
    unknown: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

impl FileConfig {
    /// A config file's text, every key known.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        match file.unknown.keys().next() {
            None => Ok(file),
            Some(k) => Err(format!(
                "unknown key `{k}` (expected one of {}, [jail], [api] or [[service]])",
                DaemonConfig::KEYS.join(", ")
            )),
        }
    }
}

#[cfg(test)]
use test_support as host;

#[cfg(test)]
mod tests;
