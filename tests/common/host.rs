//! The host-only test helpers now live in the `test-support` crate. This file remains for
//! the one `#[path]` include left (summoner's config unit tests); it goes with it.
#![allow(unused_imports)]

pub use test_support::*;
