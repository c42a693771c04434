//! virtio-mmio devices: discovery from the command line and the [`Hal`] of virtio-drivers.
//!
//! The VMM announces each device as a runtime parameter in Linux's syntax,
//! `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` (e.g. `4K@0xd0000000:5`); the guest
//! never scans for devices. Memory is identity mapped, so guest-physical and virtual
//! addresses are the same number.

use core::alloc::Layout;
use core::ptr::NonNull;

use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

use crate::cell::Global;

/// The runtime parameter that announces a virtio-mmio device.
pub const PARAM: &str = "virtio_mmio.device";

/// One announced virtio-mmio device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Its interrupt line (with an irqchip, routed to wake [`halt`](crate::halt)).
    pub irq: u32,
}

/// The devices announced on the command line, in order.
pub fn devices() -> impl Iterator<Item = MmioDevice> {
    devices_of(crate::params())
}

/// The devices among `params` (see [`PARAM`]); malformed values are skipped.
pub fn devices_of<'a>(
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> impl Iterator<Item = MmioDevice> {
    params
        .filter(|(k, _)| *k == PARAM)
        .filter_map(|(_, v)| parse_device(v))
}

/// Parses `<size>@<base>:<irq>[:<id>]`; sizes take a K/M/G suffix, numbers are decimal or
/// `0x` hex (Linux `memparse`/`kstrtoul` with base 0).
pub fn parse_device(value: &str) -> Option<MmioDevice> {
    let (size, rest) = value.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split(':').next()?;
    let size = parse_size(size)?;
    let base = parse_number(base)?;
    base.checked_add(size)?;
    Some(MmioDevice {
        base,
        size,
        irq: u32::try_from(parse_number(irq)?).ok()?,
    })
}

fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = parse_number(digits)?;
    (n <= u64::MAX >> shift)
        .then_some(n << shift)
        .filter(|&n| n > 0)
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The first announced device of type `kind` that answers with a valid virtio-mmio header.
pub fn find(kind: DeviceType) -> Option<MmioTransport<'static>> {
    devices().find_map(|d| {
        let size = usize::try_from(d.size).ok()?;
        let header = NonNull::new(d.base as *mut VirtIOHeader)?;
        // SAFETY: the VMM announced an MMIO window of `size` bytes at `base`; the identity
        // map covers it and nothing else in the guest touches it.
        let transport = unsafe { MmioTransport::new(header, size) }.ok()?;
        if transport.device_type() != kind {
            return None;
        }
        // Its interrupt wakes `halt` when the VM has an irqchip.
        crate::irq::enable_line(d.irq);
        Some(transport)
    })
}

/// virtio-drivers' platform layer: identity mapping; DMA memory from a bump arena in
/// `.bss` (see [`DmaArena`]), then from the heap.
pub struct DustHal;

/// Pages of the DMA arena: enough for a vsock device's three queues (two pages each).
const DMA_ARENA_PAGES: usize = 16;

/// Virtqueue rings live as long as their device, so a bump arena in `.bss` serves them:
/// it is fresh, zeroed RAM (nothing to clear, no allocator work; each instruction counts on
/// an emulating KVM). Freed pages return only from the top; the rest of the time the
/// arena just runs out and the heap takes over.
#[repr(C, align(4096))]
struct DmaArena([u8; DMA_ARENA_PAGES * PAGE_SIZE]);

static mut DMA_ARENA: DmaArena = DmaArena([0; DMA_ARENA_PAGES * PAGE_SIZE]);
/// Pages of the arena in use, from its start.
static DMA_ARENA_USED: Global<usize> = Global::new(0);

fn arena_base() -> usize {
    (&raw mut DMA_ARENA) as usize
}

fn dma_layout(pages: usize) -> Option<Layout> {
    Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
}

// SAFETY: DMA memory is zeroed, page aligned and owned by the driver until `dma_dealloc`
// (arena pages are handed out once until returned; heap blocks come from the allocator);
// addresses are identity mapped, so physical == virtual.
unsafe impl Hal for DustHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let used = DMA_ARENA_USED.get();
        let ptr = if pages <= DMA_ARENA_PAGES - used {
            DMA_ARENA_USED.set(used + pages);
            NonNull::new((arena_base() + used * PAGE_SIZE) as *mut u8)
        } else {
            dma_layout(pages)
                // SAFETY: the layout has a non-zero size (virtio-drivers asks for >= 1 page).
                .map(|layout| unsafe { alloc::alloc::alloc_zeroed(layout) })
                .and_then(NonNull::new)
        };
        match ptr {
            Some(p) => (p.as_ptr() as PhysAddr, p),
            // virtio-drivers reports a zero physical address as DmaError.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let addr = vaddr.as_ptr() as usize;
        let arena = arena_base();
        if (arena..arena + DMA_ARENA_PAGES * PAGE_SIZE).contains(&addr) {
            let first = (addr - arena) / PAGE_SIZE;
            if first + pages == DMA_ARENA_USED.get() {
                // SAFETY: these pages were ours and are handed back; clear them for reuse.
                unsafe { vaddr.as_ptr().write_bytes(0, pages * PAGE_SIZE) };
                DMA_ARENA_USED.set(first);
            }
            return 0;
        }
        match dma_layout(pages) {
            Some(layout) => {
                // SAFETY: allocated by `dma_alloc` with this layout (the caller's contract).
                unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
                0
            }
            None => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_linux_syntax() {
        let d = parse_device("4K@0xd0000000:5").unwrap();
        assert_eq!(
            d,
            MmioDevice {
                base: 0xd000_0000,
                size: 4096,
                irq: 5
            }
        );
        let d = parse_device("0x200@3489660928:12:3").unwrap();
        assert_eq!(
            d,
            MmioDevice {
                base: 0xd000_0000,
                size: 0x200,
                irq: 12
            }
        );
        assert_eq!(parse_device("1M@0x1000:0").unwrap().size, 1 << 20);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "4K",
            "4K@",
            "4K@0xd0000000",
            "@0x1:5",
            "0@0x1000:5",
            "4Q@0x1:5",
            "4K@zz:5",
            "4K@0x1:x",
            "16G@0xffffffffffffffff:1",
        ] {
            assert_eq!(parse_device(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_every_device_param() {
        let line = "a virtio_mmio.device=4K@0xd0000000:5 b virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=junk";
        let found: Vec<_> = devices_of(crate::cmdline::params_of(line))
            .map(|d| d.base)
            .collect();
        assert_eq!(found, [0xd000_0000, 0xd000_1000]);
    }
}
