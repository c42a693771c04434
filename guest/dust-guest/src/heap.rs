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

/// Largest block served by the size classes.
const SMALL_MAX: usize = 512;
/// Size-class granularity and the alignment every small block has.
const CLASS: usize = 16;
/// Bytes taken from the free list at a time for new small blocks.
const CHUNK: usize = 8192;
/// Head of each class's list of freed blocks (the next pointer lives in the block).
static FREE: [Global<usize>; SMALL_MAX / CLASS] = [const { Global::new(0) }; SMALL_MAX / CLASS];
/// The chunk small blocks are cut from: next free byte and end.
static BUMP: Global<usize> = Global::new(0);
static BUMP_END: Global<usize> = Global::new(0);

/// The size class of `layout` (index into [`FREE`]), if it is small.
fn class(layout: Layout) -> Option<usize> {
    (layout.size() <= SMALL_MAX && layout.align() <= CLASS)
        .then(|| layout.size().max(1).div_ceil(CLASS) - 1)
}

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

    /// A block of size class `c`: a freed one, else cut from the chunk.
    fn small(&self, c: usize) -> *mut u8 {
        let head = FREE[c].get();
        if head != 0 {
            // SAFETY: a freed block of this class; its first word is the next one.
            FREE[c].set(unsafe { *(head as *const usize) });
            return head as *mut u8;
        }
        let size = (c + 1) * CLASS;
        if BUMP.get() + size > BUMP_END.get() {
            // The rest of the old chunk (under SMALL_MAX bytes) is not used again.
            // SAFETY: CHUNK is a multiple of CLASS, a power of two, far below isize::MAX.
            let chunk = self.allocate(unsafe { Layout::from_size_align_unchecked(CHUNK, CLASS) });
            if chunk.is_null() {
                return chunk;
            }
            BUMP.set(chunk as usize);
            BUMP_END.set(chunk as usize + CHUNK);
        }
        let ptr = BUMP.get();
        BUMP.set(ptr + size);
        ptr as *mut u8
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
        match class(layout) {
            Some(c) => self.small(c),
            None => self.allocate(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(c) = class(layout) {
            // SAFETY: a block of class `c` (allocated with this layout), at least 16 bytes
            // and 16-aligned; the caller no longer uses it.
            unsafe { *(ptr as *mut usize) = FREE[c].get() };
            FREE[c].set(ptr as usize);
        } else if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: allocated by `alloc` with this layout (the caller's contract).
            unsafe { self.list().deallocate(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`: `new_size` with this alignment is a
        // valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if let (Some(a), Some(b)) = (class(layout), class(new))
            && a == b
        {
            return ptr;
        }
        // SAFETY: as for `alloc` and `dealloc`; the blocks do not overlap.
        unsafe {
            let to = self.alloc(new);
            if !to.is_null() {
                core::ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            to
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(c) = class(layout) {
            let ptr = self.small(c);
            if !ptr.is_null() {
                // SAFETY: the block just allocated is at least `layout.size()` bytes.
                unsafe { ptr.write_bytes(0, layout.size()) };
            }
            return ptr;
        }
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
