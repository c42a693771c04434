//! Registers at entry: general purpose, segment/control, FPU/SSE control, boot MSRs, and
//! the LAPIC's LINT pins when there is an in-kernel irqchip.

use dust_abi::layout::{BOOT_STACK, GDT, IDT, PAGE_TABLES, ZERO_PAGE};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;

use super::gdt::{Segments, GDT_SIZE};
use crate::kvm::{kvm_err, KvmError};

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Long mode, paging on, flat segments, SSE usable.
pub fn setup_sregs(vcpu: &VcpuFd, seg: &Segments) -> Result<(), KvmError> {
    let mut s = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    s.gdt.base = GDT;
    s.gdt.limit = GDT_SIZE - 1;
    s.idt.base = IDT;
    s.idt.limit = 0;
    s.cs = seg.code;
    s.ds = seg.data;
    s.es = seg.data;
    s.fs = seg.data;
    s.gs = seg.data;
    s.ss = seg.data;
    s.tr = seg.tss;
    s.cr3 = PAGE_TABLES;
    s.cr4 |= CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.cr0 = (s.cr0 | CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG) & !(CR0_EM | CR0_CD | CR0_NW);
    s.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))
}

/// RIP at the entry, RSI at the zero page, a small boot stack.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), KvmError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
}

/// x87 control word and MXCSR at their reset values (all exceptions masked).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))
}

/// A KVM MSR list of `(index, value)` pairs.
pub fn msr_list(entries: &[(u32, u64)]) -> Result<Msrs, KvmError> {
    let entries: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| KvmError {
        what: "building the MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })
}

/// The MSRs Linux expects to find sane at entry.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), KvmError> {
    const ENTRIES: [(u32, u64); 10] = [
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0082, 0),       // LSTAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRR default type: enabled, write-back
    ];
    let msrs = msr_list(&ENTRIES)?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != ENTRIES.len() {
        // KVM stops at the first MSR it refuses; report which.
        let index = ENTRIES.get(set).map_or(0, |e| e.0);
        tracing::debug!(
            "KVM accepted {set} of {} boot MSRs (refused {index:#x})",
            ENTRIES.len()
        );
    }
    Ok(())
}

/// With an in-kernel LAPIC: LINT0 = ExtINT (the PIC), LINT1 = NMI, as a PC wires them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), KvmError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(LVT_LINT0, MODE_EXTINT), (LVT_LINT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))
}
