//! Command-line front ends. Each verb turns its flags into the crates' plain config types.

pub mod bench;
pub mod client;
pub mod run;
pub mod serve;

/// Logs through `tracing` to stderr; `RUST_LOG` / `DUST_LOG` pick the level (default: warn).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("DUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            EnvFilter::from_default_env().add_directive(tracing::Level::WARN.into())
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
