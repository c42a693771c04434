//! Loading the guest image (and initrd) into guest memory with linux-loader.
//!
//! linux-loader does the copying; this module first checks the image so that a bad one is
//! rejected with a message naming the problem (linux-loader accepts 32-bit and non-x86 ELFs
//! and reports truncation only as a generic read error).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dust_abi::layout::HIMEM_START;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::GuestAddress;

use crate::memory::GuestMem;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// bzImage: "HdrS" at 0x202, boot protocol >= 2.06 for the 64-bit entry.
const BZ_MAGIC_OFFSET: usize = 0x202;
const BZ_MAGIC: &[u8; 4] = b"HdrS";
/// Offset of the 64-bit entry from the protected-mode kernel's load address.
const BZ_ENTRY_64: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;

/// A rejected image or initrd.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Open/read failure (missing file, permissions).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Zero-length image.
    #[error("{0} is empty")]
    Empty(PathBuf),
    /// Neither ELF nor bzImage.
    #[error("{path} is not an x86_64 ELF or a bzImage (starts with {head})")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// First bytes, hex.
        head: String,
    },
    /// An ELF dust cannot boot.
    #[error("{path}: {why}")]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A bzImage dust cannot boot.
    #[error("{path}: {why}")]
    BadBzImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Image larger than guest memory allows.
    #[error("{path} does not fit in guest memory: it needs memory up to {needs_mib} MiB, the guest has {has_mib} MiB")]
    TooBig {
        /// The file.
        path: PathBuf,
        /// Highest address it needs, MiB (rounded up).
        needs_mib: u64,
        /// Guest RAM, MiB.
        has_mib: u64,
    },
    /// The initrd does not fit between kernel and the top of low RAM.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel (free: {free} bytes)")]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room available.
        free: u64,
    },
    /// linux-loader refused it.
    #[error("{path}: {source}")]
    Loader {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: linux_loader::loader::Error,
    },
}

/// What was loaded.
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel.
    pub end: u64,
    /// The bzImage's setup header, to seed the zero page.
    pub setup_header: Option<setup_header>,
    /// The 32-bit PVH entry of an ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<u64>,
}

/// Initrd placement.
pub struct LoadedInitrd {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// What a checked image is.
enum Format {
    /// An ELF whose highest segment ends here.
    Elf { end: u64 },
    /// A bzImage with a 64-bit entry.
    BzImage,
}

/// Open `path` and check it as [`load_kernel`] will before loading: format, architecture,
/// segments, size against `ram_end`.
fn check(path: &Path, ram_end: u64) -> Result<(File, Format), ImageError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Err(ImageError::Empty(path.to_owned()));
    }
    let mut head = [0u8; 0x400];
    let n = read_up_to(&mut file, &mut head).map_err(io_err(path))?;
    let head = &head[..n];
    if head.starts_with(ELF_MAGIC) {
        let end = check_elf(&mut file, path, head, len, ram_end)?;
        Ok((file, Format::Elf { end }))
    } else if head.get(BZ_MAGIC_OFFSET..BZ_MAGIC_OFFSET + 4) == Some(BZ_MAGIC) {
        let xloadflags = if head.len() >= 0x238 {
            u16_at(head, 0x236)
        } else {
            0
        };
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(ImageError::BadBzImage {
                path: path.to_owned(),
                why: "bzImage has no 64-bit entry point (XLF_KERNEL_64)".into(),
            });
        }
        // The protected-mode kernel lands at 1 MiB and decompresses itself in place; it must
        // at least fit as loaded.
        if HIMEM_START + len > ram_end {
            return Err(ImageError::TooBig {
                path: path.to_owned(),
                needs_mib: mib_up(HIMEM_START + len),
                has_mib: mib_up(ram_end),
            });
        }
        Ok((file, Format::BzImage))
    } else {
        let head = head
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        Err(ImageError::UnknownFormat {
            path: path.to_owned(),
            head,
        })
    }
}

/// Check that `path` is an image a VM of `memory_mib` can boot, as [`load_kernel`] would,
/// without loading it: for validating a config long before a VM is built.
pub fn check_image(path: &Path, memory_mib: u32) -> Result<(), ImageError> {
    check(path, crate::memory::low_ram_end(memory_mib)).map(drop)
}

/// Load `path` into `mem`, whose RAM below the MMIO hole ends at `ram_end`.
pub fn load_kernel(mem: &GuestMem, path: &Path, ram_end: u64) -> Result<LoadedKernel, ImageError> {
    let (mut file, format) = check(path, ram_end)?;
    let loader_err = |source| ImageError::Loader {
        path: path.to_owned(),
        source,
    };
    match format {
        Format::Elf { end } => {
            let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(loader_err)?;
            Ok(LoadedKernel {
                entry: loaded.kernel_load.0,
                end: end.max(loaded.kernel_end),
                setup_header: None,
                pvh_entry: match loaded.pvh_boot_cap {
                    PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
                    _ => None,
                },
            })
        }
        Format::BzImage => {
            file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
            let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(loader_err)?;
            Ok(LoadedKernel {
                entry: loaded.kernel_load.0 + BZ_ENTRY_64,
                end: loaded.kernel_end,
                setup_header: loaded.setup_header,
                pvh_entry: None,
            })
        }
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

/// Check an ELF header and its loadable segments; returns the end of the highest segment.
fn check_elf(
    file: &mut File,
    path: &Path,
    head: &[u8],
    len: u64,
    ram_end: u64,
) -> Result<u64, ImageError> {
    let bad = |why: String| ImageError::BadElf {
        path: path.to_owned(),
        why,
    };
    let h = elf_header(head).map_err(bad)?;
    let table_end = h.phoff.saturating_add((h.phnum * PHDR_SIZE) as u64);
    if table_end > len {
        return Err(bad(format!(
            "truncated ELF: program headers end at byte {table_end}, the file has {len}"
        )));
    }
    let mut table = vec![0u8; h.phnum * PHDR_SIZE];
    file.seek(SeekFrom::Start(h.phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(io_err(path))?;
    let mut end = 0u64;
    let mut entry_ok = false;
    for (i, ph) in table.chunks_exact(PHDR_SIZE).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let seg = check_segment(i, ph, len, ram_end).map_err(|e| match e {
            SegmentError::Bad(why) => bad(why),
            SegmentError::TooBig(seg_end) => ImageError::TooBig {
                path: path.to_owned(),
                needs_mib: mib_up(seg_end),
                has_mib: mib_up(ram_end),
            },
        })?;
        entry_ok |= seg.holds(h.entry);
        end = end.max(seg.end);
    }
    if end == 0 {
        return Err(bad("no loadable segments".into()));
    }
    if !entry_ok {
        let entry = h.entry;
        return Err(bad(format!(
            "entry point {entry:#x} is outside every loadable segment"
        )));
    }
    Ok(end)
}

/// What [`check_elf`] needs of an ELF header.
struct ElfHeader {
    entry: u64,
    phoff: u64,
    phnum: usize,
}

/// The ELF header in `head`, if it is one dust can boot: 64-bit little-endian x86_64
/// ET_EXEC with program headers of the usual size.
fn elf_header(head: &[u8]) -> Result<ElfHeader, String> {
    if head.len() < EHDR_SIZE {
        return Err(format!(
            "truncated ELF: {} bytes, shorter than an ELF header",
            head.len()
        ));
    }
    if head[4] != ELFCLASS64 {
        return Err(format!(
            "{}-bit ELF; dust boots 64-bit x86_64 images",
            if head[4] == 1 { 32 } else { 0 }
        ));
    }
    if head[5] != ELFDATA2LSB {
        return Err("big-endian ELF; dust boots x86_64 images".into());
    }
    let machine = u16_at(head, 18);
    if machine != EM_X86_64 {
        return Err(format!(
            "ELF for machine {machine}, not x86_64 ({EM_X86_64})"
        ));
    }
    if u16_at(head, 16) != ET_EXEC {
        return Err(
            "not an executable ELF (ET_EXEC); link the guest statically at a fixed address".into(),
        );
    }
    let phentsize = usize::from(u16_at(head, 54));
    let phnum = usize::from(u16_at(head, 56));
    if phentsize != PHDR_SIZE || phnum == 0 {
        return Err(format!(
            "unexpected program headers ({phnum} of {phentsize} bytes)"
        ));
    }
    Ok(ElfHeader {
        entry: u64_at(head, 24),
        phoff: u64_at(head, 32),
        phnum,
    })
}

/// A loadable segment's place, physical and virtual.
struct Segment {
    paddr: u64,
    vaddr: u64,
    memsz: u64,
    end: u64,
}

impl Segment {
    /// Whether `entry` lies in the segment (by physical or virtual address).
    fn holds(&self, entry: u64) -> bool {
        (self.paddr..self.end).contains(&entry)
            || (self.vaddr..self.vaddr.saturating_add(self.memsz)).contains(&entry)
    }
}

/// Why a segment cannot load: a bad one, or one ending past RAM (at this address).
enum SegmentError {
    Bad(String),
    TooBig(u64),
}

/// Program header `i` (a PT_LOAD), checked against the file's length and the RAM.
fn check_segment(i: usize, ph: &[u8], len: u64, ram_end: u64) -> Result<Segment, SegmentError> {
    let (offset, paddr) = (u64_at(ph, 8), u64_at(ph, 24));
    let (filesz, memsz) = (u64_at(ph, 32), u64_at(ph, 40));
    if offset.saturating_add(filesz) > len {
        return Err(SegmentError::Bad(format!(
            "truncated ELF: segment {i} needs file bytes up to {}, the file has {len}",
            offset.saturating_add(filesz)
        )));
    }
    if paddr < HIMEM_START {
        return Err(SegmentError::Bad(format!(
            "segment {i} loads at {paddr:#x}, below 1 MiB where the VMM keeps boot data"
        )));
    }
    let end = paddr.saturating_add(memsz);
    if end > ram_end {
        return Err(SegmentError::TooBig(end));
    }
    Ok(Segment {
        paddr,
        vaddr: u64_at(ph, 16),
        memsz,
        end,
    })
}

/// Load the initrd at the top of low RAM, above `kernel_end`.
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
    ram_end: u64,
) -> Result<LoadedInitrd, ImageError> {
    use vm_memory::Bytes;
    let mut file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let free = ram_end.saturating_sub(kernel_end.next_multiple_of(4096));
    let addr = ram_end.saturating_sub(size) & !0xfff;
    if size > free || addr < kernel_end {
        return Err(ImageError::InitrdTooBig {
            path: path.to_owned(),
            size,
            free,
        });
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| ImageError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(LoadedInitrd { addr, size })
}
