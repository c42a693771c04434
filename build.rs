//! Link flags of the dust binary.
//!
//! The static musl build (scripts/build-dust, the one that ships) is a static PIE: before
//! `main`, musl's start-up code applies its relative relocations. Packed as RELR
//! (`-z pack-relative-relocs`, binutils >= 2.38, applied by musl >= 1.2.4) their table is a
//! few KiB instead of a few hundred, and a `dust run` starts on ~0.08 ms less CPU
//! (docs/benchmarks.md, "`dust run` to its greeting").
//!
//! The shipped build is also linked with LTO (the `dist` profile). std declares a few libc
//! functions weak (it falls back to raw system calls without them), and under LTO that weak
//! declaration is the only one left, so the linker never takes those functions out of
//! libc.a and a direct call to one (`libc::gettid`, `libc::getrandom`) jumps to address 0.
//! `--require-defined` links them in, and fails the link if musl ever lacks one.

/// libc functions std declares weak that musl has and dust (or std) calls.
const STD_WEAK_IN_MUSL: [&str; 3] = ["getrandom", "gettid", "copy_file_range"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        for f in STD_WEAK_IN_MUSL {
            println!("cargo:rustc-link-arg-bins=-Wl,--require-defined={f}");
        }
    }
}
