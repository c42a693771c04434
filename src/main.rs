//! `dust`: a KVM microVM monitor with just-in-time summoning.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// dust boots a fresh microVM per request on KVM.
#[derive(Parser)]
#[command(name = "dust", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const RUN_ABOUT: &str = "Boot one guest image in a microVM in the foreground (serial on stdout).";
const RUN_LONG_ABOUT: &str =
    "Boot one guest image in a microVM in the foreground (serial on stdout).

The process exits with the guest's debug-exit status (0-239), or with one of dust's own \
statuses: 240 guest status out of range, 241 guest crashed (triple fault, KVM internal error), \
242 timed out and killed, 243 VMM error (bad image, bad config, KVM failure), 244 usage error, \
245 killed.";

/// `dust run` parsed on its own ([`main`]): the same flags, help and errors as the
/// subcommand of [`Cli`].
#[derive(Parser)]
#[command(name = "run", about = RUN_ABOUT, long_about = RUN_LONG_ABOUT)]
struct RunOnly {
    #[command(flatten)]
    args: cli::run::RunArgs,
}

#[derive(Subcommand)]
enum Command {
    #[command(about = RUN_ABOUT, long_about = RUN_LONG_ABOUT)]
    Run(cli::run::RunArgs),
    /// Run the daemon: every request (or connection) to a service gets a fresh microVM.
    ///
    /// With no arguments, serves the built-in `hello` demo (the http-hello guest) on
    /// 127.0.0.1:8080: `curl -i localhost:8080/` answers from a VM that did not exist before.
    Serve(Box<cli::serve::ServeArgs>),
    /// Measure cold starts: drive a service, or compare boots with peers (`bench boot`).
    Bench(cli::bench::BenchArgs),
    /// Write and build unikernel guests outside the dust tree (`guest new`, `guest build`).
    Guest {
        #[command(subcommand)]
        cmd: cli::guest::GuestCmd,
    },
    /// List the daemon's live VMs.
    Ps(cli::client::Conn),
    /// Manage the daemon's services.
    Services {
        #[command(flatten)]
        conn: cli::client::Conn,
        #[command(subcommand)]
        cmd: cli::client::ServicesCmd,
    },
    /// Kill one of the daemon's VMs (its client gets 502).
    Kill {
        #[command(flatten)]
        conn: cli::client::Conn,
        /// VM id (see `dust ps`).
        vm: String,
    },
    /// Internal: one VM per process, driven by the summoner over fd 3.
    #[command(hide = true)]
    Worker,
}

/// Parsed arguments, or the exit status after clap printed help, the version or an error.
/// `bin_name`: the name usage lines show, where clap's default would not do.
fn parse<P: Parser>(
    args: impl Iterator<Item = std::ffi::OsString>,
    bin_name: Option<String>,
) -> Result<P, ExitCode> {
    let mut cmd = P::command();
    if let Some(name) = bin_name {
        cmd = cmd.bin_name(name);
    }
    let parsed = cmd
        .try_get_matches_from_mut(args)
        .and_then(|mut m| P::from_arg_matches_mut(&mut m).map_err(|e| e.format(&mut cmd)));
    parsed.map_err(|e| {
        let code = match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
            _ => dust_abi::status::USAGE,
        };
        let _ = e.print();
        ExitCode::from(code)
    })
}

/// `<program> run`, the usage name clap gives the subcommand: the program is argv[0]'s file
/// name.
fn run_bin_name() -> String {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map_or_else(|| "dust".into(), |n| n.to_string_lossy());
    format!("{name} run")
}

fn main() -> ExitCode {
    // The two commands whose start-up is on a timed path skip building the whole command
    // line of every subcommand (clap's builders allocate and copy a lot, and musl's malloc
    // maps and unmaps pages for it): `dust run` (spawn -> greeting, docs/benchmarks.md),
    // whose plain form skips clap altogether, and `dust worker` (a shell build), which takes
    // no arguments.
    let mut argv = std::env::args_os().skip(1);
    match (argv.next(), argv.next()) {
        (Some(cmd), None) if cmd == "worker" => {
            cli::init_logging();
            return cli::worker::worker();
        }
        (Some(cmd), _) if cmd == "run" => {
            let words: Vec<_> = std::env::args_os().skip(2).collect();
            if let Some(args) = cli::run::RunArgs::plain(&words) {
                cli::init_logging();
                return cli::run::run(args);
            }
            return match parse::<RunOnly>(std::env::args_os().skip(1), Some(run_bin_name())) {
                Ok(r) => {
                    cli::init_logging();
                    cli::run::run(r.args)
                }
                Err(code) => code,
            };
        }
        _ => {}
    }
    let cli = match parse::<Cli>(std::env::args_os(), None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging();
    match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Serve(args) => cli::serve::serve(*args),
        Command::Bench(args) => cli::bench::bench(args),
        Command::Guest { cmd } => cli::guest::guest(cmd),
        Command::Ps(conn) => cli::client::ps(conn),
        Command::Services { conn, cmd } => cli::client::services(conn, cmd),
        Command::Kill { conn, vm } => cli::client::kill(conn, vm),
        Command::Worker => cli::worker::worker(),
    }
}
