//! A global written once, before `main`, and read afterwards.

use core::cell::UnsafeCell;

/// A static the runtime sets during start-up. dust guests run one vCPU with interrupts
/// off, so there is no concurrent access; writes happen only before `main` runs.
pub(crate) struct Global<T>(UnsafeCell<T>);

// SAFETY: one CPU, no interrupts; `set` is only called during start-up (see `Global`).
unsafe impl<T> Sync for Global<T> {}

impl<T: Copy> Global<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    pub(crate) fn get(&self) -> T {
        // SAFETY: no write can be in progress (see the type's contract).
        unsafe { *self.0.get() }
    }

    /// # Safety
    /// Only during start-up, before anything reads the value through a reference.
    #[cfg_attr(test, allow(dead_code))]
    pub(crate) unsafe fn set(&self, value: T) {
        // SAFETY: the caller guarantees no reader exists yet.
        unsafe { *self.0.get() = value }
    }
}
