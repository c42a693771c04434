//! [`Strings`]: a list of byte strings kept as WASI hands them to a module, each
//! NUL-terminated and back to back in one buffer, so that building the CGI environment is
//! a few appends to one vector and `environ_get` is one copy (each allocation and copy is
//! many emulated steps in a guest; docs/benchmarks.md, "guestcost").

use alloc::vec::Vec;

/// Strings, each stored with its NUL, back to back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Strings {
    bytes: Vec<u8>,
    /// Where each string starts in `bytes`.
    starts: Vec<u32>,
}

impl Strings {
    /// Room for `count` strings of `bytes` bytes in all (NULs included).
    pub fn with_capacity(count: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            starts: Vec::with_capacity(count),
        }
    }

    /// Appends one string: the concatenation of `parts`.
    pub fn push(&mut self, parts: &[&[u8]]) {
        self.starts.push(self.bytes.len() as u32);
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.bytes.push(0);
    }

    /// How many strings there are.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Every string followed by its NUL, back to back.
    pub fn with_nuls(&self) -> &[u8] {
        &self.bytes
    }

    /// Where each string starts in [`with_nuls`](Self::with_nuls).
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }

    /// The strings, without their NULs.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.starts.iter().enumerate().map(|(i, &s)| {
            let end = self
                .starts
                .get(i + 1)
                .map_or(self.bytes.len(), |&e| e as usize);
            &self.bytes[s as usize..end - 1]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_stored_with_their_nuls_back_to_back() {
        let mut s = Strings::with_capacity(2, 16);
        assert!(s.is_empty());
        s.push(&[b"A", b"=", b"1"]);
        s.push(&[b"B="]);
        s.push(&[]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.with_nuls(), b"A=1\0B=\0\0");
        assert_eq!(s.starts(), [0, 4, 7]);
        let all: Vec<&[u8]> = s.iter().collect();
        assert_eq!(all, [&b"A=1"[..], b"B=", b""]);
    }
}
