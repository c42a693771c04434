//! CPUID for a vCPU: what KVM supports (read once per process), with the APIC ID of the vCPU
//! and the hypervisor bit set.

use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

static SUPPORTED: OnceLock<CpuId> = OnceLock::new();

/// KVM_GET_SUPPORTED_CPUID, cached: it does not change while the process lives, and asking
/// costs a syscall and a 20 KiB copy per VM.
pub fn supported(kvm: &Kvm) -> Result<&'static CpuId, kvm_ioctls::Error> {
    if let Some(c) = SUPPORTED.get() {
        return Ok(c);
    }
    let c = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    Ok(SUPPORTED.get_or_init(|| c))
}

const LEAF_FEATURES: u32 = 1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;

/// The CPUID table of vCPU `id` in a VM of `count` vCPUs.
pub fn for_vcpu(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => e.edx = u32::from(id),
            _ => {}
        }
    }
    cpuid
}
