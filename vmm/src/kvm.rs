//! /dev/kvm, opened once per process, and the one error type for a refused KVM call.

use std::sync::OnceLock;

use kvm_ioctls::Kvm;

/// A KVM ioctl failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct KvmError {
    /// The step (usually the ioctl's name).
    pub what: &'static str,
    /// Cause.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// `map_err` helper: `fd.run().map_err(kvm_err("KVM_RUN"))`.
pub fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError { what, source }
}

/// /dev/kvm, opened once per process (a pre-started worker has it open before any request).
pub fn kvm() -> Result<&'static Kvm, kvm_ioctls::Error> {
    static KVM: OnceLock<Kvm> = OnceLock::new();
    if let Some(k) = KVM.get() {
        return Ok(k);
    }
    let k = Kvm::new()?;
    Ok(KVM.get_or_init(|| k))
}
