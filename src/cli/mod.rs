//! Command-line front ends. Each verb turns its flags into the crates' plain config types.

pub mod bench;
pub mod client;
pub mod deploy;
pub mod guest;
mod lazy_log;
pub mod progress;
pub mod restore;
pub mod run;
pub mod serve;
pub mod service;
pub mod wasm;
pub mod worker;

/// Colour codes only for a terminal, and not when `NO_COLOR` is set to anything non-empty
/// (no-color.org): journald and log files get plain text.
fn colour(stderr_is_tty: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_tty && no_color.is_none_or(|v| v.is_empty())
}

/// `--vcpus`: the range the VM config accepts (`vmm::config::MAX_VCPUS`), so that clap and
/// the config check state the same one.
fn vcpus_range() -> clap::builder::RangedI64ValueParser<u8> {
    clap::value_parser!(u8).range(1..=i64::from(vmm::config::MAX_VCPUS))
}

/// Logs through `tracing` to stderr; `DUST_LOG` (or `RUST_LOG`) picks levels with the usual
/// filter syntax, default `warn`. Without either variable no filter is parsed, and the
/// subscriber itself is built on the first warning or error ([`lazy_log`]): `dust run`
/// start-up, on the spawn -> greeting path, does not pay for a logger it rarely uses.
pub fn init_logging() {
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("DUST_LOG").or_else(|_| std::env::var("RUST_LOG"));
    if let Some(filter) = spec.ok().and_then(|v| EnvFilter::try_new(v).ok()) {
        let _ = fmt_builder().with_env_filter(filter).try_init();
        return;
    }
    let lazy = lazy_log::Lazy::new(tracing::level_filters::LevelFilter::WARN, || {
        tracing::Dispatch::new(fmt_builder().with_max_level(tracing::Level::WARN).finish())
    });
    let _ = lazy.try_init();
}

/// The `fmt` subscriber's settings, filter apart.
fn fmt_builder() -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    tracing_subscriber::filter::LevelFilter,
    fn() -> std::io::Stderr,
> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr as fn() -> std::io::Stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some("".into())));
        assert!(!super::colour(true, Some("1".into())));
        assert!(!super::colour(false, None));
    }

    #[test]
    fn vcpus_out_of_range_names_the_range_the_config_checks() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: super::run::RunArgs,
        }
        for bad in ["0", "33", "300"] {
            let e = Cli::try_parse_from(["dust", "--vcpus", bad, "image"])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("1..=32"), "--vcpus {bad}: {e}");
        }
        let cli = Cli::try_parse_from(["dust", "--vcpus", "32", "image"]).unwrap();
        assert_eq!(cli.run.vcpus, 32);
        // The config check says the same range.
        let msg = vmm::ConfigError::Vcpus(0).to_string();
        assert!(msg.contains("between 1 and 32"), "{msg}");
    }
}
