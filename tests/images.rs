//! Bad images and configs are rejected with a message naming the problem: no panic, no hang.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use common::{dust_run, guest, TempDir};
use dust_abi::status;

fn rejected(args: &[&str], needle: &str) {
    let o = dust_run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(i32::from(status::VMM_ERROR)),
        "args {args:?}: stderr {err}"
    );
    assert!(
        err.contains(needle),
        "args {args:?}: expected {needle:?} in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn patched(name: &str, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = std::fs::read(guest(name)).unwrap();
    f(&mut bytes);
    bytes
}

fn first_load_phdr(elf: &[u8]) -> usize {
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(elf[56..58].try_into().unwrap()) as usize;
    (0..phnum)
        .map(|i| phoff + i * 56)
        .find(|&off| u32::from_le_bytes(elf[off..off + 4].try_into().unwrap()) == 1)
        .unwrap()
}

#[test]
fn bad_images_are_named() {
    require_kvm!();
    let dir = TempDir::new("images");
    let p = |name: &str, bytes: &[u8]| dir.file(name, bytes).to_str().unwrap().to_owned();

    rejected(&[&p("empty", b"")], "is empty");

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..65536)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    rejected(&[&p("random", &random)], "not an x86_64 ELF or a bzImage");

    let hello = std::fs::read(guest("hello")).unwrap();
    rejected(&[&p("short", &hello[..40])], "truncated ELF");
    rejected(&[&p("half", &hello[..hello.len() / 2])], "truncated ELF");

    let elf32 = patched("hello", |b| b[4] = 1);
    rejected(&[&p("elf32", &elf32)], "32-bit ELF");
    let arm = patched("hello", |b| {
        b[18..20].copy_from_slice(&183u16.to_le_bytes())
    });
    rejected(&[&p("arm", &arm)], "not x86_64");

    let huge = patched("hello", |b| {
        let ph = first_load_phdr(b);
        b[ph + 40..ph + 48].copy_from_slice(&(1u64 << 30).to_le_bytes());
    });
    rejected(
        &[&p("huge", &huge), "--mem", "16"],
        "does not fit in guest memory",
    );

    rejected(&["/nonexistent/dust/image"], "No such file");
}

#[test]
fn bad_initrd_and_memory_sizes_are_named() {
    require_kvm!();
    let dir = TempDir::new("initrd");
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let initrd = dir.file("initrd", &vec![0u8; 8 << 20]);
    rejected(
        &[hello, "--mem", "4", "--initrd", initrd.to_str().unwrap()],
        "does not fit in guest memory",
    );
    rejected(&[hello, "--initrd", "/nonexistent/initrd"], "No such file");
    rejected(&[hello, "--mem", "0"], "memory_mib = 0");
    rejected(&[hello, "--mem", "4000000000"], "more than this host's");
    rejected(&[hello, "--vcpus", "2"], "needs irqchip");
}

#[test]
fn initrd_that_fits_is_accepted() {
    require_kvm!();
    let dir = TempDir::new("initrd-ok");
    let initrd = dir.file("initrd", &vec![0xa5u8; 1 << 20]);
    let o = dust_run(&[
        guest("hello").to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
