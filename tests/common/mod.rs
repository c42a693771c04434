//! Shared helpers of the integration tests: real guests on real /dev/kvm, nothing mocked.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub mod daemon;
mod summoned;
#[allow(unused_imports)] // only the in-process summoner tests use these
pub use summoned::{env, get, Env, ONE_AT_A_TIME};
#[allow(unused_imports)] // not every test binary uses every helper
pub use test_support::*;

/// True when /dev/kvm can be used. Without it the test says so loudly and passes, except
/// under CI (`CI=true`), where a missing /dev/kvm fails the run.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("this test needs /dev/kvm and CI=true: cannot open it: {e}");
            }
            eprintln!("\n*** SKIPPED: this test needs /dev/kvm ({e}) ***\n");
            false
        }
    }
}

/// Return early from a test when KVM is missing (fails under CI).
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !$crate::common::kvm_available() {
            return;
        }
    };
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built example guest, e.g. `guest("hello")`.
pub fn guest(name: &str) -> PathBuf {
    let p = root()
        .join("guest/target/x86_64-unknown-none/release")
        .join(name);
    assert!(
        p.is_file(),
        "guest image {} is missing: run scripts/build-guests (the README's test command does)",
        p.display()
    );
    p
}

/// A built example WebAssembly handler, e.g. `example("hello-rust")`.
pub fn example(name: &str) -> PathBuf {
    let p = root().join(format!("examples/wasm/target/{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-examples (the README's test command does)",
        p.display()
    );
    p
}

/// The `dust` binary under test: the one cargo built with these tests, or the one
/// `$DUST_TEST_BIN` names (scripts/test runs some tests again against the static musl build,
/// the one that ships).
pub fn dust_bin() -> PathBuf {
    std::env::var_os("DUST_TEST_BIN")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dust")), PathBuf::from)
}

/// A command running the `dust` binary under test ([`dust_bin`]).
pub fn dust() -> Command {
    Command::new(dust_bin())
}

/// Run `dust run <args>`, returning its output.
pub fn dust_run(args: &[&str]) -> Output {
    dust().arg("run").args(args).output().expect("spawn dust")
}
