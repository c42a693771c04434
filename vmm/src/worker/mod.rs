//! The worker process: one VM per process, driven by the summoner over a socketpair.
//! [`protocol`] is the wire format both sides read; [`serve`] is the worker's side of it.

pub mod protocol;
mod serve;

pub use serve::serve;
