//! `dust bench boot --resident-vm`: one idle KVM VM, with one vCPU and no in-kernel irqchip,
//! that the bench itself holds from before the first timed run until after the last.
//!
//! Why: Linux turns two kernel static keys on while at least one VM (and one vCPU without an
//! in-kernel local APIC) exists, and off again when the last goes: `preempt_notifier_key`
//! (every KVM_CREATE_VM) and `kvm_has_noapic_vcpu` (KVM_CREATE_VCPU without an irqchip, as
//! `dust run` of a unikernel does). Each flip rewrites kernel text and sends an IPI to every
//! CPU, and a sleeping CPU is slow to wake, most of all in a nested VM. On a host where no
//! other VM runs, every VMM process pays a flip at start and one at exit; on a host that
//! already runs a VM (a dust host: the daemon's pool and spare shells hold VMs) nobody does.
//! The resident VM puts the bench host in that second state, for every contender alike. Its
//! vCPU never runs, so it takes no CPU time.

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// The held VM; closing both descriptors (on drop) ends it.
pub struct ResidentVm {
    // Dropped in this order: the vCPU holds a reference on the VM.
    _vcpu: VcpuFd,
    _vm: VmFd,
}

impl ResidentVm {
    /// Create the VM and its vCPU 0 (no irqchip, never run).
    pub fn new() -> Result<Self, String> {
        let why = |what: &str, e: kvm_ioctls::Error| format!("resident VM: {what}: {e}");
        let kvm = Kvm::new().map_err(|e| why("/dev/kvm", e))?;
        let vm = kvm.create_vm().map_err(|e| why("KVM_CREATE_VM", e))?;
        let vcpu = vm.create_vcpu(0).map_err(|e| why("KVM_CREATE_VCPU", e))?;
        Ok(ResidentVm {
            _vcpu: vcpu,
            _vm: vm,
        })
    }

    /// The VM's and the vCPU's descriptors, for the tests.
    #[cfg(test)]
    fn fds(&self) -> (i32, i32) {
        use std::os::fd::AsRawFd;
        (self._vm.as_raw_fd(), self._vcpu.as_raw_fd())
    }
}

/// The line the bench prints above its table: which host state the contenders ran in.
pub fn host_line(resident: bool) -> &'static str {
    if resident {
        "host: the bench held one idle KVM VM (1 vCPU, no irqchip) for the whole run \
         (--resident-vm): no contender flips KVM's kernel static keys, as on a host already \
         running VMs"
    } else {
        "host: no VM held by the bench: each contender may flip KVM's kernel static keys at \
         start and exit, as on a host running no other VM (see --resident-vm)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(fd: i32) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn the_resident_vm_is_a_vm_with_a_vcpu_and_is_gone_once_dropped() {
        let held = ResidentVm::new().unwrap();
        let (vm, vcpu) = held.fds();
        assert_eq!(link(vm), "anon_inode:kvm-vm");
        assert_eq!(link(vcpu), "anon_inode:kvm-vcpu:0");
        drop(held);
        // Both descriptors are closed (or, if this process reused the number, no longer
        // this VM's vCPU 0 and VM).
        assert_ne!(link(vm), "anon_inode:kvm-vm");
        assert_ne!(link(vcpu), "anon_inode:kvm-vcpu:0");
    }

    #[test]
    fn the_host_line_names_the_mode() {
        assert!(host_line(true).contains("--resident-vm"));
        assert!(host_line(true).contains("held one idle KVM VM"));
        assert!(host_line(false).contains("no VM held"));
    }
}
