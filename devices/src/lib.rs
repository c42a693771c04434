//! Device models for dust guests. Nothing here knows about KVM: a device gets guest memory,
//! an [`Interrupt`] and a slot on a [`Bus`], so every model can be unit-tested with fake memory.
//!
//! - [`bus`]: address-range dispatch of PIO/MMIO accesses to [`BusDevice`]s.
//! - [`legacy`]: 8250 serial (vm-superio), i8042 reset (vm-superio), the boot timer and the
//!   debug-exit port of the guest contract (`dust-abi`).
//! - `virtio`: the virtio-mmio transport and the vsock device.

pub mod bus;
pub mod interrupt;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusAction, BusDevice, BusError};
pub use interrupt::{EventFdInterrupt, Interrupt};
