//! The host side of a `wasi:http/proxy` component, for a guest that runs its core modules:
//! the canonical ABI (flattened values, return pointers, variants, options and results,
//! strings and lists through `cabi_realloc`, per-type handle tables with own and borrow)
//! and the WASI 0.2 functions a handler imports, with the request and the response fully
//! buffered. Nothing here knows the wasm engine: it reaches the instance through
//! [`Memory`], so the interpreter guest and an ahead-of-time one can share it.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod abi;
#[cfg(feature = "wasmi")]
pub mod engine;
mod fields;
pub mod http;
pub mod table;
#[cfg(test)]
mod tests;
mod wasi;

pub use abi::{Memory, Trap, Val};
pub use http::{Host, Request, Response};
