//! What a snapshot records of the host it was taken on, and checks again before a restore:
//! KVM's API version and the CPU model, and the CPUID a dust VM is given here.

use super::fnv1a;
use crate::kvm::{kvm, KvmError};

/// The host as a snapshot records it: KVM API version and the CPU's brand string (CPUID
/// leaves 0x8000_0002-4: no file to read on the restore path).
pub(super) fn host_description() -> String {
    let api = kvm().map(|k| k.get_api_version()).unwrap_or(-1);
    let mut brand = Vec::with_capacity(48);
    for leaf in 0x8000_0002u32..=0x8000_0004 {
        // Extended leaves up to 0x8000_0004 exist on every CPU that runs KVM.
        let r = core::arch::x86_64::__cpuid(leaf);
        for v in [r.eax, r.ebx, r.ecx, r.edx] {
            brand.extend_from_slice(&v.to_le_bytes());
        }
    }
    let model = String::from_utf8_lossy(&brand);
    format!(
        "KVM API {api}, {}",
        model.trim_matches(char::from(0)).trim()
    )
}

/// Fingerprint of the CPUID a dust VM is given on this host.
pub(super) fn cpuid_fingerprint() -> Result<u64, KvmError> {
    let kvm = kvm().map_err(crate::kvm::kvm_err("opening /dev/kvm"))?;
    let base = crate::x86_64::cpuid::supported(kvm)
        .map_err(crate::kvm::kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let cpuid = crate::x86_64::cpuid::for_vcpu(base, 0, 1);
    let mut bytes = Vec::new();
    for e in cpuid.as_slice() {
        for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(fnv1a(&bytes))
}
