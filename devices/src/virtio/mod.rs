//! virtio devices: the virtio-mmio transport (virtio 1.2 section 4.2) and the vsock device
//! (section 5.10). Under construction.
