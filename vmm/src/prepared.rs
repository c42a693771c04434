//! A VM made ahead of its request: `KVM_CREATE_VM`, vCPU 0 and its CPUID, done by a
//! zygote's spare (the next worker's process, `dust_jail::zygote`) while it waits for a
//! request, so that on this kernel (debugfs entries per VM and vCPU) about a millisecond of
//! KVM set-up is off the shell build's path.
//!
//! One per process, used by the one VM that process builds or restores, or dropped: never
//! shared. The build takes it only if it fits the config (no in-kernel irqchip, which must
//! exist before any vCPU); vCPU 0's CPUID is set again when the VM has more vCPUs (the
//! topology leaves name the count).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::kvm::{kvm, kvm_err, KvmError};
use crate::x86_64::cpuid;

struct Prepared {
    vm: VmFd,
    vcpu0: VcpuFd,
}

static PREPARED: Mutex<Option<Prepared>> = Mutex::new(None);

/// Make this process's VM ahead of its request (best effort: a failure leaves nothing
/// made and the build does it all). Returns the fds made (-1 where none), which the
/// caller must keep open.
pub fn prepare_ahead() -> [RawFd; 2] {
    let made = kvm().ok().and_then(|k| make(k).ok());
    let fds = made
        .as_ref()
        .map_or([-1, -1], |p| [p.vm.as_raw_fd(), p.vcpu0.as_raw_fd()]);
    *PREPARED.lock().unwrap_or_else(|p| p.into_inner()) = made;
    fds
}

fn make(kvm: &Kvm) -> Result<Prepared, KvmError> {
    let base = cpuid::supported(kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let vcpu0 = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    vcpu0
        .set_cpuid2(&cpuid::for_vcpu(base, 0, 1))
        .map_err(kvm_err("KVM_SET_CPUID2"))?;
    Ok(Prepared { vm, vcpu0 })
}

/// The VM made ahead and its vCPU 0 (its CPUID set for a VM of one vCPU), if there is one
/// and it fits a VM with `irqchip`; one that does not fit is dropped.
pub(crate) fn take(irqchip: bool) -> Option<(VmFd, VcpuFd)> {
    let p = PREPARED.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    (!irqchip).then_some((p.vm, p.vcpu0))
}

/// The VM for a build or restore: the one made ahead (with its vCPU 0) if it fits
/// `irqchip`, else a new one (and no vCPU yet).
pub(crate) fn vm(kvm: &Kvm, irqchip: bool) -> Result<(VmFd, Option<VcpuFd>), KvmError> {
    match take(irqchip) {
        Some((vm_fd, vcpu0)) => Ok((vm_fd, Some(vcpu0))),
        None => Ok((kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?, None)),
    }
}

/// vCPU `id` of a VM of `count` vCPUs, its CPUID set: the one made ahead (`ahead`, taken)
/// for vCPU 0 if there is one, else a new one.
pub(crate) fn vcpu(
    vm_fd: &VmFd,
    ahead: &mut Option<VcpuFd>,
    base: &kvm_bindings::CpuId,
    id: u8,
    count: u8,
) -> Result<VcpuFd, KvmError> {
    let made = if id == 0 { ahead.take() } else { None };
    let fresh = made.is_none();
    let fd = match made {
        Some(fd) => fd,
        None => vm_fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?,
    };
    // One made ahead has the CPUID of a VM of one vCPU already.
    if fresh || count != 1 {
        fd.set_cpuid2(&cpuid::for_vcpu(base, id, count))
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_made_ahead_is_taken_once_and_dropped_for_an_irqchip() {
        let [vm, vcpu0] = prepare_ahead();
        assert!(vm >= 0 && vcpu0 >= 0, "nothing made ahead: {vm} {vcpu0}");
        assert!(take(true).is_none(), "an irqchip must come before any vCPU");
        assert!(take(false).is_none(), "the unfit one is dropped");

        prepare_ahead();
        let (vm_fd, made) = take(false).expect("a VM made ahead");
        assert!(take(false).is_none(), "taken once");
        let base = cpuid::supported(kvm().unwrap()).unwrap();
        let mut ahead = Some(made);
        // vCPU 0 is the one made ahead (its CPUID set again for two vCPUs); vCPU 1 is new.
        vcpu(&vm_fd, &mut ahead, base, 0, 2).unwrap();
        assert!(ahead.is_none());
        vcpu(&vm_fd, &mut ahead, base, 1, 2).unwrap();
    }
}
