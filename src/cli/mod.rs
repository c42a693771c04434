//! Command-line front ends. Each verb turns its flags into the crates' plain config types.

pub mod bench;
pub mod client;
pub mod drain;
pub mod guest;
pub mod run;
pub mod serve;
pub mod service;
pub mod wasm;
pub mod worker;

/// Logs through `tracing` to stderr; `DUST_LOG` (or `RUST_LOG`) picks levels with the usual
/// filter syntax, default `warn`. Without either variable no filter is parsed: a plain level
/// filter keeps `dust run` start-up short.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("DUST_LOG").or_else(|_| std::env::var("RUST_LOG"));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match spec.ok().and_then(|v| EnvFilter::try_new(v).ok()) {
        Some(filter) => builder.with_env_filter(filter).try_init(),
        None => builder.with_max_level(tracing::Level::WARN).try_init(),
    };
}
