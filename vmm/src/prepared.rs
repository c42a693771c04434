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
use crate::memory::{self, GuestMem};
use crate::x86_64::cpuid;

struct Prepared {
    vm: VmFd,
    vcpu0: VcpuFd,
    /// Guest RAM of the size asked for, mapped and registered with the VM (its pages not
    /// touched yet): `KVM_SET_USER_MEMORY_REGION` waits for an SRCU grace period.
    mem: Option<(u32, GuestMem)>,
}

static PREPARED: Mutex<Option<Prepared>> = Mutex::new(None);

/// Make this process's VM ahead of its request (best effort: a failure leaves nothing
/// made and the build does it all), with `mib` MiB of guest RAM registered if asked (the
/// size the last VM built had: most daemons build many VMs of one size). Returns the fds
/// made (-1 where none), which the caller must keep open.
pub fn prepare_ahead(mib: Option<u32>) -> [RawFd; 2] {
    let made = kvm().ok().and_then(|k| make(k, mib).ok());
    let fds = made
        .as_ref()
        .map_or([-1, -1], |p| [p.vm.as_raw_fd(), p.vcpu0.as_raw_fd()]);
    *PREPARED.lock().unwrap_or_else(|p| p.into_inner()) = made;
    fds
}

fn make(kvm: &Kvm, mib: Option<u32>) -> Result<Prepared, KvmError> {
    let base = cpuid::supported(kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let vcpu0 = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    vcpu0
        .set_cpuid2(&cpuid::for_vcpu(base, 0, 1))
        .map_err(kvm_err("KVM_SET_CPUID2"))?;
    // Memory that cannot be made is left to the build (which then reports why).
    let mem = mib.and_then(|mib| {
        let mem = memory::create(mib).ok()?;
        crate::vm::register_memory(&vm, &mem).ok()?;
        Some((mib, mem))
    });
    Ok(Prepared { vm, vcpu0, mem })
}

/// What a build or restore takes from what was made ahead.
pub(crate) struct Taken {
    pub vm: VmFd,
    pub vcpu0: Option<VcpuFd>,
    /// Guest RAM registered with `vm` (slot 0 up), when the build asked for that size.
    pub mem: Option<GuestMem>,
}

/// The VM made ahead and its vCPU 0 (its CPUID set for a VM of one vCPU), if there is one
/// and it fits: no in-kernel irqchip (`irqchip`), and guest RAM made ahead exactly when
/// `mib` asks for it, of that size (a restore maps its own: `None`). One that does not fit
/// is dropped.
pub(crate) fn take(irqchip: bool, mib: Option<u32>) -> Option<Taken> {
    let p = PREPARED.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    let mem = match (p.mem, mib) {
        (Some((made, mem)), Some(want)) if made == want => Some(mem),
        (None, _) => None,
        _ => return None,
    };
    (!irqchip).then_some(Taken {
        vm: p.vm,
        vcpu0: Some(p.vcpu0),
        mem,
    })
}

/// The VM for a build or restore: the one made ahead (with its vCPU 0, and its RAM if made
/// for `mib`) if it fits, else a new one (no vCPU, no RAM yet).
pub(crate) fn vm(kvm: &Kvm, irqchip: bool, mib: Option<u32>) -> Result<Taken, KvmError> {
    match take(irqchip, mib) {
        Some(t) => Ok(t),
        None => Ok(Taken {
            vm: kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?,
            vcpu0: None,
            mem: None,
        }),
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

    /// The tests share the process's one VM made ahead: one at a time.
    static ONE: Mutex<()> = Mutex::new(());

    #[test]
    fn a_vm_made_ahead_is_taken_once_and_dropped_when_it_does_not_fit() {
        let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let [vm, vcpu0] = prepare_ahead(None);
        assert!(vm >= 0 && vcpu0 >= 0, "nothing made ahead: {vm} {vcpu0}");
        assert!(
            take(true, None).is_none(),
            "an irqchip must come before any vCPU"
        );
        assert!(take(false, None).is_none(), "the unfit one is dropped");

        prepare_ahead(None);
        let made = take(false, Some(32)).expect("a VM made ahead, for a build");
        assert!(made.mem.is_none(), "no RAM made ahead");
        assert!(take(false, None).is_none(), "taken once");
        let base = cpuid::supported(kvm().unwrap()).unwrap();
        let mut ahead = made.vcpu0;
        // vCPU 0 is the one made ahead (its CPUID set again for two vCPUs); vCPU 1 is new.
        vcpu(&made.vm, &mut ahead, base, 0, 2).unwrap();
        assert!(ahead.is_none());
        vcpu(&made.vm, &mut ahead, base, 1, 2).unwrap();
    }

    #[test]
    fn ram_made_ahead_serves_a_build_of_its_size_only() {
        let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        prepare_ahead(Some(32));
        let made = take(false, Some(32)).expect("a VM made ahead");
        let mem = made.mem.expect("its RAM");
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 32 << 20);

        prepare_ahead(Some(32));
        assert!(take(false, Some(64)).is_none(), "another size: dropped");
        prepare_ahead(Some(32));
        assert!(
            take(false, None).is_none(),
            "a restore maps its own: dropped"
        );
    }
}
