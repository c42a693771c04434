//! `Transfer-Encoding: chunked` request bodies (RFC 9112 section 7.1), decoded as the bytes
//! arrive: [`Decoder::feed`] takes what is there and says how much it used, so no byte is
//! looked at twice however the body is split across reads.

use alloc::vec::Vec;

use super::Error;

/// Longest chunk-size or trailer line kept while waiting for its end.
pub(super) const MAX_LINE: usize = 4096;

enum State {
    /// Expecting `<hex size>[;ext]\r\n`.
    Size,
    /// Inside a chunk: this many data bytes to go.
    Data(u64),
    /// After a chunk's data: expecting `\r\n`.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailer,
    /// The whole body is in.
    Done,
}

/// An incremental chunked-body decoder.
pub(super) struct Decoder {
    state: State,
    body: Vec<u8>,
    max: usize,
}

impl Decoder {
    /// A decoder that refuses bodies over `max` bytes ([`Error::BodyTooLarge`]).
    pub(super) fn new(max: usize) -> Self {
        Self {
            state: State::Size,
            body: Vec::new(),
            max,
        }
    }

    /// Whether the terminating chunk and trailer were seen.
    pub(super) fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The decoded body.
    pub(super) fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Decodes from `input`; returns how many bytes were used. Fewer than `input.len()`
    /// means an incomplete line (call again with more bytes after it) or the end of the body
    /// (then [`done`](Self::done); the rest belongs to the next request).
    pub(super) fn feed(&mut self, input: &[u8]) -> Result<usize, Error> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Done => return Ok(used),
                State::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, 0))) => {
                        used += n;
                        self.state = State::Trailer;
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        let total = u64::try_from(self.body.len())
                            .ok()
                            .and_then(|len| len.checked_add(size));
                        if total.is_none_or(|t| t > self.max as u64) {
                            return Err(Error::BodyTooLarge);
                        }
                        used += n;
                        self.state = State::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return self.partial_line(rest, used),
                    Err(_) => return Err(Error::Malformed("bad chunk size")),
                },
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    // `left` fits in usize: the body limit bounded it.
                    let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err(Error::Malformed("chunk data longer than its size")),
                },
                State::Trailer => match rest.windows(2).position(|w| w == b"\r\n") {
                    // The empty line ends the trailer; other trailer fields are dropped.
                    Some(0) => {
                        used += 2;
                        self.state = State::Done;
                    }
                    Some(i) => used += i + 2,
                    None => return self.partial_line(rest, used),
                },
            }
        }
    }

    fn partial_line(&self, rest: &[u8], used: usize) -> Result<usize, Error> {
        if rest.len() > MAX_LINE {
            Err(Error::Malformed("chunk line too long"))
        } else {
            Ok(used)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(raw: &[u8], piece: usize) -> Result<(Vec<u8>, usize), Error> {
        let mut d = Decoder::new(1024);
        let (mut pending, mut fed, mut consumed) = (Vec::new(), 0, 0);
        while !d.done() {
            if fed == raw.len() {
                return Err(Error::Closed);
            }
            let n = piece.min(raw.len() - fed);
            pending.extend_from_slice(&raw[fed..fed + n]);
            fed += n;
            let used = d.feed(&pending)?;
            consumed += used;
            pending.drain(..used);
        }
        Ok((d.into_body(), consumed))
    }

    #[test]
    fn decodes_however_the_bytes_are_split() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, raw.len()] {
            let (body, used) = decode_in_pieces(raw, piece).unwrap();
            assert_eq!(body, b"hello, world", "piece {piece}");
            assert_eq!(used, raw.len() - 4, "piece {piece}");
        }
    }

    #[test]
    fn rejects_bad_sizes_and_overlong_chunks() {
        assert!(matches!(
            decode_in_pieces(b"zz\r\n", 4),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            decode_in_pieces(b"2\r\nabc\r\n0\r\n\r\n", 64),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            decode_in_pieces(b"401\r\n", 64),
            Err(Error::BodyTooLarge)
        ));
        assert!(matches!(
            decode_in_pieces(b"ffffffffffffffff\r\n", 64),
            Err(Error::BodyTooLarge)
        ));
    }
}
