//! The flags that describe a service, shared by `dust serve --image` and
//! `dust services add`: one set of names, the defaults of [`summoner::config::defaults`].

use std::time::Duration;

use clap::Args;
use summoner::config::defaults;
use summoner::{Mode, ServiceConfig};

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
    /// vCPUs of each VM (more than one needs --irqchip).
    #[arg(long, default_value_t = defaults::VCPUS)]
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
    #[arg(long, default_value_t = defaults::QUEUE_DEADLINE.into())]
    pub queue_deadline: humantime::Duration,
    /// Longest a request may take, e.g. 10s (then 504).
    #[arg(long, default_value_t = defaults::REQUEST_DEADLINE.into())]
    pub request_deadline: humantime::Duration,
    /// Pre-built idle VM shells kept ready.
    #[arg(long, default_value_t = defaults::POOL_SIZE)]
    pub pool: usize,
    /// Snapshot mode: boot the image once, at creation, to its guest's ready() and restore
    /// every request's VM from that snapshot (docs/snapshots.md). Always on for --wasm.
    #[arg(long)]
    pub snapshot: bool,
}

impl ServiceFlags {
    /// The service these flags describe.
    pub fn config(
        &self,
        name: &str,
        listen: std::net::SocketAddr,
        image: std::path::PathBuf,
    ) -> ServiceConfig {
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
            snapshot: self.snapshot.then_some(true),
            ..ServiceConfig::new(name, listen, image)
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
            flags.config("a", addr, "/img".into()),
            ServiceConfig::new("a", addr, "/img")
        );
        let flags = Cli::parse_from(["x", "--mode", "tcp", "--vcpus", "2", "--irqchip"]).flags;
        let c = flags.config("a", addr, "/img".into());
        assert_eq!((c.mode, c.vcpus, c.irqchip), (Mode::Tcp, 2, true));
        assert!(Cli::try_parse_from(["x", "--mode", "udp"]).is_err());
    }
}
