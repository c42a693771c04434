//! One vCPU's architectural state: saved on the vCPU's own thread when the guest signals
//! ready, set on a fresh vCPU in the order this KVM accepts (SET_XCRS needs the guest CPUID
//! first, so CPUID is set before any of this; see docs/snapshots.md).

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::kvm::{kvm, kvm_err, KvmError};
use crate::x86_64::regs::msr_list;

/// Registers, FPU/SSE state, MSRs, pending events, debug registers and run state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    /// `(index, value)` of every MSR KVM lists that this vCPU both reads and accepts back.
    msrs: Vec<(u32, u64)>,
    events: kvm_vcpu_events,
    debugregs: kvm_debugregs,
    mp_state: kvm_mp_state,
}

/// Read every MSR KVM lists that this vCPU can read and set again. KVM stops a batch at the
/// first MSR it refuses and returns how many it handled, so a refused one is dropped and
/// the batch retried (without an in-kernel LAPIC, MSR_KVM_ASYNC_PF_INT is refused on set).
fn save_msrs(fd: &VcpuFd) -> Result<Vec<(u32, u64)>, KvmError> {
    let list = kvm()
        .map_err(kvm_err("opening /dev/kvm"))?
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut entries: Vec<(u32, u64)> = list.as_slice().iter().map(|&i| (i, 0)).collect();
    loop {
        let mut msrs = msr_list(&entries)?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        if n == entries.len() {
            entries = msrs.as_slice().iter().map(|e| (e.index, e.data)).collect();
            break;
        }
        entries.remove(n);
    }
    loop {
        let n = fd
            .set_msrs(&msr_list(&entries)?)
            .map_err(kvm_err("KVM_SET_MSRS"))?;
        if n == entries.len() {
            return Ok(entries);
        }
        entries.remove(n);
    }
}

impl VcpuState {
    /// Save `fd`'s state. The caller has completed any pending I/O with an `immediate_exit`
    /// KVM_RUN first.
    pub fn save(fd: &VcpuFd) -> Result<Self, KvmError> {
        Ok(Self {
            regs: fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
            msrs: save_msrs(fd)?,
            events: fd
                .get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
            debugregs: fd.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
            mp_state: fd.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
        })
    }

    /// Set the state on a fresh vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), KvmError> {
        fd.set_sregs(&self.sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        fd.set_regs(&self.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        let n = fd
            .set_msrs(&msr_list(&self.msrs)?)
            .map_err(kvm_err("KVM_SET_MSRS"))?;
        if n != self.msrs.len() {
            let index = self.msrs.get(n).map_or(0, |e| e.0);
            return Err(KvmError {
                what: if index == 0 {
                    "KVM_SET_MSRS"
                } else {
                    "KVM_SET_MSRS (an MSR of the snapshot was refused)"
                },
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        // SAFETY: `self.xsave` is a whole kvm_xsave read from KVM_GET_XSAVE (4096 bytes),
        // which is all KVM_SET_XSAVE reads on a vCPU without AMX state.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        fd.set_vcpu_events(&self.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))
    }
}
