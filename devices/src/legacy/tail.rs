//! The last bytes a guest wrote on its serial console, kept in memory whatever the sink, so
//! that the daemon can log why a request failed without a serial file configured. Bounded:
//! a guest flooding its console costs at most [`TAIL_BYTES`].

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Most bytes kept.
pub const TAIL_BYTES: usize = 4096;

#[derive(Default)]
struct Inner {
    bytes: VecDeque<u8>,
    /// Bytes written in all, kept or not.
    total: u64,
}

/// A shared handle on a serial console's last [`TAIL_BYTES`] bytes.
#[derive(Clone, Default)]
pub struct OutputTail(Arc<Mutex<Inner>>);

impl OutputTail {
    fn push(&self, buf: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.total += buf.len() as u64;
        let keep = &buf[buf.len().saturating_sub(TAIL_BYTES)..];
        let over = (t.bytes.len() + keep.len()).saturating_sub(TAIL_BYTES);
        t.bytes.drain(..over);
        t.bytes.extend(keep);
    }

    /// What is kept, as text (invalid UTF-8 replaced), and how many earlier bytes were
    /// dropped.
    pub fn text(&self) -> (String, u64) {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = t.bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        (text, t.total - t.bytes.len() as u64)
    }
}

/// A writer that copies what it writes into an [`OutputTail`].
pub(super) struct Tee {
    pub(super) inner: Box<dyn Write + Send>,
    pub(super) tail: OutputTail,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.push(buf);
        // The tail has it even when the sink fails.
        let _ = self.inner.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_bytes() {
        let t = OutputTail::default();
        t.push(b"first\n");
        assert_eq!(t.text(), ("first\n".into(), 0));
        let flood = vec![b'x'; TAIL_BYTES * 3 + 5];
        t.push(&flood);
        t.push(b"why\n");
        let (text, dropped) = t.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("xxwhy\n"), "{text:?}");
        assert_eq!(dropped, (6 + flood.len() + 4 - TAIL_BYTES) as u64);
        for b in b"abc" {
            t.push(&[*b]);
        }
        assert!(t.text().0.ends_with("why\nabc"));
        assert_eq!(t.text().0.len(), TAIL_BYTES);
    }
}
