//! Byte searches with `repne scasb` / `repe scasb`: the emulating KVM runs one step per
//! byte for these (~0.5 us), where a Rust loop costs several instructions per byte.

use core::arch::asm;

/// Index of the first `byte` in `hay`.
pub fn find(hay: &[u8], byte: u8) -> Option<usize> {
    if hay.is_empty() {
        return None;
    }
    let left: usize;
    let found: u8;
    // SAFETY: reads at most `hay.len()` bytes of `hay`; DF is clear per the ABI.
    unsafe {
        asm!(
            "repne scasb",
            "sete {found}",
            found = out(reg_byte) found,
            inout("rdi") hay.as_ptr() => _,
            inout("rcx") hay.len() => left,
            in("al") byte,
            options(nostack, readonly),
        );
    }
    // Found: rcx counts the bytes after the match.
    (found != 0).then(|| hay.len() - left - 1)
}

/// Number of leading bytes of `hay` equal to `byte`.
pub fn skip(hay: &[u8], byte: u8) -> usize {
    if hay.is_empty() {
        return 0;
    }
    let left: usize;
    let differs: u8;
    // SAFETY: reads at most `hay.len()` bytes of `hay`; DF is clear per the ABI.
    unsafe {
        asm!(
            "repe scasb",
            "setne {differs}",
            differs = out(reg_byte) differs,
            inout("rdi") hay.as_ptr() => _,
            inout("rcx") hay.len() => left,
            in("al") byte,
            options(nostack, readonly),
        );
    }
    // Stopped on a different byte: it was consumed too.
    if differs != 0 {
        hay.len() - left - 1
    } else {
        hay.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bytes() {
        assert_eq!(find(b"", b'x'), None);
        assert_eq!(find(b"abc", b'a'), Some(0));
        assert_eq!(find(b"abc", b'c'), Some(2));
        assert_eq!(find(b"abc", b'd'), None);
    }

    #[test]
    fn skips_bytes() {
        assert_eq!(skip(b"", b' '), 0);
        assert_eq!(skip(b"   ", b' '), 3);
        assert_eq!(skip(b"  a ", b' '), 2);
        assert_eq!(skip(b"a", b' '), 0);
    }
}
