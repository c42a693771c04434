//! The PVH entry (Xen's x86 boot ABI, which QEMU `-M microvm` and Firecracker use for ELF
//! kernels): the ELF note `XEN_ELFNOTE_PHYS32_ENTRY` points at `_start_pvh`, entered in
//! 32-bit protected mode with paging off and EBX = the `hvm_start_info` structure. It
//! identity maps the first 4 GiB, switches to long mode and joins the 64-bit path.
//!
//! dust itself ignores the note and enters at the ELF entry (`_start`, Linux 64-bit boot
//! protocol); the same image therefore boots under dust, QEMU and Firecracker.

use crate::start::{STACK, STACK_SIZE};

/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Page tables for the identity map: PML4, PDPT and (without 1 GiB pages) four page
/// directories of 2 MiB pages. In `.bss`: no image bytes, and the dust path never uses them.
#[repr(C, align(4096))]
struct PageTables([[u64; 512]; 6]);

static mut PAGE_TABLES: PageTables = PageTables([[0; 512]; 6]);

core::arch::global_asm!(
    // The note: namesz, descsz, type, "Xen\0", then the 32-bit entry as a quad (as Linux
    // writes it; QEMU reads eight bytes). 4-byte alignment, as QEMU expects of notes.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long {note_type}",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad _start_pvh",
    ".popsection",
    //
    ".pushsection .text.dust_pvh, \"ax\"",
    ".code32",
    ".global _start_pvh",
    ".type _start_pvh, @function",
    "_start_pvh:",
    "cli",
    "cld",
    "movl %ebx, %edi",                       // hvm_start_info, the Rust argument
    // Page tables: PML4[0] -> PDPT.
    "movl ${tables}, %esi",
    "leal 0x1003(%esi), %eax",
    "movl %eax, (%esi)",
    // 1 GiB pages if the CPU has them (CPUID 0x80000001 EDX bit 26): four PDPT entries.
    "movl $0x80000001, %eax",
    "cpuid",
    "testl $(1 << 26), %edx",
    "jz 2f",
    "movl $0x83, 0x1000(%esi)",              // present, writable, 1 GiB page: 0
    "movl $0x40000083, 0x1008(%esi)",        // 1 GiB
    "movl $0x80000083, 0x1010(%esi)",        // 2 GiB
    "movl $0xc0000083, 0x1018(%esi)",        // 3 GiB
    "jmp 3f",
    // Otherwise four page directories of 2 MiB pages.
    "2:",
    "leal 0x2003(%esi), %eax",
    "movl %eax, 0x1000(%esi)",
    "addl $0x1000, %eax",
    "movl %eax, 0x1008(%esi)",
    "addl $0x1000, %eax",
    "movl %eax, 0x1010(%esi)",
    "addl $0x1000, %eax",
    "movl %eax, 0x1018(%esi)",
    "xorl %ecx, %ecx",
    "1:",
    "movl %ecx, %eax",
    "shll $21, %eax",
    "orl $0x83, %eax",
    "movl %eax, 0x2000(%esi,%ecx,8)",
    "incl %ecx",
    "cmpl $2048, %ecx",
    "jb 1b",
    "3:",
    // CR4: PAE, OSFXSR, OSXMMEXCPT. CR3: the PML4. EFER.LME. CR0: PG, MP; EM clear.
    "movl %cr4, %eax",
    "orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax",
    "movl %eax, %cr4",
    "movl %esi, %cr3",
    "movl $0xc0000080, %ecx",
    "rdmsr",
    "orl $(1 << 8), %eax",
    "wrmsr",
    "movl %cr0, %eax",
    "andl $~(1 << 2), %eax",
    "orl $((1 << 31) | (1 << 1) | 1), %eax",
    "movl %eax, %cr0",
    "lgdt dust_pvh_gdt_ptr",
    "pushl $0x08",
    "pushl $4f",
    "lret",
    ".code64",
    "4:",
    "movl $0x10, %eax",
    "movl %eax, %ds",
    "movl %eax, %es",
    "movl %eax, %ss",
    "movl %eax, %fs",
    "movl %eax, %gs",
    "leaq {stack}+{stack_size}(%rip), %rsp",
    "xorl %ebp, %ebp",
    "movl %edi, %edi",                       // zero-extend the start_info address
    "call {start}",
    "ud2",
    ".size _start_pvh, . - _start_pvh",
    // Flat GDT: null, 64-bit code (0x08), data (0x10).
    ".balign 8",
    "dust_pvh_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "dust_pvh_gdt_ptr:",
    ".word 3 * 8 - 1",
    ".long dust_pvh_gdt",
    ".popsection",
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
    tables = sym PAGE_TABLES,
    stack = sym STACK,
    stack_size = const STACK_SIZE,
    start = sym start_pvh,
    options(att_syntax),
);

/// Rust side of the PVH entry.
extern "C" fn start_pvh(start_info: usize) -> ! {
    // SAFETY: called once by `_start_pvh` with the EBX the loader set: hvm_start_info.
    unsafe { crate::boot::init_pvh(start_info) };
    crate::start::run_main()
}
