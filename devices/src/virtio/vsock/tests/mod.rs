//! End-to-end tests of the vsock device: a fake guest driver drives the real MMIO transport,
//! the device runs on a real event manager, and host clients are real Unix sockets.

mod harness;
mod protocol;
mod robustness;
