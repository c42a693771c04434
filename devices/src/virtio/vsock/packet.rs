//! The vsock packet header (virtio 1.2 section 5.10.6): constants, and filling in the header
//! of a packet the device sends to the guest. Parsing descriptor chains into packets is
//! `virtio_vsock::packet::VsockPacket`'s job.

use dust_abi::vsock::{GUEST_CID, HOST_CID};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

/// `VIRTIO_VSOCK_TYPE_STREAM`: the only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset (refused, or torn down abruptly).
pub const OP_RST: u16 = 3;
/// Graceful shutdown of one or both directions (see the `SHUTDOWN_*` flags).
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Unsolicited (or requested) update of the sender's `buf_alloc` / `fwd_cnt`.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Request for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `OP_SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `OP_SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Size of the packet header.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;

/// Largest payload accepted in one packet (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`); also the
/// largest RX data buffer the device accepts from the driver.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// The fields of a host -> guest header that vary; the CIDs and the type are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxHeader {
    /// Host-side port.
    pub src_port: u32,
    /// Guest-side port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// `OP_*`.
    pub op: u16,
    /// `SHUTDOWN_*` for `OP_SHUTDOWN`, else 0.
    pub flags: u32,
    /// Buffer space the host has for this connection.
    pub buf_alloc: u32,
    /// Bytes the host has forwarded out of that buffer.
    pub fwd_cnt: u32,
}

impl RxHeader {
    /// A control packet (no payload) from `src_port` to the guest's `dst_port`.
    pub fn control(src_port: u32, dst_port: u32, op: u16, flags: u32) -> Self {
        Self {
            src_port,
            dst_port,
            len: 0,
            op,
            flags,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// The header as it lies in guest memory (little endian, packed).
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&HOST_CID.to_le_bytes());
        b[8..16].copy_from_slice(&GUEST_CID.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Write this header into `pkt` (an RX packet), in one guest-memory write.
    pub fn write_to(
        self,
        pkt: &mut VsockPacket<'_, ()>,
    ) -> Result<(), virtio_vsock::packet::Error> {
        pkt.set_header_from_raw(&self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_crate() {
        let h = RxHeader {
            src_port: 0x1122_3344,
            dst_port: 80,
            len: 5,
            op: OP_RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 7,
        };
        let mut bytes = h.to_bytes();
        let mut data = [0u8; 8];
        // SAFETY: both buffers outlive the packet and nothing else accesses them meanwhile.
        let mut pkt = unsafe { VsockPacket::new(&mut bytes, Some(&mut data)) }.unwrap();
        h.write_to(&mut pkt).unwrap();
        assert_eq!(pkt.src_cid(), HOST_CID);
        assert_eq!(pkt.dst_cid(), GUEST_CID);
        assert_eq!(pkt.src_port(), 0x1122_3344);
        assert_eq!(pkt.dst_port(), 80);
        assert_eq!(pkt.len(), 5);
        assert_eq!(pkt.type_(), TYPE_STREAM);
        assert_eq!(pkt.op(), OP_RW);
        assert_eq!(pkt.buf_alloc(), 1 << 18);
        assert_eq!(pkt.fwd_cnt(), 7);
    }
}
