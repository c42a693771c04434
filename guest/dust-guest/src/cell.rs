//! A global of a `Copy` type, read and written by value.

use core::cell::UnsafeCell;

/// A static the runtime reads and writes by value. dust guests run one vCPU with interrupts
/// off, and no reference to the value ever escapes, so accesses cannot overlap.
pub(crate) struct Global<T>(UnsafeCell<T>);

// SAFETY: one CPU, no interrupts, and access only by copying in and out (see `Global`).
unsafe impl<T> Sync for Global<T> {}

impl<T: Copy> Global<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    pub(crate) fn get(&self) -> T {
        // SAFETY: no other access can be in progress (see the type's contract).
        unsafe { *self.0.get() }
    }

    #[cfg_attr(test, allow(dead_code))]
    pub(crate) fn set(&self, value: T) {
        // SAFETY: no other access can be in progress (see the type's contract).
        unsafe { *self.0.get() = value }
    }
}
