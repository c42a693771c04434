//! x86_64 boot: the state a guest finds at its 64-bit entry (docs/guest-contract.md).
//!
//! Long mode with the first 4 GiB identity-mapped by 2 MiB pages (so unikernels reach the
//! virtio-mmio window, LAPIC and IOAPIC without mapping them), a flat GDT, RSI = zero page
//! with the e820 map and command line, CR0.EM clear and CR4.OSFXSR|OSXMMEXCPT set, CPUID from
//! KVM_GET_SUPPORTED_CPUID, the boot MSRs, and an MP table when there is more than one vCPU.

pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod zero_page;
