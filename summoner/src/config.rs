//! Service configuration: plain serde data (TOML file, CLI flags and API bodies all become a
//! [`ServiceConfig`]), validated before anything listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm::SerialConfig;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name: lowercase letters, digits and '-', at most 32 characters.
    pub name: String,
    /// Where clients connect, e.g. "127.0.0.1:8080" (see [`listen_addr`] for the forms).
    #[serde(with = "listen_addr")]
    pub listen: SocketAddr,
    /// `http` or `tcp`.
    #[serde(default)]
    pub mode: Mode,
    /// Guest image (for a `wasm` service: the built-in `dust-wasm` guest when empty).
    #[serde(default)]
    pub image: PathBuf,
    /// Guest command line; dust appends `vm=<id>`.
    #[serde(default)]
    pub cmdline: String,
    /// Guest memory, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// vCPUs of each VM (more than one needs `irqchip`).
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Create the in-kernel irqchip, as Linux guests need; unikernels poll without it.
    #[serde(default)]
    pub irqchip: bool,
    /// vsock port the guest listens on.
    #[serde(default = "default_port")]
    pub guest_port: u32,
    /// Most VMs of this service alive at once; in HTTP mode also the most HTTP/2 streams one
    /// client connection may have open at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrent: usize,
    /// Requests that may wait for a free slot; beyond it, 503.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Longest a request waits for a slot before 503.
    #[serde(default = "default_queue_deadline", with = "service_duration")]
    pub queue_deadline: Duration,
    /// Longest a request may take from accept to its last byte; then 504 and the VM dies.
    #[serde(default = "default_request_deadline", with = "service_duration")]
    pub request_deadline: Duration,
    /// Pre-started idle workers (VM shells built, never run) kept ready.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// Guest serial output (default: discarded).
    #[serde(default = "default_serial")]
    pub serial: SerialConfig,
    /// Snapshot mode: boot the image once to its guest's ready in a template VM when the
    /// service is created, and restore every request's VM from that snapshot. Default: on
    /// for `wasm` services, off for the others (see [`ServiceConfig::snapshot_mode`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
    /// A WebAssembly handler (`wasm32-wasip1` module) run per request by the built-in
    /// `dust-wasm` guest; see docs/wasm.md and `crate::wasm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<PathBuf>,
    /// Fuel per request of a `wasm` service (default `wasm::DEFAULT_FUEL`); out of fuel is 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory limit of each VM's worker (cgroup), MiB; default: guest memory + the
    /// `[jail]` overhead. Past it the kernel kills the worker and the client gets 502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u32>,
    /// HTTP mode: longest a client may take to send a request head, from its first byte
    /// (or from the connection's opening, for its first request); then the connection is
    /// closed.
    #[serde(default = "default_header_timeout", with = "service_duration")]
    pub header_timeout: Duration,
    /// HTTP mode: longest a keep-alive connection may sit idle between requests.
    #[serde(default = "default_idle_timeout", with = "service_duration")]
    pub idle_timeout: Duration,
    /// Most client connections open at once; beyond it, HTTP clients get a 503 and TCP
    /// clients a closed connection.
    #[serde(default = "default_max_connections")]
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

fn default_memory() -> u32 {
    defaults::MEMORY_MIB
}
fn default_vcpus() -> u8 {
    defaults::VCPUS
}
fn default_port() -> u32 {
    defaults::GUEST_PORT
}
fn default_concurrency() -> usize {
    defaults::MAX_CONCURRENT
}
fn default_queue_depth() -> usize {
    defaults::QUEUE_DEPTH
}
fn default_queue_deadline() -> Duration {
    defaults::QUEUE_DEADLINE
}
fn default_request_deadline() -> Duration {
    defaults::REQUEST_DEADLINE
}
fn default_pool() -> usize {
    defaults::POOL_SIZE
}
fn default_header_timeout() -> Duration {
    defaults::HEADER_TIMEOUT
}
fn default_idle_timeout() -> Duration {
    defaults::IDLE_TIMEOUT
}
fn default_max_connections() -> usize {
    defaults::MAX_CONNECTIONS
}
fn default_serial() -> SerialConfig {
    SerialConfig::None
}

/// serde for `Duration` as a humantime string.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?} ({e}); use e.g. \"2s\""))
        })
    }
}

/// The durations of a service: one to six parts, each 1-10 digits and a unit (`ns`, `us`,
/// `ms`, `s`, `m`, `h`), optionally one space between parts: "250ms", "1m 30s", "1h".
/// Narrower than humantime on purpose, so that the API spec can state it as a pattern
/// ([`DURATION_PATTERN`]) that the parser matches exactly; it is also what the daemon
/// writes back. The digit and part limits keep every value far below an overflow.
pub mod service_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    const UNITS: [&str; 6] = ["ns", "us", "ms", "s", "m", "h"];

    /// Does `s` follow the grammar? (Does not check the range.)
    pub fn well_formed(s: &str) -> bool {
        let mut rest = s;
        let mut parts = 0;
        while !rest.is_empty() {
            if parts > 0 {
                rest = rest.strip_prefix(' ').unwrap_or(rest);
            }
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if !(1..=10).contains(&digits) {
                return false;
            }
            rest = &rest[digits..];
            let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            if !UNITS.contains(&&rest[..letters]) {
                return false;
            }
            rest = &rest[letters..];
            parts += 1;
        }
        (1..=6).contains(&parts)
    }

    /// `s` as a duration, or why not.
    pub fn parse(s: &str) -> Result<Duration, String> {
        if !well_formed(s) {
            return Err(format!(
                "invalid duration {s:?}: use numbers with units ns, us, ms, s, m or h, \
                 e.g. \"250ms\", \"5s\" or \"1m 30s\""
            ));
        }
        humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e})"))
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        super::humantime_serde::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The grammar of [`service_duration`] as an ECMA-262 regular expression, as
/// `docs/api/openapi.yaml` states it (a test holds the two together).
pub const DURATION_PATTERN: &str =
    "^[0-9]{1,10}(ns|us|ms|s|m|h)( ?[0-9]{1,10}(ns|us|ms|s|m|h)){0,5}$";

/// A service's `listen`: `a.b.c.d:port` or `[ipv6]:port`, written plainly: no leading zeros
/// in the port (Rust's parser would take `:080`), no `%zone` and no embedded IPv4 in an
/// IPv6 address. What is left is exactly what the API spec's pattern describes.
pub mod listen_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// `s` as a listen address, or why not.
    pub fn parse(s: &str) -> Result<SocketAddr, String> {
        let bad = || {
            format!(
                "invalid listen address {s:?}: use ip:port, e.g. \"127.0.0.1:8080\" or \
                 \"[::1]:8080\" (port 0-65535 without leading zeros)"
            )
        };
        let addr: SocketAddr = s.parse().map_err(|_| bad())?;
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let plain_port = port == "0" || !port.starts_with('0');
        let plain_host = !host.starts_with('[') || !host.contains(['%', '.']);
        if !plain_port || !plain_host {
            return Err(bad());
        }
        Ok(addr)
    }

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The most `max_concurrent`, `queue_depth`, `pool_size` and `max_connections` may be: far
/// above any host's means, and below what the semaphores behind them can count.
pub const MAX_COUNT: usize = 1 << 20;

/// A service config that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceConfigError {
    /// Bad name.
    #[error("service name {0:?}: use 1-32 lowercase letters, digits and '-'")]
    Name(String),
    /// Image missing or unreadable.
    #[error("service {name}: image {path}: {why}")]
    Image {
        /// Service.
        name: String,
        /// Path.
        path: String,
        /// Why.
        why: String,
    },
    /// A zero where at least one is needed.
    #[error("service {name}: {field} must be at least 1")]
    Zero {
        /// Service.
        name: String,
        /// Field.
        field: &'static str,
    },
    /// A count above [`MAX_COUNT`].
    #[error("service {name}: {field} {value} is larger than {MAX_COUNT}")]
    TooLarge {
        /// Service.
        name: String,
        /// Field.
        field: &'static str,
        /// The value.
        value: usize,
    },
    /// A duration out of its range.
    #[error("service {name}: {field} must be between 10ms and 1h")]
    DurationRange {
        /// Service.
        name: String,
        /// Field.
        field: &'static str,
    },
    /// The WebAssembly module cannot be served.
    #[error("service {name}: wasm module {path}: {source}")]
    Wasm {
        /// Service.
        name: String,
        /// Module path.
        path: String,
        /// Why.
        #[source]
        source: crate::wasm::WasmError,
    },
    /// A vsock port out of range.
    #[error("service {name}: guest_port {0} must be between 1 and 65535", .port)]
    GuestPort {
        /// Service.
        name: String,
        /// The port.
        port: u32,
    },
    /// A command line a guest cannot take.
    #[error("service {name}: cmdline must not contain control characters")]
    Cmdline {
        /// Service.
        name: String,
    },
    /// More idle shells than VMs the service may run.
    #[error("service {name}: pool_size {pool} is larger than max_concurrent {max}")]
    PoolTooBig {
        /// Service.
        name: String,
        /// pool_size.
        pool: usize,
        /// max_concurrent.
        max: usize,
    },
    /// A serial file a daemon's service may not write: the daemon writes these as root,
    /// so they go only into its log directory.
    #[error("service {name}: serial file {problem}: use a file name in the log directory ({dir})")]
    SerialFile {
        /// Service.
        name: String,
        /// What is wrong with it.
        problem: String,
        /// The daemon's log directory.
        dir: String,
    },
    /// The VM part is invalid.
    #[error("service {name}: {source}")]
    Vm {
        /// Service.
        name: String,
        /// Cause.
        #[source]
        source: vmm::ConfigError,
    },
}

/// The range of every duration of a service.
pub const DURATIONS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);

impl ServiceConfig {
    /// A service with defaults for everything but name, address and image.
    pub fn new(name: &str, listen: SocketAddr, image: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            listen,
            mode: Mode::Http,
            image: image.into(),
            cmdline: String::new(),
            memory_mib: default_memory(),
            vcpus: default_vcpus(),
            irqchip: false,
            guest_port: default_port(),
            max_concurrent: default_concurrency(),
            queue_depth: default_queue_depth(),
            queue_deadline: default_queue_deadline(),
            request_deadline: default_request_deadline(),
            pool_size: default_pool(),
            serial: default_serial(),
            snapshot: None,
            memory_limit_mib: None,
            wasm: None,
            fuel: None,
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
        }
    }

    /// A WebAssembly service: `module` run by the built-in `dust-wasm` guest, snapshot mode.
    pub fn wasm(name: &str, listen: SocketAddr, module: impl Into<PathBuf>) -> Self {
        Self {
            wasm: Some(module.into()),
            ..Self::new(name, listen, PathBuf::new())
        }
    }

    /// Whether VMs are restored from a template (the default for `wasm` services).
    pub fn snapshot_mode(&self) -> bool {
        self.snapshot.unwrap_or(self.wasm.is_some())
    }

    /// The guest image: `image`, or for a `wasm` service without one the built-in guest.
    pub fn image_path(&self) -> PathBuf {
        match (&self.wasm, self.image.as_os_str().is_empty()) {
            (Some(_), true) => crate::wasm::find_guest().unwrap_or_default(),
            _ => self.image.clone(),
        }
    }

    /// Check everything short of binding the port and booting.
    pub fn validate(&self) -> Result<(), ServiceConfigError> {
        let name = self.name.clone();
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok_name {
            return Err(ServiceConfigError::Name(name));
        }
        let image = self.image_path();
        let why = match std::fs::metadata(&image) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some("not a regular file".to_string()),
            Err(_) if self.wasm.is_some() && image.as_os_str().is_empty() => Some(format!(
                "the built-in {} guest is missing (run scripts/build-guests, or set \
                 DUST_GUEST_DIR)",
                crate::wasm::GUEST
            )),
            Err(_) if image.as_os_str().is_empty() => {
                Some("no image given (give `image`, or `wasm` for a WebAssembly handler)".into())
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            let path = image.display().to_string();
            return Err(ServiceConfigError::Image { name, path, why });
        }
        for (field, n) in [
            ("max_concurrent", self.max_concurrent),
            ("max_connections", self.max_connections),
        ] {
            if n == 0 {
                return Err(ServiceConfigError::Zero { name, field });
            }
        }
        for (field, value) in [
            ("max_concurrent", self.max_concurrent),
            ("queue_depth", self.queue_depth),
            ("pool_size", self.pool_size),
            ("max_connections", self.max_connections),
        ] {
            if value > MAX_COUNT {
                return Err(ServiceConfigError::TooLarge { name, field, value });
            }
        }
        if self.fuel == Some(0) {
            return Err(ServiceConfigError::Zero {
                name,
                field: "fuel",
            });
        }
        if let Some(module) = &self.wasm {
            crate::wasm::check_file(module, self.memory_mib).map_err(|source| {
                ServiceConfigError::Wasm {
                    name: name.clone(),
                    path: module.display().to_string(),
                    source,
                }
            })?;
        }
        if self.memory_limit_mib == Some(0) {
            return Err(ServiceConfigError::Zero {
                name,
                field: "memory_limit_mib",
            });
        }
        if self.pool_size > self.max_concurrent {
            return Err(ServiceConfigError::PoolTooBig {
                name,
                pool: self.pool_size,
                max: self.max_concurrent,
            });
        }
        for (field, d) in [
            ("queue_deadline", self.queue_deadline),
            ("request_deadline", self.request_deadline),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if !DURATIONS.contains(&d) {
                return Err(ServiceConfigError::DurationRange { name, field });
            }
        }
        if !(1..=65535).contains(&self.guest_port) {
            return Err(ServiceConfigError::GuestPort {
                name,
                port: self.guest_port,
            });
        }
        if self.cmdline.chars().any(char::is_control) {
            return Err(ServiceConfigError::Cmdline { name });
        }
        if let SerialConfig::File(p) = &self.serial {
            // The shape alone; where it may go is the daemon's (`serial_path`).
            if let Err(problem) = serial_in(Path::new("/"), p, true) {
                return Err(ServiceConfigError::SerialFile {
                    name,
                    problem: problem.into(),
                    dir: "the daemon's log_dir".into(),
                });
            }
        }
        self.vm_config("check", Path::new("/"))
            .validate()
            .map_err(|source| ServiceConfigError::Vm {
                name: name.clone(),
                source,
            })?;
        // As the worker's loader will see it, so that an image that can never boot is
        // refused now instead of failing every request.
        if let Err(e) = vmm::check_image(&image, self.memory_mib) {
            return Err(ServiceConfigError::Image {
                name,
                path: image.display().to_string(),
                why: e.to_string(),
            });
        }
        Ok(())
    }

    /// Where a daemon whose log directory is `log_dir` writes this service's serial output:
    /// `None` without a serial file, else the file in `log_dir` the config names, as a
    /// plain file name or as a path directly inside `log_dir`.
    pub fn serial_path(&self, log_dir: &Path) -> Result<Option<PathBuf>, ServiceConfigError> {
        let SerialConfig::File(p) = &self.serial else {
            return Ok(None);
        };
        serial_in(log_dir, p, false)
            .map(Some)
            .map_err(|problem| ServiceConfigError::SerialFile {
                name: self.name.clone(),
                problem: problem.into(),
                dir: log_dir.display().to_string(),
            })
    }

    /// The VM config of one request's VM.
    pub fn vm_config(&self, vm_id: &str, run_dir: &Path) -> vmm::VmConfig {
        let mut cmdline = if self.cmdline.trim().is_empty() {
            format!("vm={vm_id}")
        } else {
            format!("{} vm={vm_id}", self.cmdline.trim())
        };
        if self.wasm.is_some() {
            cmdline = format!(
                "{} {cmdline}",
                crate::wasm::cmdline(self.fuel, self.snapshot_mode())
            );
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
            // A wasm service's module is the dust-wasm guest's initrd.
            initrd: self.wasm.clone(),
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
        let boot = self.vm_config(vm_id, run_dir);
        vmm::RestoreConfig {
            snapshot: snapshot.to_path_buf(),
            id: boot.id,
            vsock: boot.vsock,
            serial: boot.serial,
            timeout: boot.timeout,
        }
    }
}

/// `file` resolved in `log_dir`, or what is wrong with it. Only a file directly in
/// `log_dir` passes: with no directory between, the one symlink that could lead out is the
/// file itself, which [`open_serial_file`] refuses to follow. `shape_only` skips the
/// check that an absolute path lies in `log_dir`.
pub fn serial_in(log_dir: &Path, file: &Path, shape_only: bool) -> Result<PathBuf, &'static str> {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let bytes = file.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err("is empty");
    }
    if bytes.contains(&0) {
        return Err("contains a NUL byte");
    }
    if file.components().any(|c| c == Component::ParentDir) {
        return Err("must not contain \"..\"");
    }
    let rel = match (file.is_absolute(), shape_only) {
        (true, true) => return Ok(file.to_path_buf()),
        (true, false) => file
            .strip_prefix(log_dir)
            .map_err(|_| "is outside the log directory")?,
        (false, _) => file,
    };
    let mut parts = rel.components().filter(|c| *c != Component::CurDir);
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(name)), None) => Ok(log_dir.join(name)),
        (None, _) => Err("names the log directory itself"),
        _ => Err("must be a file directly in the log directory (no subdirectories)"),
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

/// A config file: `[[service]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where per-VM sockets go (default: /run/dust as root, else $XDG_RUNTIME_DIR/dust).
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// Where services' serial files go (default: /var/log/dust as root, else
    /// $XDG_STATE_HOME/dust/log or ~/.local/state/dust/log).
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Where `/healthz`, `/readyz` and `/livez` are served for load balancers (default:
    /// nowhere).
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// After SIGTERM or `POST /v1/drain`, how long services keep accepting while health
    /// already says 503, so that balancers stop sending first (default: 0).
    #[serde(default, with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How workers are jailed (docs/security.md); on by default.
    #[serde(default)]
    pub jail: crate::jail::JailConfig,
    /// Most worker processes (idle shells and running VMs of all services) at once
    /// (default: as many default-sized VMs as the host's memory holds).
    #[serde(default)]
    pub max_vms: Option<usize>,
    /// Where the services created through the control API and uploaded artifacts are kept
    /// (default: /var/lib/dust as root, else $XDG_STATE_HOME/dust); `--state-dir`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The control API (`[api]`); `dust serve` flags override each key.
    #[serde(default)]
    pub api: ApiFileConfig,
    /// The services.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// `[api]` of a config file: where the control API listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFileConfig {
    /// The Unix socket (default: /run/dust/api.sock as root, else
    /// $XDG_RUNTIME_DIR/dust/api.sock); `--api-socket`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Also serve the API on TCP here, every request with a bearer token; `--api-tcp`.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// The file holding that token (read at start, surrounding whitespace trimmed; it must
    /// not be readable by every user). `$DUST_API_TOKEN`, if set, wins over it.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Largest artifact upload, MiB (default 64); `--api-max-upload-mib`.
    #[serde(default)]
    pub max_upload_mib: Option<usize>,
}

#[cfg(test)]
#[path = "../../tests/common/host.rs"]
mod host;

#[cfg(test)]
mod tests;
