//! The C memory functions the compiler calls (these strong definitions take the place of
//! compiler_builtins' weak, generic ones), and the unwinding symbols the prebuilt `core`
//! references even with `panic = "abort"`.
//!
//! The emulating KVM runs each iteration of a `rep` string instruction as one emulated
//! step, and `rep movsq`/`rep stosq` move 8 bytes per step: the bulk goes as quadwords and
//! only the 0-7 byte tail bytewise. Everything is inline assembly so that LLVM cannot turn
//! a loop here back into a call to the function itself.

use core::arch::asm;

/// # Safety
/// C `memcpy`: `dst` and `src` valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; DF is clear per the ABI.
    unsafe {
        asm!(
            "rep movsq",
            "mov ecx, edx",
            "rep movsb",
            inout("rcx") n >> 3 => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            in("edx") (n & 7) as u32,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// # Safety
/// C `memmove`: `dst` and `src` valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // `dst` is below `src` or past its end: a forward copy never reads a byte it wrote.
        // SAFETY: same ranges as the caller's.
        return unsafe { memcpy(dst, src, n) };
    }
    // Overlap with `dst` above `src`: copy backwards, tail first, then the quadwords.
    // SAFETY: the caller guarantees both ranges; DF is set only inside this block.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "sub rsi, 7",
            "sub rdi, 7",
            "mov rcx, rdx",
            "rep movsq",
            "cld",
            inout("rcx") n & 7 => _,
            inout("rdi") dst.add(n).wrapping_sub(1) => _,
            inout("rsi") src.add(n).wrapping_sub(1) => _,
            in("rdx") n >> 3,
            options(nostack),
        );
    }
    dst
}

/// # Safety
/// C `memset`: `dst` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    let pattern = u64::from(value as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees the range; DF is clear per the ABI.
    unsafe {
        asm!(
            "rep stosq",
            "mov ecx, edx",
            "rep stosb",
            inout("rcx") n >> 3 => _,
            inout("rdi") dst => _,
            in("rax") pattern,
            in("edx") (n & 7) as u32,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// # Safety
/// C `memcmp`: `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let diff: i32;
    // Compare quadwords; on a mismatch step back and find the byte within that quadword.
    // SAFETY: reads within the caller's ranges; DF is clear per the ABI.
    unsafe {
        asm!(
            "xor eax, eax", // ZF = 1: equal if nothing is compared
            "repe cmpsq",
            "je 2f",
            "sub rsi, 8",
            "sub rdi, 8",
            "mov ecx, 8",
            "jmp 3f",
            "2:",
            "mov ecx, edx",
            "3:",
            "xor eax, eax",
            "repe cmpsb",
            "je 4f",
            "movzx eax, byte ptr [rsi - 1]",
            "movzx ecx, byte ptr [rdi - 1]",
            "sub eax, ecx",
            "4:",
            inout("rcx") n >> 3 => _,
            inout("rsi") a => _,
            inout("rdi") b => _,
            in("edx") (n & 7) as u32,
            out("eax") diff,
            options(nostack, readonly),
        );
    }
    diff
}

/// # Safety
/// C `bcmp`: `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the prebuilt `core`; never called with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Referenced by the prebuilt `core`; never called with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::pseudo::exit(crate::pseudo::PANIC_STATUS)
}
