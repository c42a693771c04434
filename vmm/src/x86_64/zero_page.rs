//! The Linux zero page (`struct boot_params`): boot-protocol header, command line pointer,
//! initrd and the e820 map. Guests find it through RSI.

use dust_abi::layout::{CMDLINE, HIMEM_START, ZERO_PAGE};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::GuestAddress;

use crate::memory::{ram_ranges, GuestMem};

const E820_RAM: u32 = 1;
/// Conventional memory ends where the EBDA would start (the MP table lives above it).
const EBDA_START: u64 = 0x9fc00;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// What goes into the zero page besides memory.
pub struct BootInfo<'a> {
    /// Setup header of a bzImage (None for ELF).
    pub setup_header: Option<&'a setup_header>,
    /// Command line length including the NUL.
    pub cmdline_size: u32,
    /// Initrd (address, size).
    pub initrd: Option<(u64, u64)>,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
}

/// The usable RAM as `(address, size)`: conventional memory below the EBDA, then RAM from
/// 1 MiB, around the MMIO hole. The PVH memory map (`pvh.rs`) is the same list.
pub fn e820_ram(memory_mib: u32) -> Vec<(u64, u64)> {
    let mut e820 = vec![(0, EBDA_START)];
    for (start, len) in ram_ranges(memory_mib) {
        let (from, end) = (start.max(HIMEM_START), start + len);
        if end > from {
            e820.push((from, end - from));
        }
    }
    e820
}

/// Build the zero page and write it at `ZERO_PAGE`.
pub fn write(mem: &GuestMem, info: &BootInfo) -> Result<(), linux_loader::configurator::Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = *hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = info.cmdline_size;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (i, (addr, size)) in e820_ram(info.memory_mib).into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
        params.e820_entries = i as u8 + 1;
    }
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, GuestAddress(ZERO_PAGE)), mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn e820_skips_the_low_hole_and_the_mmio_hole() {
        let mem = crate::memory::create(4).unwrap();
        write(
            &mem,
            &BootInfo {
                setup_header: None,
                cmdline_size: 6,
                initrd: None,
                memory_mib: 4,
            },
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table;
        assert_eq!({ e[0].addr }, 0);
        assert_eq!({ e[0].size }, EBDA_START);
        assert_eq!({ e[1].addr }, HIMEM_START);
        assert_eq!({ e[1].size }, (4 << 20) - HIMEM_START);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE as u32);
    }
}
