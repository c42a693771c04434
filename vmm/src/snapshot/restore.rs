//! [`restore`]: a new VM from a snapshot, in the same order as a boot, with the image load
//! replaced by a copy-on-write map of the snapshot's memory and the saved register and device
//! state. The result is a shell like [`build`](crate::build)'s: nothing has run yet.

use std::sync::Arc;
use std::time::Instant;

use devices::EventFdInterrupt;
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::load::{load, Loaded};
use super::memory::map_private;
use super::{SnapshotError, State, MEMORY_FILE};
use crate::config::{RestoreConfig, VmConfig};
use crate::kvm::{kvm, kvm_err};
use crate::memory::GuestMem;
use crate::run_state::RunState;
use crate::timings::{since, Timings};
use crate::vcpu::Vcpu;
use crate::vm::{
    create_devices, mem_err, register_memory, BuildError, Devices, Parts, VcpuThreads, Vm,
};
use crate::x86_64::cpuid;

fn build_err(e: impl Into<BuildError>) -> SnapshotError {
    SnapshotError::Build(Box::new(e.into()))
}

/// Restore the snapshot `rc` names as a new VM with `rc`'s id, vsock socket and serial.
pub fn restore(rc: &RestoreConfig) -> Result<Vm, SnapshotError> {
    let mut timings = Timings::default();
    let t = Instant::now();
    let loaded = load(&rc.snapshot)?;
    let config = restored_config(rc, &loaded.state)?;
    timings.load_us = since(t);

    let kvm = kvm().map_err(|e| build_err(BuildError::OpenKvm(e)))?;
    let threads = VcpuThreads::spawn(1).map_err(build_err)?;
    // The VM and vCPU 0 a zygote's spare made ahead, if any (crate::prepared).
    let t = Instant::now();
    let made = crate::prepared::vm(kvm, false, None)?;
    let (vm_fd, mut vcpu0) = (made.vm, made.vcpu0);
    timings.create_vm_us = since(t);

    let t = Instant::now();
    let mem =
        map_private(&loaded.memory, config.memory_mib).map_err(|source| SnapshotError::Io {
            path: rc.snapshot.join(MEMORY_FILE),
            source,
        })?;
    register_memory(&vm_fd, &mem).map_err(build_err)?;
    timings.memory_us = since(t);

    let t = Instant::now();
    let wake = Arc::new(EventFdInterrupt::new().map_err(|e| build_err(BuildError::EventFd(e)))?);
    let state = Arc::new(RunState::new(wake));
    let devs = restore_devices(&vm_fd, &config, &mem, &state, &loaded.state)?;
    timings.devices_us = since(t);

    let t = Instant::now();
    let vcpu = restore_vcpu(kvm, (&vm_fd, &mut vcpu0), &config, &mem, &devs, &loaded)?;
    timings.vcpu_setup_us = since(t);

    let (vcpus, timeout) = (vec![vcpu], config.timeout);
    let parts = Parts {
        vm_fd,
        mem,
        vcpus,
        threads,
        state,
        devs,
        timeout,
        timings,
    };
    Ok(Vm::assemble(parts, true))
}

/// The template's config with the restored VM's own id, vsock socket, serial and timeout;
/// refused if the snapshot's VM and `rc` disagree about having a vsock device.
fn restored_config(rc: &RestoreConfig, saved: &State) -> Result<VmConfig, SnapshotError> {
    if saved.vsock.is_some() != rc.vsock.is_some() {
        return Err(SnapshotError::Unsupported(if saved.vsock.is_some() {
            "the snapshot's VM has a vsock device: give the restored VM a vsock socket".into()
        } else {
            "the snapshot's VM has no vsock device".into()
        }));
    }
    Ok(VmConfig {
        id: rc.id.clone(),
        vsock: rc.vsock.clone(),
        serial: rc.serial.clone(),
        timeout: rc.timeout,
        ..saved.config.clone()
    })
}

/// The devices of a boot, given the saved serial and vsock state.
fn restore_devices(
    vm_fd: &VmFd,
    config: &VmConfig,
    mem: &GuestMem,
    state: &Arc<RunState>,
    saved: &State,
) -> Result<Devices, SnapshotError> {
    let devs = create_devices(vm_fd, config, mem, state, Some(&saved.serial)).map_err(build_err)?;
    if let (Some(t), Some(snap)) = (&devs.vsock, &saved.vsock) {
        t.lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(snap)
            .map_err(SnapshotError::Vsock)?;
    }
    Ok(devs)
}

/// The one vCPU with the saved registers, the VM clock where it stopped, and a new info page
/// (the restored VM's id, a generation past the template's).
fn restore_vcpu(
    kvm: &Kvm,
    (vm_fd, vcpu0): (&VmFd, &mut Option<VcpuFd>),
    config: &VmConfig,
    mem: &GuestMem,
    devs: &Devices,
    loaded: &Loaded,
) -> Result<Vcpu, SnapshotError> {
    let saved = &loaded.state;
    let base_cpuid = cpuid::supported(kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let fd = crate::prepared::vcpu(vm_fd, vcpu0, base_cpuid, 0, 1)?;
    saved.vcpu.restore(&fd)?;
    let clock = kvm_clock_data {
        clock: saved.clock.clock,
        ..Default::default()
    };
    vm_fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    crate::vminfo::write(mem, &config.id, loaded.header.generation)
        .map_err(mem_err("the VM info page"))
        .map_err(build_err)?;
    Ok(Vcpu {
        fd,
        id: 0,
        pio: devs.pio.clone(),
        mmio: devs.mmio.clone(),
        mem: mem.clone(),
        irqchip: false,
    })
}
