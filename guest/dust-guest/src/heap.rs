//! The global allocator: a first-fit free list (linked_list_allocator) over the RAM above
//! the image (`__image_end`, from the linker script) up to the end of its e820 region. It
//! is set up on the first allocation, so guests that never allocate never pay for it.
//! (talc was measured too: its 191 free-list heads cost ~0.2 ms to set up here, and its
//! allocations were no faster for the few, large blocks guests make.)
//!
//! Zeroing is the expensive part of allocation here (0.07 ms per KiB even with
//! `rep stosq`), and fresh guest RAM is already zero. So the heap remembers the highest
//! address it ever handed out: `alloc_zeroed` clears only the part of a block below that
//! mark, plus a guard for the free list's node, which lives at the start of the hole above
//! the last block. DMA rings, virtqueue buffers and `vec![0; n]` on a young heap cost
//! nothing to zero.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::NonNull;

use crate::cell::Global;

unsafe extern "C" {
    /// First page after the image (`.bss` included), from `link.ld`.
    static __image_end: u8;
}

/// Bytes past the mark that the free list may have written (its hole node: two words,
/// after rounding the block end up to eight).
const GUARD: usize = 64;

/// Memory from `CLEAN_FROM + GUARD` up to `HEAP_END - GUARD` has never been written
/// (the end guard is cheap insurance: nothing is known to write there).
static CLEAN_FROM: Global<usize> = Global::new(0);
static HEAP_END: Global<usize> = Global::new(0);

/// The allocator: a first-fit free list (linked_list_allocator), set up on first use. On a
/// young heap an allocation is a cut from one big hole: a few dozen instructions.
struct Heap {
    list: UnsafeCell<linked_list_allocator::Heap>,
}

// SAFETY: one vCPU, no interrupts: nothing can allocate concurrently.
unsafe impl Sync for Heap {}

static READY: Global<bool> = Global::new(false);

impl Heap {
    #[allow(clippy::mut_from_ref)] // one vCPU, no interrupts, never re-entered
    fn list(&self) -> &mut linked_list_allocator::Heap {
        // SAFETY: single-threaded and not re-entrant (the allocator calls nothing that
        // allocates), so this is the only reference while it lives.
        let list = unsafe { &mut *self.list.get() };
        if !READY.get() {
            READY.set(true);
            let image_end = &raw const __image_end as u64;
            let span = crate::boot::heap_span(image_end, crate::boot::ram(), crate::boot::initrd());
            if let Some(span) = span {
                let (base, size) = (span.addr as usize, span.size as usize);
                CLEAN_FROM.set(base);
                HEAP_END.set(base + size);
                // SAFETY: the span is RAM past the image and below any initrd, used by
                // nothing else; identity mapped, so the address is a pointer.
                unsafe { list.init(base as *mut u8, size) };
            }
        }
        list
    }

    fn allocate(&self, layout: Layout) -> *mut u8 {
        let ptr = self
            .list()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), NonNull::as_ptr);
        let end = (ptr as usize).saturating_add(layout.size());
        if !ptr.is_null() && end > CLEAN_FROM.get() {
            CLEAN_FROM.set(end);
        }
        ptr
    }
}

// SAFETY: blocks come from the free list; `alloc_zeroed` zeroes every byte that may have
// been written before (see the module docs).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: allocated by `alloc` with this layout (the caller's contract).
            unsafe { self.list().deallocate(ptr, layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Where the never-written memory began before this allocation (set the heap up
        // first, on the first allocation, so that the mark is meaningful).
        let _ = self.list();
        let dirty_below = CLEAN_FROM.get().saturating_add(GUARD);
        let ptr = self.allocate(layout);
        if ptr.is_null() {
            return ptr;
        }
        let (start, end) = (ptr as usize, ptr as usize + layout.size());
        let dirty_above = HEAP_END.get().saturating_sub(GUARD);
        // SAFETY: both ranges lie inside the block just allocated.
        unsafe {
            if start < dirty_below {
                ptr.write_bytes(0, end.min(dirty_below) - start);
            }
            if end > dirty_above {
                let from = start.max(dirty_above);
                (from as *mut u8).write_bytes(0, end - from);
            }
        }
        ptr
    }
}

#[global_allocator]
static HEAP: Heap = Heap {
    list: UnsafeCell::new(linked_list_allocator::Heap::empty()),
};
