//! What a service runs, as a type: a guest image, or a WebAssembly handler with its engine
//! and limits. TOML, API bodies and CLI flags keep the flat keys (`image`, `wasm`, `engine`,
//! `fuel`, `snapshot`); [`ServiceSpec`] is that wire form, and turning it into a
//! [`super::ServiceConfig`] refuses the combinations that mean nothing (an image and a module
//! together, fuel or an engine without a module).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm::SerialConfig;

use super::parse::{listen_addr, service_duration};
use super::{defaults, Mode, ServiceConfig};

/// What each VM of a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// A guest image (an x86_64 ELF or a bzImage) on the daemon's host.
    Image(PathBuf),
    /// A WebAssembly handler run per request by a dust guest (docs/wasm.md).
    Wasm(WasmWorkload),
}

/// A WebAssembly handler and how it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmWorkload {
    /// The `wasm32-wasip1` module on the daemon's host.
    pub module: PathBuf,
    /// What executes it.
    pub engine: Engine,
    /// Fuel per request (interpreter only; default [`dust_abi::wasm::DEFAULT_FUEL`]).
    pub fuel: Option<u64>,
    /// The module's guest image, once the summoner has compiled it (engine `aot`; see
    /// [`crate::wasm::aot`]). Never part of the wire form.
    pub compiled: Option<PathBuf>,
    /// The built-in guest that interprets the module (`dust-wasm`, or `dust-component` for
    /// a component), located once when the summoner adds the service, so that no spawn
    /// reads the module or searches for it. Never part of the wire form.
    pub interpreter: Option<PathBuf>,
}

impl WasmWorkload {
    /// Whether the AOT engine compiles this handler: engine `aot` and a core module
    /// (components run on the interpreter for now; docs/wasm.md). Reads the module's header.
    pub fn compiles(&self) -> bool {
        self.engine == Engine::Aot && !crate::component::is_component_file(&self.module)
    }

    /// The engine that actually runs the handler: `aot` once compiled, `interpreter` when
    /// it is interpreted (asked for, or a component, which the AOT engine does not
    /// compile yet). Before the summoner resolved it, reads the module's header.
    pub fn running_engine(&self) -> Engine {
        match (&self.compiled, &self.interpreter) {
            (Some(_), _) => Engine::Aot,
            (None, Some(_)) => Engine::Interpreter,
            (None, None) if self.compiles() => Engine::Aot,
            (None, None) => Engine::Interpreter,
        }
    }
}

/// What executes a WebAssembly handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Compiled ahead of time into a guest image of its own (the default).
    #[default]
    Aot,
    /// The wasmi interpreter inside the built-in `dust-wasm` guest; counts fuel.
    Interpreter,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Aot => "aot",
            Engine::Interpreter => "interpreter",
        })
    }
}

/// An engine name that is neither `aot` nor `interpreter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("engine {0:?}: use aot or interpreter")]
pub struct UnknownEngine(String);

impl std::str::FromStr for Engine {
    type Err = UnknownEngine;

    fn from_str(s: &str) -> Result<Self, UnknownEngine> {
        use serde::de::value::{Error, StrDeserializer};
        Self::deserialize(StrDeserializer::<Error>::new(s)).map_err(|_| UnknownEngine(s.into()))
    }
}

/// Keys of a service that do not go together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// Neither an image nor a module.
    #[error("give `image` (a guest image) or `wasm` (a WebAssembly handler)")]
    Nothing,
    /// Both an image and a module.
    #[error("give `image` or `wasm`, not both: a WebAssembly handler runs in dust's own guest")]
    Both,
    /// A wasm-only key on an image service.
    #[error("`{0}` applies to WebAssembly services only (with `wasm`)")]
    WasmOnly(&'static str),
}

/// A service as TOML tables and API bodies spell it: flat keys, defaults filled in by
/// serde. Only [`ServiceConfig`] is used past parsing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    name: String,
    #[serde(with = "listen_addr")]
    listen: SocketAddr,
    #[serde(default)]
    mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<PathBuf>,
    #[serde(default)]
    cmdline: String,
    #[serde(default = "d::memory")]
    memory_mib: u32,
    #[serde(default = "d::vcpus")]
    vcpus: u8,
    #[serde(default)]
    irqchip: bool,
    #[serde(default = "d::port")]
    guest_port: u32,
    #[serde(default = "d::concurrency")]
    max_concurrent: usize,
    #[serde(default = "d::queue_depth")]
    queue_depth: usize,
    #[serde(default = "d::queue_deadline", with = "service_duration")]
    queue_deadline: Duration,
    #[serde(default = "d::request_deadline", with = "service_duration")]
    request_deadline: Duration,
    #[serde(default = "d::pool")]
    pool_size: usize,
    #[serde(default = "d::serial")]
    serial: SerialConfig,
    #[serde(default)]
    snapshot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wasm: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    engine: Option<Engine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_limit_mib: Option<u32>,
    #[serde(default = "d::header_timeout", with = "service_duration")]
    header_timeout: Duration,
    #[serde(default = "d::idle_timeout", with = "service_duration")]
    idle_timeout: Duration,
    #[serde(default = "d::max_connections")]
    max_connections: usize,
}

/// serde's defaults: the constants of [`defaults`].
mod d {
    use super::defaults;
    use std::time::Duration;
    use vmm::SerialConfig;

    pub fn memory() -> u32 {
        defaults::MEMORY_MIB
    }
    pub fn vcpus() -> u8 {
        defaults::VCPUS
    }
    pub fn port() -> u32 {
        defaults::GUEST_PORT
    }
    pub fn concurrency() -> usize {
        defaults::MAX_CONCURRENT
    }
    pub fn queue_depth() -> usize {
        defaults::QUEUE_DEPTH
    }
    pub fn queue_deadline() -> Duration {
        defaults::QUEUE_DEADLINE
    }
    pub fn request_deadline() -> Duration {
        defaults::REQUEST_DEADLINE
    }
    pub fn pool() -> usize {
        defaults::POOL_SIZE
    }
    pub fn header_timeout() -> Duration {
        defaults::HEADER_TIMEOUT
    }
    pub fn idle_timeout() -> Duration {
        defaults::IDLE_TIMEOUT
    }
    pub fn max_connections() -> usize {
        defaults::MAX_CONNECTIONS
    }
    pub fn serial() -> SerialConfig {
        SerialConfig::None
    }
}

impl ServiceSpec {
    fn workload(&mut self) -> Result<Workload, WorkloadError> {
        let image = self.image.take().filter(|i| !i.as_os_str().is_empty());
        match (image, self.wasm.take()) {
            (Some(_), Some(_)) => Err(WorkloadError::Both),
            (None, Some(module)) => Ok(Workload::Wasm(WasmWorkload {
                interpreter: None,
                module,
                engine: self.engine.unwrap_or_default(),
                fuel: self.fuel,
                compiled: None,
            })),
            (image, None) => {
                if self.fuel.is_some() {
                    return Err(WorkloadError::WasmOnly("fuel"));
                }
                if self.engine.is_some() {
                    return Err(WorkloadError::WasmOnly("engine"));
                }
                // An empty image is the validator's to name (422), as a missing file is.
                Ok(Workload::Image(image.unwrap_or_default()))
            }
        }
    }
}

impl TryFrom<ServiceSpec> for ServiceConfig {
    type Error = WorkloadError;

    fn try_from(mut s: ServiceSpec) -> Result<Self, WorkloadError> {
        if s.image.is_none() && s.wasm.is_none() {
            return Err(WorkloadError::Nothing);
        }
        let workload = s.workload()?;
        let snapshot = s.snapshot.unwrap_or(matches!(workload, Workload::Wasm(_)));
        Ok(ServiceConfig {
            name: s.name,
            listen: s.listen,
            mode: s.mode,
            workload,
            cmdline: s.cmdline,
            memory_mib: s.memory_mib,
            vcpus: s.vcpus,
            irqchip: s.irqchip,
            guest_port: s.guest_port,
            max_concurrent: s.max_concurrent,
            queue_depth: s.queue_depth,
            queue_deadline: s.queue_deadline,
            request_deadline: s.request_deadline,
            pool_size: s.pool_size,
            serial: s.serial,
            snapshot,
            memory_limit_mib: s.memory_limit_mib,
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
        })
    }
}

impl From<ServiceConfig> for ServiceSpec {
    fn from(c: ServiceConfig) -> Self {
        let (image, wasm, engine, fuel) = match c.workload {
            Workload::Image(i) => (Some(i), None, None, None),
            Workload::Wasm(w) => (None, Some(w.module), Some(w.engine), w.fuel),
        };
        ServiceSpec {
            name: c.name,
            listen: c.listen,
            mode: c.mode,
            image,
            cmdline: c.cmdline,
            memory_mib: c.memory_mib,
            vcpus: c.vcpus,
            irqchip: c.irqchip,
            guest_port: c.guest_port,
            max_concurrent: c.max_concurrent,
            queue_depth: c.queue_depth,
            queue_deadline: c.queue_deadline,
            request_deadline: c.request_deadline,
            pool_size: c.pool_size,
            serial: c.serial,
            snapshot: Some(c.snapshot),
            wasm,
            engine,
            fuel,
            memory_limit_mib: c.memory_limit_mib,
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
            max_connections: c.max_connections,
        }
    }
}
