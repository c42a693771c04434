//! The global allocator: talc over the RAM above the image (`__image_end`, from the linker
//! script) up to the end of its e820 region. The heap is claimed on the first allocation,
//! so guests that never allocate never pay for it.

use core::alloc::Layout;

use talc::base::Talc;
use talc::base::binning::{Binning, DefaultBinning};
use talc::cell::{TalcCell, TalcSyncCell};
use talc::source::Source;

unsafe extern "C" {
    /// First page after the image (`.bss` included), from `link.ld`.
    static __image_end: u8;
}

/// Claims the boot memory map's heap span once, on the allocator's first out-of-memory.
#[derive(Debug)]
struct BootMemory {
    claimed: bool,
}

// SAFETY: `acquire` only claims memory the guest owns and nothing else uses, and never
// touches the allocator it serves.
unsafe impl Source for BootMemory {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, _layout: Layout) -> Result<(), ()> {
        if talc.source.claimed {
            return Err(());
        }
        talc.source.claimed = true;
        let image_end = &raw const __image_end as u64;
        let span = crate::boot::heap_span(image_end, crate::boot::ram(), crate::boot::initrd())
            .ok_or(())?;
        // SAFETY: the span is RAM past the image and below any initrd, used by nothing else;
        // identity mapped, so the address is a pointer.
        unsafe { talc.claim(span.addr as *mut u8, span.size as usize) }
            .map(|_| ())
            .ok_or(())
    }
}

#[global_allocator]
// SAFETY: one vCPU, no interrupts: nothing can allocate concurrently (see TalcSyncCell::new).
static ALLOCATOR: TalcSyncCell<BootMemory, DefaultBinning> =
    unsafe { TalcSyncCell::new(TalcCell::new(BootMemory { claimed: false })) };
