//! Why a service config cannot run.

use super::MAX_COUNT;

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
    /// The VMs' socket paths would not fit a Unix socket address.
    #[error(
        "service {name}: its VMs' socket paths would be up to {len} bytes, over the 107 a Unix \
         socket takes: use a shorter service name (or give the daemon a shorter run_dir)"
    )]
    SocketPath {
        /// Service.
        name: String,
        /// The longest path, bytes.
        len: usize,
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
