//! The dust VMM: the only crate that touches KVM.
//!
//! [`VmConfig`] says what to build; [`build`] assembles a VM in one ordered pass without
//! running it (a "shell" that has never executed guest code); [`Vm::start`] runs it and
//! returns a [`VmHandle`] to wait for or kill it. [`worker`] is the same VM driven from
//! another process (the summoner) over a socketpair.

pub mod config;
mod event_loop;
mod kvm;
mod loader;
mod memory;
mod prepared;
mod run_state;
pub mod snapshot;
mod stop;
mod timings;
mod vcpu;
mod vm;
mod vminfo;
pub mod worker;
mod x86_64;

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
    kvm::kvm().map(|_| ()).map_err(BuildError::OpenKvm)
}

/// What a worker needs from the host before its jail (`dust_jail::enter`) hides it:
/// /dev/kvm open (once per process) and KVM's supported CPUID read from its file cache
/// (asking KVM costs ~0.4 ms here, every CPUID a VM exit on a nested host; best effort:
/// the build asks KVM if the cache cannot be read). Returns the /dev/kvm fd, which a
/// worker forked from a zygote keeps.
pub fn before_jail() -> Result<std::os::fd::RawFd, BuildError> {
    use std::os::fd::AsRawFd;
    let kvm = kvm::kvm().map_err(BuildError::OpenKvm)?;
    let _ = x86_64::cpuid::supported(kvm);
    Ok(kvm.as_raw_fd())
}

pub use config::{
    open_serial_file, BootProtocol, ConfigError, RestoreConfig, SerialConfig, VmConfig, VsockConfig,
};
pub use kvm::KvmError;
pub use loader::{check_image, ImageError};
pub use memory::MemoryError;
pub use prepared::prepare_ahead;
pub use snapshot::restore;
pub use snapshot::SnapshotError;
pub use stop::stop_on;
pub use timings::Timings;
pub use vcpu::VmExit;
pub use vm::{build, build_for_caller, BuildError, Killer, Vm, VmHandle, VmReport};
