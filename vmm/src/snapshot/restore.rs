//! [`restore`]: a new VM from a snapshot, in the same order as a boot, with the image load
//! replaced by a copy-on-write map of the snapshot's memory and the saved register and device
//! state. The result is a shell like [`build`](super::build)'s: nothing has run yet.

use std::sync::Arc;
use std::time::Instant;

use devices::EventFdInterrupt;
use kvm_bindings::kvm_clock_data;

use super::build::{mem_err, register_memory};
use super::platform::create_devices;
use super::run::VcpuThreads;
use super::{BuildError, Vm};
use crate::config::{RestoreConfig, VmConfig};
use crate::kvm::{kvm, kvm_err};
use crate::run_state::RunState;
use crate::snapshot::{self, SnapshotError};
use crate::timings::{since, Timings};
use crate::vcpu::Vcpu;
use crate::x86_64::cpuid;

fn build_err(e: impl Into<BuildError>) -> SnapshotError {
    SnapshotError::Build(Box::new(e.into()))
}

/// Restore the snapshot `rc` names as a new VM with `rc`'s id, vsock socket and serial.
pub fn restore(rc: &RestoreConfig) -> Result<Vm, SnapshotError> {
    let mut timings = Timings::default();
    let t = Instant::now();
    let loaded = snapshot::load(&rc.snapshot)?;
    let saved = &loaded.state;
    if saved.vsock.is_some() != rc.vsock.is_some() {
        return Err(SnapshotError::Unsupported(if saved.vsock.is_some() {
            "the snapshot's VM has a vsock device: give the restored VM a vsock socket".into()
        } else {
            "the snapshot's VM has no vsock device".into()
        }));
    }
    let config = VmConfig {
        id: rc.id.clone(),
        vsock: rc.vsock.clone(),
        serial: rc.serial.clone(),
        timeout: rc.timeout,
        ..saved.config.clone()
    };
    timings.load_us = since(t);

    let kvm = kvm().map_err(|e| build_err(BuildError::OpenKvm(e)))?;
    let threads = VcpuThreads::spawn(1).map_err(build_err)?;
    let t = Instant::now();
    let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    timings.create_vm_us = since(t);

    let t = Instant::now();
    let mem = snapshot::map_private(&loaded.memory, config.memory_mib).map_err(|source| {
        SnapshotError::Io {
            path: rc.snapshot.join(snapshot::MEMORY_FILE),
            source,
        }
    })?;
    register_memory(&vm_fd, &mem).map_err(build_err)?;
    timings.memory_us = since(t);

    let t = Instant::now();
    let wake = Arc::new(EventFdInterrupt::new().map_err(|e| build_err(BuildError::EventFd(e)))?);
    let state = Arc::new(RunState::new(wake));
    let devs =
        create_devices(&vm_fd, &config, &mem, &state, Some(&saved.serial)).map_err(build_err)?;
    if let (Some(t), Some(snap)) = (&devs.vsock, &saved.vsock) {
        t.lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(snap)
            .map_err(SnapshotError::Vsock)?;
    }
    timings.devices_us = since(t);

    let t = Instant::now();
    let base_cpuid = cpuid::supported(kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let fd = vm_fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    fd.set_cpuid2(&cpuid::for_vcpu(base_cpuid, 0, 1))
        .map_err(kvm_err("KVM_SET_CPUID2"))?;
    saved.vcpu.restore(&fd)?;
    let clock = kvm_clock_data {
        clock: saved.clock.clock,
        ..Default::default()
    };
    vm_fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    crate::vminfo::write(&mem, &config.id, loaded.header.generation)
        .map_err(mem_err("the VM info page"))
        .map_err(build_err)?;
    timings.vcpu_setup_us = since(t);

    let vcpu = Vcpu {
        fd,
        id: 0,
        pio: devs.pio.clone(),
        mmio: devs.mmio.clone(),
        mem: mem.clone(),
        irqchip: false,
    };
    Ok(Vm {
        vm_fd,
        mem,
        vcpus: vec![vcpu],
        threads,
        state,
        serial: devs.serial,
        events: devs.events,
        timeout: config.timeout,
        timings,
        vsock: devs.vsock,
        restored: true,
    })
}
