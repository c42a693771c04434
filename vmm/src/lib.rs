//! The dust VMM: the only crate that touches KVM.
//!
//! [`VmConfig`] says what to build; [`build`] assembles a VM in one ordered pass without
//! running it (a "shell" that has never executed guest code); [`Vm::start`] runs it and
//! returns a [`VmHandle`] to wait for or kill it.

pub mod config;
pub mod event_loop;
pub mod jail;
pub mod loader;
pub mod memory;
pub mod seccomp;
pub mod timings;
pub mod vcpu;
mod vm;
pub mod worker;
pub mod x86_64;

/// dust's per-user runtime directory: /run/dust as root, $XDG_RUNTIME_DIR/dust otherwise,
/// else /tmp/dust-<uid>. Per-VM sockets, the API socket and caches live here.
pub fn runtime_dir() -> std::path::PathBuf {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return std::path::PathBuf::from("/run/dust");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => std::path::PathBuf::from(d).join("dust"),
        None => std::path::PathBuf::from(format!("/tmp/dust-{uid}")),
    }
}

/// Open /dev/kvm now (once per process), e.g. before a jail hides it.
pub fn open_kvm() -> Result<(), BuildError> {
    vm::kvm().map(|_| ())
}

pub use config::{ConfigError, SerialConfig, VmConfig, VsockConfig};
pub use loader::ImageError;
pub use timings::Timings;
pub use vcpu::VmExit;
pub use vm::{build, BuildError, Killer, Vm, VmHandle, VmReport};
