//! The PVH boot protocol (Xen's x86 HVM direct boot ABI, `xen/include/public/arch-x86/hvm/
//! start_info.h`, as QEMU `-M microvm` and Firecracker use it): `dust run --boot pvh`.
//!
//! The image's `XEN_ELFNOTE_PHYS32_ENTRY` note (found by linux-loader's ELF loader) gives a
//! 32-bit entry. The vCPU starts there in protected mode with paging off, flat 32-bit
//! segments, CR4 = 0, EFER = 0 and EBX = the guest-physical address of an `hvm_start_info`
//! that points at the command line, the memory map and the initrd (as module 0). ESP is 0,
//! as Firecracker leaves it (the ABI says it is undefined): a guest that touches the stack
//! before setting ESP faults here as it would there.

use dust_abi::layout::{CMDLINE, GDT, PVH_START_INFO};
use kvm_bindings::{kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::gdt::{DATA_SELECTOR, GDT_SIZE};
use crate::config::VmConfig;
use crate::kvm::{kvm_err as kvm, KvmError};
use crate::loader::LoadedKernel;
use crate::memory::GuestMem;

/// `hvm_start_info` (56 bytes), below the zero page (0x7000).
const START_INFO: u64 = PVH_START_INFO;
/// The initrd's module entry (32 bytes).
const MODLIST: u64 = START_INFO + 0x40;
/// The memory map (24 bytes an entry; room for 160 below the zero page).
const MEMMAP: u64 = START_INFO + 0x80;
const _: () = assert!(MEMMAP + 160 * 24 <= dust_abi::layout::ZERO_PAGE);
/// `XEN_HVM_START_MAGIC_VALUE`.
const MAGIC: u32 = 0x336e_c578;
/// Version 1: the memory map fields are valid.
const VERSION: u32 = 1;
const E820_RAM: u32 = 1;

/// 32-bit flat code: present, ring 0, execute/read, accessed; G = 1, D = 1, L = 0.
const CODE32_SELECTOR: u16 = 0x08;
const TSS_SELECTOR: u16 = 0x18;

/// Why a PVH boot could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// `--boot pvh` with an image that has no PVH note.
    #[error("{0}: --boot pvh needs an ELF with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY); this image has none")]
    NoNote(std::path::PathBuf),
    /// Writing `hvm_start_info` or its tables failed.
    #[error("writing hvm_start_info: {0}")]
    Write(#[from] linux_loader::configurator::Error),
    /// A KVM register call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// What goes into `hvm_start_info`.
pub struct StartInfo<'a> {
    /// The usable RAM, `(address, size)`, as in the e820 map.
    pub ram: &'a [(u64, u64)],
    /// The initrd, `(address, size)`.
    pub initrd: Option<(u64, u64)>,
}

/// For `--boot pvh`: the image's PVH entry, once `hvm_start_info` is written for it.
pub fn prepare(
    mem: &GuestMem,
    config: &VmConfig,
    kernel: &LoadedKernel,
    initrd: Option<(u64, u64)>,
) -> Result<u64, PvhError> {
    let entry = kernel
        .pvh_entry
        .ok_or_else(|| PvhError::NoNote(config.image.clone()))?;
    let ram = super::zero_page::e820_ram(config.memory_mib);
    write_start_info(mem, &StartInfo { ram: &ram, initrd })?;
    Ok(entry)
}

/// Writes `hvm_start_info`, its memory map and module list at [`START_INFO`]. The command
/// line is the one already written at `CMDLINE`.
pub fn write_start_info(mem: &GuestMem, info: &StartInfo) -> Result<(), PvhError> {
    let memmap: Vec<hvm_memmap_table_entry> = info
        .ram
        .iter()
        .map(|&(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let start = hvm_start_info {
        magic: MAGIC,
        version: VERSION,
        cmdline_paddr: CMDLINE,
        memmap_paddr: MEMMAP,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(info.initrd.is_some()),
        modlist_paddr: if info.initrd.is_some() { MODLIST } else { 0 },
        ..Default::default()
    };
    let mut params = BootParams::new(&start, GuestAddress(START_INFO));
    params.set_sections(&memmap, GuestAddress(MEMMAP));
    if let Some((paddr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(MODLIST));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}

fn flat(selector: u16, type_: u8, db: u8, s: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts vCPU 0 at the PVH entry: 32-bit protected mode, paging off, EBX = start info,
/// ESP = 0. (The GDT register points at dust's GDT, whose descriptors the guest never
/// needs to reload: a PVH guest loads its own before it changes mode.)
pub fn setup_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), PvhError> {
    let mut s = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    s.gdt.base = GDT;
    s.gdt.limit = GDT_SIZE - 1;
    s.cs = flat(CODE32_SELECTOR, 0xb, 1, 1);
    let data = flat(DATA_SELECTOR, 0x3, 1, 1);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    // A busy 32-bit TSS, as the ABI asks; nothing uses it.
    s.tr = kvm_segment {
        limit: 0x67,
        g: 0,
        ..flat(TSS_SELECTOR, 0xb, 0, 0)
    };
    s.cr0 = 0x11; // PE | ET: protected mode, paging off
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    vcpu.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: START_INFO,
        rsp: 0,
        ..Default::default()
    };
    Ok(vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn start_info_points_at_the_command_line_memory_map_and_initrd() {
        let mem = crate::memory::create(8).unwrap();
        let ram = [(0, 0x9fc00), (0x10_0000, 0x70_0000)];
        write_start_info(
            &mem,
            &StartInfo {
                ram: &ram,
                initrd: Some((0x70_0000, 0x1000)),
            },
        )
        .unwrap();
        let s: hvm_start_info = mem.read_obj(GuestAddress(START_INFO)).unwrap();
        assert_eq!(s.magic, MAGIC);
        assert_eq!(s.version, 1);
        assert_eq!(s.cmdline_paddr, CMDLINE);
        assert_eq!(s.memmap_entries, 2);
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(s.memmap_paddr + 24)).unwrap();
        assert_eq!((e.addr, e.size, e.type_), (0x10_0000, 0x70_0000, E820_RAM));
        assert_eq!(s.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(s.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x70_0000, 0x1000));
    }
}
