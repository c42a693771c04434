//! Stop signals taken on the thread that runs vCPU 0 ([`crate::Vm::run_here`]), with no
//! thread of their own: `dust run` gets SIGINT/SIGTERM without starting a thread for them
//! (a thread start is a measurable part of a run on a nested host).
//!
//! The caller blocks the signals in every thread first (before any thread starts, so every
//! thread inherits the mask) and names them with [`stop_on`]. While vCPU 0 runs on the
//! caller's thread ([`Armed`]) that one thread takes them: the handler sets a flag the vCPU
//! loop checks before each entry, and sets `immediate_exit` in that vCPU's `kvm_run`, so a
//! signal that lands between the check and KVM_RUN still stops the guest at once (and one
//! that lands inside KVM_RUN makes it return EINTR). A signal that came earlier is pending
//! and taken as soon as the thread unblocks it.

use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::OnceLock;

/// A stop signal came.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// The `immediate_exit` byte of the vCPU on the thread that takes the signals, while armed.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(null_mut());
/// The signals, once named.
static SIGNALS: OnceLock<Vec<libc::c_int>> = OnceLock::new();

extern "C" fn on_stop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNALLED.store(true, Ordering::SeqCst);
    let p = IMMEDIATE_EXIT.load(Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: set only while the vCPU's kvm_run is mapped ([`Armed`]), and this handler
        // only runs on that vCPU's thread (the signals are blocked everywhere else).
        unsafe { p.write_volatile(1) };
    }
}

/// Stop the VM that runs on the caller ([`crate::Vm::run_here`]) on any of `signals`, which
/// the caller has blocked in every thread. Once per process.
pub fn stop_on(signals: &[libc::c_int]) -> Result<(), vmm_sys_util::errno::Error> {
    for &s in signals {
        vmm_sys_util::signal::register_signal_handler(s, on_stop)?;
    }
    let _ = SIGNALS.set(signals.to_vec());
    Ok(())
}

/// Whether a stop signal came.
pub(crate) fn requested() -> bool {
    SIGNALLED.load(Ordering::Relaxed)
}

/// The signals unblocked on this thread while vCPU 0 runs here; blocked again on drop,
/// before its `kvm_run` is unmapped.
pub(crate) struct Armed(Option<libc::sigset_t>);

impl Armed {
    /// `run`: the vCPU's `kvm_run`, mapped for as long as this lives.
    pub(crate) fn new(run: &mut kvm_bindings::kvm_run) -> Self {
        let Some(signals) = SIGNALS.get() else {
            return Self(None);
        };
        IMMEDIATE_EXIT.store(std::ptr::addr_of_mut!(run.immediate_exit), Ordering::SeqCst);
        // SAFETY: a zeroed sigset_t is valid for sigemptyset, which initialises it; the
        // calls only touch that set and this thread's mask.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, null_mut());
            set
        };
        Self(Some(set))
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(set) = &self.0 {
            // SAFETY: blocks signals on this thread; after it no handler runs here, so the
            // pointer can go.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, null_mut()) };
            IMMEDIATE_EXIT.store(null_mut(), Ordering::SeqCst);
        }
    }
}
