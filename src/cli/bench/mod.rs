//! `dust bench`: cold-start numbers that are easy to reproduce and honest.
//!
//! - `dust bench [URL]`: drive a service (or, without a URL, an embedded `serve` of the
//!   built-in hello service) and report client latency and the server's phases.
//! - `dust bench boot [--peers]`: process spawn -> guest ready, dust vs QEMU microvm and
//!   Firecracker.
//! - `dust bench jail`: the worker jail's cost, on the request path and per shell.

mod boot;
mod http;
mod jail;
mod report;
mod resident;
mod stats;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use dust_abi::status;

/// Flags of `dust bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
    /// Service URL (http://host:port/path). Without it, dust starts the built-in hello
    /// service itself on a free port and drives that.
    pub url: Option<String>,
    /// Measured requests.
    #[arg(short = 'n', long, default_value_t = 500)]
    pub requests: usize,
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub concurrency: usize,
    /// Unmeasured requests first.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// JSON report path (schema dust-bench/1, docs/benchmarks.md).
    #[arg(long, default_value = "dust-bench.json")]
    pub json: PathBuf,
    /// SVG plot path.
    #[arg(long, default_value = "dust-bench.svg")]
    pub svg: PathBuf,
    /// Embedded service: pre-built shells kept ready.
    #[arg(long, default_value_t = 2)]
    pub pool: usize,
    /// Embedded service: concurrency limit.
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
    /// Embedded service: snapshot mode (every VM restored from a template taken at start).
    #[arg(long)]
    pub snapshot: bool,
}

/// `dust bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Process spawn -> guest ready and -> exit, dust vs. peers.
    Boot(BootArgs),
    /// What the worker jail costs: host-side request time and shell build, with and without.
    Jail(jail::JailArgs),
}

/// Flags of `dust bench boot`.
#[derive(Args, Debug)]
pub struct BootArgs {
    /// Guest image (default: the hello guest).
    pub image: Option<PathBuf>,
    /// Boots per contender.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub runs: usize,
    /// Also boot the image with QEMU -M microvm and Firecracker (`firecracker` on PATH or
    /// $FIRECRACKER), each when installed.
    #[arg(long)]
    pub peers: bool,
    /// The Firecracker binary to compare with (implies --peers; overrides $FIRECRACKER).
    #[arg(long, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
    /// JSON output path.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Pause before every timed run, every contender alike (e.g. 20ms, 0s), so that what the
    /// kernel still does for the previous VMM's exit is not charged to the next.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub settle: std::time::Duration,
    /// Hold one idle KVM VM (one vCPU, no irqchip, never run) for the whole run, for every
    /// contender alike. While any VM exists Linux keeps two kernel static keys on
    /// (preempt_notifier_key from KVM_CREATE_VM, kvm_has_noapic_vcpu from a vCPU without an
    /// in-kernel irqchip); with none, each VMM turns them on at start and off at exit, and
    /// every flip patches kernel text and interrupts every CPU. Off (the default): a host
    /// running no other VM. On: a host already running VMs, such as a dust host, whose
    /// daemon keeps shells ready. The output's first line says which.
    #[arg(long)]
    pub resident_vm: bool,
}

fn fail(msg: String) -> ExitCode {
    eprintln!("dust bench: {msg}");
    ExitCode::from(status::VMM_ERROR)
}

/// Entry point.
pub fn bench(args: BenchArgs) -> ExitCode {
    if let Some(BenchCmd::Boot(b)) = args.cmd {
        let Some(image) = b.image.or_else(|| super::serve::find_guest("hello")) else {
            return fail(
                "no image given and the hello guest is not built (scripts/build-guests)".into(),
            );
        };
        let peers = b.peers || b.firecracker.is_some();
        let opts = boot::Opts {
            image: &image,
            runs: b.runs.max(1),
            peers,
            firecracker: b.firecracker.as_deref(),
            settle: b.settle,
            resident_vm: b.resident_vm,
        };
        return match boot::run(&opts) {
            Ok(rows) => {
                boot::print(&rows);
                if let Some(path) = b.json {
                    let text = serde_json::to_string_pretty(&rows).unwrap_or_default();
                    if let Err(e) = std::fs::write(&path, text) {
                        return fail(format!("{}: {e}", path.display()));
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.to_string()),
    };
    if let Some(BenchCmd::Jail(j)) = &args.cmd {
        return match rt.block_on(jail::run(j)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    rt.block_on(drive(args))
}

async fn drive(args: BenchArgs) -> ExitCode {
    let mut embedded = None;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => match start_embedded(&args).await {
            Ok((summoner, url, dir)) => {
                embedded = Some((summoner, dir));
                url
            }
            Err(e) => return fail(e),
        },
    };
    let target = match http::Target::parse(&url) {
        Ok(t) => Arc::new(t),
        Err(e) => return fail(e),
    };
    if args.warmup > 0 {
        http::drive(target.clone(), args.warmup, args.concurrency, || {}).await;
    }
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(args.requests as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let tick = bar.clone();
    let (samples, took) =
        http::drive(target, args.requests, args.concurrency, move || tick.inc(1)).await;
    bar.finish_and_clear();
    if let Some((summoner, dir)) = embedded {
        summoner.shutdown(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(dir);
    }
    let report = report::Report::new(
        url,
        args.concurrency,
        args.warmup,
        samples,
        took.as_secs_f64(),
    );
    print!("{}", report.table());
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = std::fs::write(&args.json, json) {
        return fail(format!("{}: {e}", args.json.display()));
    }
    if let Err(e) = report.svg(&args.svg) {
        return fail(e);
    }
    println!("report: {} and {}", args.json.display(), args.svg.display());
    ExitCode::SUCCESS
}

async fn start_embedded(args: &BenchArgs) -> Result<(summoner::Summoner, String, PathBuf), String> {
    let image = super::serve::find_guest("http-hello")
        .ok_or("the embedded service needs the http-hello guest: run scripts/build-guests")?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("dust-bench-{}", std::process::id()));
    let summoner = summoner::Summoner::new(exe, dir.clone()).map_err(|e| e.to_string())?;
    let listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let mut svc = summoner::ServiceConfig::new("hello", listen, image);
    svc.pool_size = args.pool;
    svc.max_concurrent = args.max_concurrent;
    svc.snapshot = args.snapshot;
    match summoner.add(svc).await {
        Ok(addr) => Ok((summoner, format!("http://{addr}/"), dir)),
        Err(e) => {
            // A service that could not start (e.g. its snapshot template failed) leaves
            // nothing behind: no worker, no run dir.
            summoner.shutdown(Duration::from_secs(5)).await;
            let _ = std::fs::remove_dir_all(&dir);
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: super::BenchArgs,
    }

    fn boot(args: &[&str]) -> super::BootArgs {
        let argv = ["dust", "boot"].iter().chain(args);
        match Cli::try_parse_from(argv).map(|c| c.bench.cmd) {
            Ok(Some(super::BenchCmd::Boot(b))) => b,
            other => panic!("{args:?}: not bench boot: {:?}", other.err()),
        }
    }

    #[test]
    fn boot_holds_no_resident_vm_unless_asked() {
        assert!(!boot(&[]).resident_vm);
        assert!(!boot(&["-n", "3", "--peers"]).resident_vm);
        let b = boot(&["--resident-vm", "-n", "3", "--firecracker", "/fc"]);
        assert!(b.resident_vm);
        assert_eq!(b.runs, 3);
        assert_eq!(b.firecracker.as_deref(), Some(std::path::Path::new("/fc")));
        assert!(Cli::try_parse_from(["dust", "boot", "--resident-vm=yes"]).is_err());
    }
}
