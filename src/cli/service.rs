//! The flags that describe a service, shared by `dust serve --image` and
//! `dust services add`: one set of names, the defaults of [`summoner::config::defaults`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use summoner::config::{defaults, service_duration, Engine, WasmWorkload, Workload};
use summoner::{Mode, ServiceConfig};
use vmm::SerialConfig;

/// A duration flag: the grammar the config file and the API take ("250ms", "1m 30s").
fn duration(s: &str) -> Result<humantime::Duration, String> {
    service_duration::parse(s).map(Into::into)
}

/// `--serial none|stdout|file:NAME`.
fn serial(s: &str) -> Result<SerialConfig, String> {
    match s {
        "none" => Ok(SerialConfig::None),
        "stdout" => Ok(SerialConfig::Stdout),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialConfig::File(PathBuf::from(path))),
            _ => Err(format!("{s:?}: use none, stdout or file:PATH")),
        },
    }
}

/// The WebAssembly flags, the same on `dust serve`, `dust services add/replace` and
/// `dust run`.
#[derive(Args, Debug, Clone, Default)]
pub struct WasmFlags {
    /// A WebAssembly handler (a wasm32-wasip1 WAGI module, or a wasi:http/proxy component)
    /// run by a dust guest on each request (docs/wasm.md); its service defaults to snapshot
    /// mode.
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// What runs the handler: aot (compiled ahead of time into its own guest) or
    /// interpreter (wasmi in the built-in guest; counts fuel).
    #[arg(long, requires = "wasm", value_name = "ENGINE")]
    pub engine: Option<Engine>,
    /// Fuel per request, interpreter only (out of fuel: 504).
    #[arg(long, requires = "wasm")]
    pub fuel: Option<u64>,
}

impl WasmFlags {
    /// The workload these flags describe, with `module` as the handler (resolved by the
    /// caller).
    pub fn workload(&self, module: PathBuf) -> Workload {
        Workload::Wasm(WasmWorkload {
            module,
            engine: self.engine.unwrap_or_default(),
            fuel: self.fuel,
            compiled: None,
            interpreter: None,
        })
    }
}

/// A service's settings beyond its name, address and image.
#[derive(Args, Debug, Clone)]
pub struct ServiceFlags {
    /// http: one VM per request; tcp: one VM per connection.
    #[arg(long, default_value_t = Mode::Http)]
    pub mode: Mode,
    /// vsock port the guest listens on.
    #[arg(long, default_value_t = defaults::GUEST_PORT)]
    pub guest_port: u32,
    /// Guest command line (dust appends vm=<id>).
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest memory, MiB.
    #[arg(long = "mem", default_value_t = defaults::MEMORY_MIB)]
    pub memory_mib: u32,
    /// vCPUs of each VM, 1 to 32 (more than one needs --irqchip).
    #[arg(long, default_value_t = defaults::VCPUS, value_parser = super::vcpus_range())]
    pub vcpus: u8,
    /// Create the in-kernel irqchip (needed by Linux; unikernels poll without it).
    #[arg(long)]
    pub irqchip: bool,
    /// Most VMs of the service alive at once.
    #[arg(long, default_value_t = defaults::MAX_CONCURRENT)]
    pub max_concurrent: usize,
    /// Requests that may wait for a slot (beyond: 503).
    #[arg(long, default_value_t = defaults::QUEUE_DEPTH)]
    pub queue_depth: usize,
    /// Longest wait for a slot, e.g. 5s.
    #[arg(long, default_value_t = defaults::QUEUE_DEADLINE.into(), value_parser = duration)]
    pub queue_deadline: humantime::Duration,
    /// Longest a request may take, e.g. 10s (then 504).
    #[arg(long, default_value_t = defaults::REQUEST_DEADLINE.into(), value_parser = duration)]
    pub request_deadline: humantime::Duration,
    /// HTTP mode: longest a client may take to send a request head.
    #[arg(long, default_value_t = defaults::HEADER_TIMEOUT.into(), value_parser = duration)]
    pub header_timeout: humantime::Duration,
    /// HTTP mode: longest a keep-alive connection may sit idle between requests.
    #[arg(long, default_value_t = defaults::IDLE_TIMEOUT.into(), value_parser = duration)]
    pub idle_timeout: humantime::Duration,
    /// Most client connections open at once (beyond: 503, or a closed TCP connection).
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Memory limit of each VM's worker process, MiB (default: guest memory + the jail's
    /// overhead).
    #[arg(long, value_name = "MIB")]
    pub memory_limit: Option<u32>,
    /// Guest serial output: none, stdout (the daemon's) or file:NAME, a file in the daemon's
    /// log directory (--log-dir).
    #[arg(long, default_value = "none", value_parser = serial)]
    pub serial: SerialConfig,
    /// Pre-built idle VM shells kept ready.
    #[arg(long, default_value_t = defaults::POOL_SIZE)]
    pub pool: usize,
    /// Snapshot mode: boot the image once, at creation, to its guest's ready() and restore
    /// every request's VM from that snapshot (docs/snapshots.md). Always on for --wasm.
    #[arg(long)]
    pub snapshot: bool,
}

impl ServiceFlags {
    /// The service these flags describe, running `workload`.
    pub fn config(
        &self,
        name: &str,
        listen: std::net::SocketAddr,
        workload: Workload,
    ) -> ServiceConfig {
        let wasm = matches!(workload, Workload::Wasm(_));
        ServiceConfig {
            mode: self.mode,
            guest_port: self.guest_port,
            cmdline: self.cmdline.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            irqchip: self.irqchip,
            max_concurrent: self.max_concurrent,
            queue_depth: self.queue_depth,
            queue_deadline: Duration::from(self.queue_deadline),
            request_deadline: Duration::from(self.request_deadline),
            pool_size: self.pool,
            snapshot: self.snapshot || wasm,
            workload,
            header_timeout: Duration::from(self.header_timeout),
            idle_timeout: Duration::from(self.idle_timeout),
            max_connections: self.max_connections,
            memory_limit_mib: self.memory_limit,
            serial: self.serial.clone(),
            ..ServiceConfig::new(name, listen, PathBuf::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ServiceFlags,
    }

    #[test]
    fn no_flags_give_the_config_file_defaults() {
        let addr = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let flags = Cli::parse_from(["x"]).flags;
        assert_eq!(
            flags.config("a", addr, Workload::Image("/img".into())),
            ServiceConfig::new("a", addr, "/img")
        );
        let flags = Cli::parse_from(["x", "--mode", "tcp", "--vcpus", "2", "--irqchip"]).flags;
        let c = flags.config("a", addr, Workload::Image("/img".into()));
        assert_eq!((c.mode, c.vcpus, c.irqchip), (Mode::Tcp, 2, true));
        assert!(Cli::try_parse_from(["x", "--mode", "udp"]).is_err());
    }

    #[test]
    fn every_operator_setting_has_a_flag() {
        let addr = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let flags = Cli::parse_from([
            "x",
            "--mem",
            "48",
            "--pool",
            "1",
            "--queue-depth",
            "9",
            "--queue-deadline",
            "1s",
            "--request-deadline",
            "2s",
            "--header-timeout",
            "3s",
            "--idle-timeout",
            "1m 30s",
            "--max-connections",
            "7",
            "--memory-limit",
            "100",
            "--serial",
            "file:/var/log/x.log",
            "--snapshot",
        ])
        .flags;
        let c = flags.config("a", addr, Workload::Image("/img".into()));
        assert_eq!((c.memory_mib, c.pool_size, c.queue_depth), (48, 1, 9));
        assert_eq!(
            (c.queue_deadline, c.request_deadline, c.header_timeout),
            (
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3)
            )
        );
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!((c.max_connections, c.memory_limit_mib), (7, Some(100)));
        assert_eq!(c.serial, SerialConfig::File("/var/log/x.log".into()));
        assert!(c.snapshot);
        for s in ["none", "stdout"] {
            assert!(Cli::try_parse_from(["x", "--serial", s]).is_ok(), "{s}");
        }
        for bad in [
            ["--serial", "file:"],
            ["--serial", "tty"],
            ["--idle-timeout", "2min"],
            ["--queue-deadline", "1.5s"],
        ] {
            let e = Cli::try_parse_from(["x", bad[0], bad[1]])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(e.to_string().contains(bad[1]), "{e}");
        }
    }
}
