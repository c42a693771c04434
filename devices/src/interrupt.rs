//! How a device tells the guest it has work.
//!
//! Devices hold an `Arc<dyn Interrupt>` and never learn how it is delivered. The VMM backs it
//! with an [`EventFdInterrupt`]: with an in-kernel irqchip the eventfd is registered as a KVM
//! irqfd; without one (unikernels that poll) the vCPU loop waits on the same eventfd when the
//! guest halts, so a device's trigger resumes a parked vCPU.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Delivery of a device interrupt (or a wake-up of a polling guest).
pub trait Interrupt: Send + Sync {
    /// Signal the guest.
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt backed by a non-blocking eventfd.
#[derive(Debug)]
pub struct EventFdInterrupt {
    evt: EventFd,
}

impl EventFdInterrupt {
    /// A fresh, untriggered interrupt.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd, for registering with KVM or polling.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Consume pending triggers; true if there were any.
    pub fn take(&self) -> bool {
        self.evt.read().is_ok()
    }
}

impl AsRawFd for EventFdInterrupt {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl Interrupt for EventFdInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.evt.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_then_take() {
        let irq = EventFdInterrupt::new().unwrap();
        assert!(!irq.take());
        Interrupt::trigger(&irq).unwrap();
        Interrupt::trigger(&irq).unwrap();
        assert!(irq.take());
        assert!(!irq.take());
    }
}
