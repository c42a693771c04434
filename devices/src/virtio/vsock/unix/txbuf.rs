//! Guest -> host bytes the host stream could not take yet. Credit flow control bounds it: the
//! guest may have at most [`super::CONN_BUF_SIZE`] bytes unforwarded, which is exactly this
//! buffer's capacity. Allocated on first use, so connections that never back up cost nothing.

use std::io::{self, IoSlice};
use std::os::unix::net::UnixStream;

use vm_memory::VolatileSlice;

/// A fixed-capacity byte ring.
#[derive(Debug)]
pub struct TxBuf {
    data: Box<[u8]>,
    capacity: usize,
    head: usize,
    len: usize,
}

/// The buffer would exceed its capacity: the guest ignored our credit.
#[derive(Debug, thiserror::Error)]
#[error("tx buffer overflow: {len} more bytes with {free} free")]
pub struct TxBufFull {
    len: usize,
    free: usize,
}

impl TxBuf {
    /// An empty buffer that will hold up to `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            data: Box::default(),
            capacity,
            head: 0,
            len: 0,
        }
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drop everything held.
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Append the bytes of `src` (guest memory).
    pub fn push(&mut self, src: &VolatileSlice<'_, ()>) -> Result<(), TxBufFull> {
        let free = self.capacity - self.len;
        if src.len() > free {
            return Err(TxBufFull {
                len: src.len(),
                free,
            });
        }
        if self.data.is_empty() {
            self.data = vec![0u8; self.capacity].into_boxed_slice();
        }
        let tail = (self.head + self.len) % self.capacity;
        let first = src.len().min(self.capacity - tail);
        let copied = src.copy_to(&mut self.data[tail..tail + first]);
        let rest = src.len() - first;
        let copied = copied
            + if rest > 0 {
                src.subslice(first, rest)
                    .map(|s| s.copy_to(&mut self.data[..rest]))
                    .unwrap_or(0)
            } else {
                0
            };
        self.len += copied;
        Ok(())
    }

    /// Write as much as the stream takes; returns the number of bytes written. `WouldBlock`
    /// counts as zero bytes.
    pub fn flush_to(&mut self, stream: &UnixStream) -> io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        let end = self.head + self.len;
        let (a, b) = if end <= self.capacity {
            (&self.data[self.head..end], &[][..])
        } else {
            (&self.data[self.head..], &self.data[..end - self.capacity])
        };
        let written = match super::sys::send_vectored(stream, &[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        let written = written.min(self.len);
        self.head = (self.head + written) % self.capacity;
        self.len -= written;
        if self.len == 0 {
            self.head = 0;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn slice(bytes: &mut [u8]) -> VolatileSlice<'_, ()> {
        VolatileSlice::from(bytes)
    }

    #[test]
    fn wraps_and_flushes_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut buf = TxBuf::new(8);
        buf.push(&slice(&mut [1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(buf.flush_to(&a).unwrap(), 6);
        buf.push(&slice(&mut [7, 8, 9, 10, 11])).unwrap();
        assert_eq!(buf.len, 5);
        assert!(buf.push(&slice(&mut [0; 4])).is_err());
        buf.push(&slice(&mut [12, 13, 14])).unwrap();
        assert_eq!(buf.flush_to(&a).unwrap(), 8);
        assert!(buf.is_empty());
        let mut out = [0u8; 14];
        b.read_exact(&mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    }
}
