//! Credit accounting of one connection (virtio 1.2 section 5.10.6.3), both directions.
//!
//! Each side advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (bytes it has consumed
//! from it); a sender may have at most `buf_alloc - (sent - fwd_cnt)` bytes in flight. All
//! counters wrap at 2^32. A guest that reports nonsense (a `fwd_cnt` ahead of what it was
//! sent) only ever lowers its own credit to zero.

use std::num::Wrapping;

use super::CONN_BUF_SIZE;

/// Send a credit update once the guest's view of our free space drops below this.
const UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;

/// Both directions' counters.
#[derive(Debug, Default)]
pub struct Credit {
    /// Guest -> host: bytes received from the guest.
    rx_from_peer: Wrapping<u32>,
    /// Guest -> host: bytes of those forwarded to the host stream (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// Our `fwd_cnt` as the guest last heard it.
    fwd_cnt_told: Wrapping<u32>,
    /// Host -> guest: the guest's receive buffer.
    peer_buf_alloc: u32,
    /// Host -> guest: bytes the guest has consumed.
    peer_fwd_cnt: Wrapping<u32>,
    /// Host -> guest: bytes sent to the guest.
    sent_to_peer: Wrapping<u32>,
    /// A credit request is outstanding and the guest's credit has not changed since.
    requested: bool,
}

impl Credit {
    /// A connection whose guest side advertised `buf_alloc` / `fwd_cnt`.
    pub fn new(peer_buf_alloc: u32, peer_fwd_cnt: u32) -> Self {
        Self {
            peer_buf_alloc,
            peer_fwd_cnt: Wrapping(peer_fwd_cnt),
            ..Self::default()
        }
    }

    /// Every guest packet carries its current `buf_alloc` and `fwd_cnt`.
    pub fn peer_update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        if fwd_cnt != self.peer_fwd_cnt.0 || buf_alloc != self.peer_buf_alloc {
            self.requested = false;
        }
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes we may still send the guest.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.sent_to_peer - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// We sent the guest `n` payload bytes.
    pub fn sent(&mut self, n: u32) {
        self.sent_to_peer += Wrapping(n);
    }

    /// Whether to ask the guest for credit now (at most once until its credit changes).
    pub fn should_request(&self) -> bool {
        !self.requested
    }

    /// We asked the guest for a credit update.
    pub fn requested(&mut self) {
        self.requested = true;
    }

    /// Our free receive space, which the guest must respect.
    pub fn free(&self) -> u32 {
        CONN_BUF_SIZE.saturating_sub((self.rx_from_peer - self.fwd_cnt).0)
    }

    /// The guest sent us `n` payload bytes.
    pub fn received(&mut self, n: u32) {
        self.rx_from_peer += Wrapping(n);
    }

    /// `n` bytes left our buffer for the host stream.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt += Wrapping(n);
    }

    /// The guest's view of our free space is stale enough to warrant an update.
    pub fn peer_needs_update(&self) -> bool {
        let seen_free = CONN_BUF_SIZE.saturating_sub((self.rx_from_peer - self.fwd_cnt_told).0);
        self.fwd_cnt != self.fwd_cnt_told && seen_free < UPDATE_THRESHOLD
    }

    /// `(buf_alloc, fwd_cnt)` for the header of a packet to the guest, which thereby learns
    /// them.
    pub fn advertise(&mut self) -> (u32, u32) {
        self.fwd_cnt_told = self.fwd_cnt;
        (CONN_BUF_SIZE, self.fwd_cnt.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_to_guest_never_exceeds_the_guest_buffer() {
        let mut c = Credit::new(1000, 0);
        assert_eq!(c.peer_free(), 1000);
        c.sent(700);
        assert_eq!(c.peer_free(), 300);
        c.sent(300);
        assert_eq!(c.peer_free(), 0);
        assert!(c.should_request());
        c.requested();
        c.peer_update(1000, 0);
        assert!(!c.should_request(), "nothing changed: no second request");
        c.peer_update(1000, 400);
        assert!(c.should_request());
        assert_eq!(c.peer_free(), 400);
        // A shrinking buffer or a bogus fwd_cnt can only lower the credit.
        c.peer_update(100, 400);
        assert_eq!(c.peer_free(), 0);
        c.peer_update(1000, 5000);
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn counters_wrap() {
        let mut c = Credit::new(1000, u32::MAX - 10);
        c.sent_to_peer = Wrapping(u32::MAX - 10);
        c.sent(20);
        assert_eq!(c.peer_free(), 980);
        c.peer_update(1000, 9);
        assert_eq!(c.peer_free(), 1000);

        c.rx_from_peer = Wrapping(u32::MAX - 5);
        c.fwd_cnt = Wrapping(u32::MAX - 5);
        c.received(100);
        assert_eq!(c.free(), CONN_BUF_SIZE - 100);
        c.forwarded(100);
        assert_eq!(c.free(), CONN_BUF_SIZE);
    }

    #[test]
    fn guest_to_host_updates_when_half_the_window_was_consumed() {
        let mut c = Credit::default();
        assert_eq!(c.advertise(), (CONN_BUF_SIZE, 0));
        c.received(1000);
        c.forwarded(1000);
        assert_eq!(c.free(), CONN_BUF_SIZE);
        assert!(
            !c.peer_needs_update(),
            "the guest still sees plenty of room"
        );
        c.received(UPDATE_THRESHOLD);
        assert_eq!(c.free(), CONN_BUF_SIZE - UPDATE_THRESHOLD);
        c.forwarded(UPDATE_THRESHOLD);
        assert!(c.peer_needs_update());
        assert_eq!(c.advertise(), (CONN_BUF_SIZE, 1000 + UPDATE_THRESHOLD));
        assert!(!c.peer_needs_update());
    }
}
