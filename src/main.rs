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

#[derive(Subcommand)]
enum Command {
    /// Boot one guest image in a microVM in the foreground (serial on stdout).
    ///
    /// The process exits with the guest's debug-exit status (0-239), or with one of dust's
    /// own statuses: 240 guest status out of range, 241 guest crashed (triple fault, KVM
    /// internal error), 242 timed out and killed, 243 VMM error (bad image, bad config, KVM
    /// failure), 244 usage error, 245 killed.
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => dust_abi::status::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
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
