//! Link flags of the dust binary.
//!
//! The static musl build (scripts/build-dust, the one that ships) is a static PIE: before
//! `main`, musl's start-up code applies ~15,500 relative relocations. Packed as RELR
//! (`-z pack-relative-relocs`, binutils >= 2.38, applied by musl >= 1.2.4) their table is
//! 4 KiB instead of 364 KiB, and a `dust run` starts on ~0.08 ms less CPU
//! (docs/benchmarks.md, "`dust run` to its greeting").

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
