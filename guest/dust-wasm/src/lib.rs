//! The part of the dust-wasm guest that is plain code over bytes: the WAGI/CGI translation
//! ([`cgi`]). It is a library so that its unit tests and the fuzz targets (`fuzz/`) build it
//! for the host; the guest binary (`src/main.rs`) uses it like any other crate.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cgi;
