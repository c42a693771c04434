//! How dust runs a WebAssembly component that targets `wasi:http/proxy` (WASI 0.2): the
//! [`Plan`] read from the binary (core modules, the core instances in the order to create
//! them, and for each core import either another instance's export or a host function
//! with its canonical options), and the names dust provides. The host reads it to check a
//! component at creation; the component guest reads it again to run one, so nothing
//! travels between them but the component itself.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod names;
mod plan;
mod shim;

use alloc::string::String;
use alloc::vec::Vec;

pub use plan::{plan, CoreInstance, CoreRef, HostFunc, HostKind, Item, Options, Plan};

/// Why a component cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The binary does not parse, or an index is out of range.
    Invalid(String),
    /// It nests components that do more than give an export its type.
    Nested,
    /// It does not export `wasi:http/incoming-handler` with `handle`: what it exports.
    WrongWorld(Vec<String>),
    /// Names (interfaces, `interface#function`, canonical ABI features) dust lacks.
    Unsupported(Vec<String>),
}
