//! WebAssembly components (WASI 0.2) that target the `wasi:http/proxy` world: the
//! handlers `wasmtime serve` and Spin run (see docs/wasm.md).
//!
//! A component is checked here, on the host, when its service is created: wasmparser's
//! component validation; an export of `wasi:http/incoming-handler` with its `handle`
//! function (else it is for another world); and every import among what dust provides
//! (the proxy world's interfaces and the `wasi:cli` ones Rust std pulls in), with every
//! missing name listed. Then it becomes a [`Plan`] (crate `dust-component-plan`, which the
//! component guest reads too): core modules, the core instances in the order to create
//! them, and each core import either another instance's export or a host function with
//! its canonical options.

#[cfg(test)]
mod tests;

use wasmparser::{Validator, WasmFeatures};

pub use dust_component_plan::names::{FUNCTIONS, HANDLER, INTERFACES, RESOURCES};
use dust_component_plan::PlanError;
pub use dust_component_plan::{CoreInstance, CoreRef, HostFunc, HostKind, Item, Options, Plan};

/// Why a component cannot be served.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ComponentError {
    /// wasmparser refused it.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// It nests components that do more than give an export its type (dust runs the
    /// components `cargo build` and wit-component make).
    #[error(
        "a component that nests components doing more than re-exporting functions; dust \
         runs flat components such as wit-component makes"
    )]
    Nested,
    /// It does not export `wasi:http/incoming-handler`.
    #[error(
        "a component for another world: it exports {}, not {HANDLER}@0.2.x with `handle`; \
         dust serves wasi:http/proxy components",
        if .exports.is_empty() { "nothing".to_string() } else { .exports.join(", ") }
    )]
    WrongWorld {
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// Imports or canonical ABI features dust does not provide.
    #[error(
        "imports {} that dust does not provide (supported: the wasi:http/proxy world of \
         WASI 0.2 and wasi:cli environment, exit, stdio and terminal)",
        .0.join(", ")
    )]
    Unsupported(Vec<String>),
}

/// The name of the built-in guest image that runs components.
pub const GUEST: &str = "dust-component";

/// Whether the file at `path` is a component (by its binary's layer and version); `false`
/// when it cannot be read (the module check says why).
pub fn is_component_file(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| wasmparser::Parser::is_component(&head))
}

/// The features the component's core modules may use (those the guest's wasmi runs) and
/// the component model without its async and other proposals.
fn features() -> WasmFeatures {
    WasmFeatures::WASM2.difference(WasmFeatures::SIMD)
        | WasmFeatures::TAIL_CALL
        | WasmFeatures::EXTENDED_CONST
        | WasmFeatures::COMPONENT_MODEL
}

/// Validates `bytes` as a wasi:http/proxy component and returns its plan.
pub fn check(bytes: &[u8]) -> Result<Plan, ComponentError> {
    Validator::new_with_features(features())
        .validate_all(bytes)
        .map_err(|e| ComponentError::Invalid(e.to_string()))?;
    dust_component_plan::plan(bytes).map_err(ComponentError::from)
}

impl From<PlanError> for ComponentError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Invalid(why) => Self::Invalid(why),
            PlanError::Nested => Self::Nested,
            PlanError::WrongWorld(exports) => Self::WrongWorld { exports },
            PlanError::Unsupported(names) => Self::Unsupported(names),
        }
    }
}
