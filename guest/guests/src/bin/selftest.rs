//! Exercises the runtime: the heap, the C memory functions (every length up to a few
//! quadwords, overlapping both ways), formatting and the panic path. Exits 0 when all
//! checks pass, 1 (naming the check) otherwise. `selftest panic` panics on purpose (101).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::{boxed::Box, format, string::String, vec, vec::Vec};
use core::hint::black_box;

use dust_guest::println;

dust_guest::entry!(main);

unsafe extern "C" {
    fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8;
    fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32;
}

fn main() -> Result<(), &'static str> {
    if dust_guest::args().next() == Some("panic") {
        panic!("selftest: panicking on request");
    }
    heap()?;
    copies()?;
    compares()?;
    formatting()?;
    println!("selftest: ok");
    Ok(())
}

fn check(ok: bool, what: &'static str) -> Result<(), &'static str> {
    if ok { Ok(()) } else { Err(what) }
}

fn heap() -> Result<(), &'static str> {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..100 {
        v.push(black_box(i));
    }
    check(v.iter().sum::<u64>() == 4950, "vec push")?;
    let big = black_box(vec![0xa5u8; 64 << 10]);
    check(
        big[0] == 0xa5 && big[(64 << 10) - 1] == 0xa5,
        "64 KiB allocation",
    )?;
    drop(big);
    // Zeroed blocks are zero whether the memory is fresh or reused (the heap skips
    // clearing memory it never handed out).
    let mut dirty = black_box(vec![0xffu8; 4096]);
    dirty[100] = 1;
    drop(black_box(dirty));
    let reused = black_box(vec![0u8; 4096]);
    check(
        reused.iter().all(|&b| b == 0),
        "zeroed block over freed memory",
    )?;
    let fresh = black_box(vec![0u8; 256 << 10]);
    let sampled = (0..fresh.len())
        .step_by(251)
        .chain(fresh.len() - 64..fresh.len());
    check(
        sampled.into_iter().all(|i| fresh[i] == 0),
        "zeroed block over fresh memory",
    )?;
    drop((reused, fresh));
    let b = Box::new([7u32; 64]);
    check(b[63] == 7, "box")?;
    let mut s = String::from("dust");
    s.push_str("-guest");
    check(s == "dust-guest", "string")
}

fn copies() -> Result<(), &'static str> {
    let pattern: [u8; 64] = core::array::from_fn(|i| i as u8 + 1);
    for n in 0..20 {
        for off in 0..3 {
            let mut buf = [0u8; 64];
            // SAFETY: all ranges lie inside the 64-byte buffers.
            unsafe { memcpy(buf.as_mut_ptr().add(off), pattern.as_ptr(), black_box(n)) };
            check(buf[off..off + n] == pattern[..n], "memcpy")?;
            check(
                buf[off + n] == 0 && (off == 0 || buf[off - 1] == 0),
                "memcpy bounds",
            )?;

            // Overlap, destination above the source (copied backwards).
            let mut up = pattern;
            // SAFETY: inside the buffer.
            unsafe { memmove(up.as_mut_ptr().add(off + 1), up.as_ptr(), black_box(n)) };
            check(up[off + 1..off + 1 + n] == pattern[..n], "memmove up")?;
            // Overlap, destination below the source.
            let mut down = pattern;
            // SAFETY: inside the buffer.
            unsafe { memmove(down.as_mut_ptr(), down.as_ptr().add(off + 1), black_box(n)) };
            check(down[..n] == pattern[off + 1..off + 1 + n], "memmove down")?;

            let mut set = [0u8; 64];
            // SAFETY: inside the buffer.
            unsafe { memset(set.as_mut_ptr().add(off), 0x5a, black_box(n)) };
            check(set[off..off + n].iter().all(|&b| b == 0x5a), "memset")?;
            check(
                set[off + n] == 0 && (off == 0 || set[off - 1] == 0),
                "memset bounds",
            )?;
        }
    }
    Ok(())
}

fn compares() -> Result<(), &'static str> {
    let a: [u8; 24] = core::array::from_fn(|i| i as u8);
    for n in 0..24 {
        for at in 0..n {
            let mut b = a;
            b[at] = 0xff;
            // SAFETY: both are 24 bytes long.
            let (lt, gt, eq) = unsafe {
                (
                    memcmp(a.as_ptr(), b.as_ptr(), black_box(n)),
                    memcmp(b.as_ptr(), a.as_ptr(), black_box(n)),
                    memcmp(a.as_ptr(), b.as_ptr(), black_box(at)),
                )
            };
            check(lt < 0 && gt > 0 && eq == 0, "memcmp")?;
        }
    }
    Ok(())
}

fn formatting() -> Result<(), &'static str> {
    let s = format!(
        "{} {:x} {:>5} {:?}",
        black_box(1234567890123u64),
        black_box(0xbeefu32),
        "r",
        "q"
    );
    check(
        s == "1234567890123 beef     r \"q\"",
        "integer and string formatting",
    )
}
