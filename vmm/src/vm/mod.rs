//! One VM: assembled by [`build`] (`build.rs`, devices in `platform.rs`) into a [`Vm`] shell
//! that has never run guest code, then run by [`Vm::start`] and ended through [`VmHandle`]
//! (`run.rs`). A snapshot's restore (`crate::snapshot::restore`) assembles the same shell
//! from the same steps ([`Parts`]), which is why they are visible to the crate.

mod build;
mod platform;
mod run;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::Serial;
use kvm_ioctls::VmFd;

use crate::config::ConfigError;
use crate::event_loop::EventLoop;
use crate::kvm::KvmError;
use crate::loader::ImageError;
use crate::memory::{GuestMem, MemoryError};
use crate::run_state::RunState;
use crate::timings::Timings;
use crate::vcpu::Vcpu;

pub use build::{build, build_for_caller};
pub(crate) use build::{mem_err, register_memory};
pub(crate) use platform::{create_devices, Devices};
pub use run::{Killer, VmHandle, VmReport};
pub(crate) use run::{Resources, VcpuThreads};

/// Why a VM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config is invalid.
    #[error("invalid VM config: {0}")]
    Config(#[from] ConfigError),
    /// The image or initrd was rejected.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Guest RAM could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible to this user?)")]
    OpenKvm(kvm_ioctls::Error),
    /// Writing boot structures into guest memory failed.
    #[error("writing {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The zero page could not be written.
    #[error("writing the zero page: {0}")]
    ZeroPage(#[from] linux_loader::configurator::Error),
    /// The command line was refused.
    #[error("guest command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// The command line could not be placed in guest memory.
    #[error("loading the guest command line: {0}")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    /// The serial output file could not be opened.
    #[error("serial output {path}: {source}")]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd (device interrupt or wake-up) could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A device could not be placed on its bus.
    #[error("placing a device: {0}")]
    Bus(#[from] devices::BusError),
    /// The vsock device could not be created.
    #[error("vsock: {0}")]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// The virtio-mmio transport could not be created.
    #[error("virtio-mmio transport: {0}")]
    Virtio(#[from] devices::virtio::VirtioError),
    /// The device event loop could not start.
    #[error("starting the device event loop: {0}")]
    EventLoop(#[source] std::io::Error),
    /// The PVH boot (`--boot pvh`) could not be set up.
    #[error(transparent)]
    Pvh(#[from] crate::x86_64::pvh::PvhError),
    /// The serial device's saved state was refused.
    #[error(transparent)]
    SerialState(#[from] ::devices::legacy::SerialRestoreError),
    /// A thread could not be started.
    #[error("starting a vCPU thread: {0}")]
    Thread(std::io::Error),
}

/// What a shell is made of, whether booted ([`build`]) or restored from a snapshot
/// (`crate::snapshot::restore`).
pub(crate) struct Parts {
    pub vm_fd: VmFd,
    pub mem: GuestMem,
    pub vcpus: Vec<Vcpu>,
    pub threads: VcpuThreads,
    pub state: Arc<RunState>,
    pub devs: Devices,
    pub timeout: Option<Duration>,
    pub timings: Timings,
}

impl Vm {
    /// The shell of `parts`; `restored`: its guest is past ready.
    pub(crate) fn assemble(parts: Parts, restored: bool) -> Self {
        Self {
            vm_fd: parts.vm_fd,
            mem: parts.mem,
            vcpus: parts.vcpus,
            threads: parts.threads,
            state: parts.state,
            serial: parts.devs.serial,
            events: parts.devs.events,
            timeout: parts.timeout,
            timings: parts.timings,
            vsock: parts.devs.vsock,
            restored,
        }
    }

    /// The state its threads will share.
    pub(crate) fn run_state_ref(&self) -> &Arc<RunState> {
        &self.state
    }

    /// The last bytes of its serial output, whatever the sink (kept while it runs too).
    pub fn serial_tail(&self) -> ::devices::legacy::OutputTail {
        self.serial.lock().unwrap_or_else(|p| p.into_inner()).tail()
    }
}

/// A built VM that has not run any guest code yet.
pub struct Vm {
    vm_fd: VmFd,
    mem: GuestMem,
    vcpus: Vec<Vcpu>,
    threads: VcpuThreads,
    state: Arc<RunState>,
    serial: Arc<Mutex<Serial>>,
    events: Option<EventLoop>,
    timeout: Option<Duration>,
    timings: Timings,
    /// The vsock device's transport (saved into a snapshot).
    vsock: Option<Arc<Mutex<::devices::virtio::MmioTransport>>>,
    /// Restored from a snapshot: the guest is past ready.
    restored: bool,
}
