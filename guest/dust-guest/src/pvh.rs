//! The PVH entry (Xen's x86 boot ABI, which QEMU `-M microvm` and Firecracker use for ELF
//! kernels): the ELF note `XEN_ELFNOTE_PHYS32_ENTRY` points at `_start_pvh`, entered in
//! 32-bit protected mode with paging off, EBX = the `hvm_start_info` structure and ESP
//! undefined. It takes the runtime's stack, loads the identity map of the first 4 GiB that
//! the image carries as data, switches to long mode and joins the 64-bit path.
//!
//! dust enters at the ELF entry (`_start`, Linux 64-bit boot protocol) unless run with
//! `--boot pvh`; the same image therefore boots under dust, QEMU and Firecracker.

use crate::start::{STACK, STACK_SIZE};

/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

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
    // The PVH ABI leaves ESP undefined (Firecracker enters with ESP = 0): take the
    // runtime's stack before anything can touch the stack.
    "movl ${stack}+{stack_size}, %esp",
    "cli",
    "cld",
    "movl %ebx, %edi",                       // hvm_start_info, the Rust argument
    // CR4: PAE, OSFXSR, OSXMMEXCPT. CR3: the PML4. EFER.LME. CR0: PG, MP; EM clear.
    "movl %cr4, %eax",
    "orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax",
    "movl %eax, %cr4",
    "movl $dust_pvh_pml4, %eax",
    "movl %eax, %cr3",
    "movl $0xc0000080, %ecx",
    "rdmsr",
    "orl $(1 << 8), %eax",
    "wrmsr",
    "movl %cr0, %eax",
    "andl $~(1 << 2), %eax",
    "orl $((1 << 31) | (1 << 1) | 1), %eax",
    "movl %eax, %cr0",
    "lgdt dust_pvh_gdt_ptr",
    "ljmpl $0x08, $4f",
    ".code64",
    "4:",
    "movl $0x10, %eax",
    "movl %eax, %ds",
    "movl %eax, %es",
    "movl %eax, %ss",
    "movl %eax, %fs",
    "movl %eax, %gs",
    // The upper halves of registers written in 32-bit mode are undefined: set RSP again.
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
    //
    // The identity map of the first 4 GiB as data: PML4[0] -> PDPT, PDPT[0..4] -> four
    // page directories of 2 MiB pages (this KVM offers no 1 GiB pages). The assembler
    // writes all 2,048 entries, so no emulated loop fills them at boot; they cost 24 KiB of
    // image. Only the PVH path uses them: dust builds its own tables.
    ".pushsection .data.dust_pvh_tables, \"aw\"",
    ".balign 4096",
    "dust_pvh_pml4:",
    ".quad dust_pvh_pdpt + 0x3",             // present, writable
    ".fill 511, 8, 0",
    "dust_pvh_pdpt:",
    ".quad dust_pvh_pd + 0x3",
    ".quad dust_pvh_pd + 0x1000 + 0x3",
    ".quad dust_pvh_pd + 0x2000 + 0x3",
    ".quad dust_pvh_pd + 0x3000 + 0x3",
    ".fill 508, 8, 0",
    "dust_pvh_pd:",
    ".set dust_pvh_page, 0",
    ".rept 2048",
    ".quad dust_pvh_page + 0x83",            // present, writable, 2 MiB page
    ".set dust_pvh_page, dust_pvh_page + 0x200000",
    ".endr",
    ".popsection",
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
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
