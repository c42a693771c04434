//! Boot information the VMM hands over: where the command line is, the memory map and
//! the initrd.
//!
//! dust enters the guest through the Linux 64-bit boot protocol with RSI pointing at the
//! zero page (`struct boot_params`, [`ZERO_PAGE`](dust_abi::layout::ZERO_PAGE)): the e820
//! table, `setup_header.cmd_line_ptr` and the initrd fields are read from there, at the
//! offsets of Linux's `arch/x86/include/uapi/asm/bootparam.h`. QEMU and Firecracker enter
//! through the PVH note instead, with EBX pointing at Xen's `hvm_start_info`
//! (`xen/include/public/arch-x86/hvm/start_info.h`), which carries the same three things.

use crate::cell::Global;

/// `struct boot_params` offsets (Linux `bootparam.h`).
#[cfg_attr(test, allow(dead_code))]
mod zero_page {
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const E820_TABLE: usize = 0x2d0;
    /// `struct boot_e820_entry { u64 addr; u64 size; u32 type; }`, packed.
    pub const E820_ENTRY_SIZE: usize = 20;
    /// Length of `e820_table`.
    pub const E820_MAX: u8 = 128;
}

/// `struct hvm_start_info` offsets.
#[cfg_attr(test, allow(dead_code))]
mod start_info {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const NR_MODULES: usize = 12;
    pub const MODLIST_PADDR: usize = 16;
    pub const CMDLINE_PADDR: usize = 24;
    /// Version 1 and later.
    pub const MEMMAP_PADDR: usize = 40;
    pub const MEMMAP_ENTRIES: usize = 48;
    /// `struct hvm_memmap_table_entry { u64 addr; u64 size; u32 type; u32 reserved; }`
    pub const MEMMAP_ENTRY_SIZE: usize = 24;
    /// `XEN_HVM_START_MAGIC_VALUE`.
    pub const MAGIC_VALUE: u32 = 0x336e_c578;
}

/// e820 type of usable RAM (the PVH memory map uses the same numbers).
const E820_RAM: u32 = 1;

/// A range of guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Where the boot information lives; set once by the entry code.
#[derive(Clone, Copy)]
enum Source {
    /// Not booted by a VMM (unit tests).
    None,
    /// Linux boot protocol: guest-physical address of the zero page.
    #[cfg_attr(test, allow(dead_code))]
    ZeroPage(usize),
    /// PVH: guest-physical address of `hvm_start_info`.
    #[cfg_attr(test, allow(dead_code))]
    Pvh(usize),
}

static SOURCE: Global<Source> = Global::new(Source::None);
static CMDLINE: Global<&'static str> = Global::new("");

/// Records the zero page the VMM passed in RSI and reads the command line.
///
/// # Safety
/// Once, before `main`; `zero_page` must point at a valid `boot_params`.
#[cfg(target_os = "none")]
pub(crate) unsafe fn init_linux(zero_page: usize) {
    SOURCE.set(Source::ZeroPage(zero_page));
    // SAFETY: the caller vouches for the zero page, and the VMM for the command line.
    let line = unsafe {
        let ptr = read::<u32>(zero_page + zero_page::CMD_LINE_PTR) as usize;
        c_str(ptr, dust_abi::layout::CMDLINE_MAX)
    };
    CMDLINE.set(line);
}

/// Records the `hvm_start_info` the PVH loader passed in EBX and reads the command line.
///
/// # Safety
/// Once, before `main`; `start_info` must point at a valid `hvm_start_info`.
#[cfg(target_os = "none")]
pub(crate) unsafe fn init_pvh(start_info: usize) {
    // SAFETY: the caller vouches for the structure.
    if unsafe { read::<u32>(start_info + start_info::MAGIC) } != start_info::MAGIC_VALUE {
        return;
    }
    SOURCE.set(Source::Pvh(start_info));
    // SAFETY: as above; the loader vouches for the command line.
    let line = unsafe {
        let ptr = read::<u64>(start_info + start_info::CMDLINE_PADDR) as usize;
        c_str(ptr, dust_abi::layout::CMDLINE_MAX)
    };
    CMDLINE.set(line);
}

/// Whether `hlt` with interrupts off returns when the VMM has work for the guest. True
/// under dust (without an irqchip: it parks the vCPU and resumes it after the `hlt`), by
/// either entry (its CPUID signature tells a PVH boot by dust apart); false under the other
/// VMMs that boot through PVH (QEMU, Firecracker), where it would halt forever, so there a
/// waiting guest polls instead.
pub fn halt_resumes() -> bool {
    match SOURCE.get() {
        Source::ZeroPage(_) => true,
        Source::Pvh(_) => crate::serial::dust_leaves(),
        Source::None => false,
    }
}

/// The whole command line as the VMM passed it (empty if none, or if it is not UTF-8 the
/// valid prefix).
pub fn cmdline() -> &'static str {
    CMDLINE.get()
}

/// The usable RAM regions of the memory map (e820 type 1), in the VMM's order.
pub fn ram() -> impl Iterator<Item = Region> {
    let (table, count, stride) = match SOURCE.get() {
        Source::None => (0, 0, 0),
        Source::ZeroPage(zp) => {
            // SAFETY: the zero page was vouched for in `init_linux`.
            let n = unsafe { read::<u8>(zp + zero_page::E820_ENTRIES) }.min(zero_page::E820_MAX);
            (
                zp + zero_page::E820_TABLE,
                usize::from(n),
                zero_page::E820_ENTRY_SIZE,
            )
        }
        // SAFETY: the structure was vouched for in `init_pvh`.
        Source::Pvh(si) => unsafe {
            if read::<u32>(si + start_info::VERSION) >= 1 {
                (
                    read::<u64>(si + start_info::MEMMAP_PADDR) as usize,
                    read::<u32>(si + start_info::MEMMAP_ENTRIES) as usize,
                    start_info::MEMMAP_ENTRY_SIZE,
                )
            } else {
                (0, 0, 0)
            }
        },
    };
    (0..count).filter_map(move |i| {
        let entry = table + i * stride;
        // SAFETY: `i < count`, inside the table the boot information describes; every
        // layout stores {u64 addr, u64 size, u32 type} first.
        let (addr, size, kind) = unsafe {
            (
                read::<u64>(entry),
                read::<u64>(entry + 8),
                read::<u32>(entry + 16),
            )
        };
        (kind == E820_RAM).then_some(Region { addr, size })
    })
}

/// The initrd the VMM loaded, if any.
pub fn initrd() -> Option<Region> {
    match SOURCE.get() {
        Source::None => None,
        Source::ZeroPage(zp) => {
            // SAFETY: the zero page was vouched for in `init_linux`.
            let (addr, size) = unsafe {
                (
                    read::<u32>(zp + zero_page::RAMDISK_IMAGE),
                    read::<u32>(zp + zero_page::RAMDISK_SIZE),
                )
            };
            (size != 0).then_some(Region {
                addr: addr.into(),
                size: size.into(),
            })
        }
        // The first module is the initrd: `hvm_modlist_entry { u64 paddr; u64 size; .. }`.
        // SAFETY: the structure was vouched for in `init_pvh`.
        Source::Pvh(si) => unsafe {
            if read::<u32>(si + start_info::NR_MODULES) == 0 {
                return None;
            }
            let entry = read::<u64>(si + start_info::MODLIST_PADDR) as usize;
            let (addr, size) = (read::<u64>(entry), read::<u64>(entry + 8));
            (size != 0).then_some(Region { addr, size })
        },
    }
}

/// The heap: from `image_end` to the end of the RAM region that holds it, stopping short of
/// an initrd above the image and of the MMIO hole (only memory below it is identity mapped
/// for certain). `None` if `image_end` is in no RAM region.
pub fn heap_span(
    image_end: u64,
    ram: impl Iterator<Item = Region>,
    initrd: Option<Region>,
) -> Option<Region> {
    let region = ram
        .into_iter()
        .find(|r| r.addr <= image_end && image_end < r.end())?;
    let mut end = region.end().min(dust_abi::layout::MMIO_HOLE_START);
    if let Some(rd) = initrd.filter(|rd| rd.end() > image_end) {
        end = end.min(rd.addr.max(image_end));
    }
    (end > image_end).then_some(Region {
        addr: image_end,
        size: end - image_end,
    })
}

/// # Safety
/// `addr` must be readable for `size_of::<T>()` bytes.
unsafe fn read<T: Copy>(addr: usize) -> T {
    // SAFETY: forwarded to the caller; identity mapping makes the address a pointer.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// The NUL-terminated command line at `ptr` (at most `max` bytes), as UTF-8 (the valid
/// prefix), with tabs and line breaks turned into spaces so that words split at spaces.
///
/// # Safety
/// `ptr` must be writable for `max` bytes, and never written by anyone else afterwards.
#[cfg(target_os = "none")]
unsafe fn c_str(ptr: usize, max: usize) -> &'static str {
    if ptr == 0 {
        return "";
    }
    // SAFETY: the caller vouches for `max` bytes at `ptr`.
    let area = unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, max) };
    let len = crate::scan::find(area, 0).unwrap_or(max);
    let bytes = &mut area[..len];
    for sep in [b'\t', b'\n', b'\r'] {
        let mut from = 0;
        while let Some(i) = crate::scan::find(&bytes[from..], sep) {
            bytes[from + i] = b' ';
            from += i + 1;
        }
    }
    let bytes: &'static [u8] = bytes;
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            // SAFETY: `valid_up_to` bytes are valid UTF-8.
            unsafe { core::str::from_utf8_unchecked(&bytes[..e.valid_up_to()]) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn dust_e820(mem_mib: u64) -> [Region; 2] {
        [
            Region {
                addr: 0,
                size: 0x9fc00,
            },
            Region {
                addr: MIB,
                size: mem_mib * MIB - MIB,
            },
        ]
    }

    #[test]
    fn heap_runs_from_image_end_to_end_of_ram() {
        let h = heap_span(0x205000, dust_e820(32).into_iter(), None).unwrap();
        assert_eq!(
            h,
            Region {
                addr: 0x205000,
                size: 32 * MIB - 0x205000
            }
        );
    }

    #[test]
    fn heap_stops_below_the_initrd() {
        let rd = Region {
            addr: 30 * MIB,
            size: MIB,
        };
        let h = heap_span(0x205000, dust_e820(32).into_iter(), Some(rd)).unwrap();
        assert_eq!(h.end(), 30 * MIB);
        // An initrd below the image does not limit the heap.
        let low = Region {
            addr: MIB,
            size: 0x1000,
        };
        let h = heap_span(0x205000, dust_e820(32).into_iter(), Some(low)).unwrap();
        assert_eq!(h.end(), 32 * MIB);
    }

    #[test]
    fn heap_stops_at_the_mmio_hole() {
        let ram = [Region {
            addr: MIB,
            size: 8 << 30,
        }];
        let h = heap_span(0x205000, ram.into_iter(), None).unwrap();
        assert_eq!(h.end(), dust_abi::layout::MMIO_HOLE_START);
    }

    #[test]
    fn no_heap_outside_ram() {
        assert_eq!(
            heap_span(
                0x205000,
                [Region {
                    addr: 0,
                    size: 0x9fc00
                }]
                .into_iter(),
                None
            ),
            None
        );
        assert_eq!(heap_span(0x205000, core::iter::empty(), None), None);
    }
}
