//! The process's allocator: the system's (musl's in the shipped static build), except that
//! while [`begin`] .. [`end`] is in force, allocations come from a fixed arena in `.bss`.
//!
//! Why: `dust run` parses its flags with clap before it opens /dev/kvm, on the spawn ->
//! greeting path. clap grows its argument list by doubling and frees it all when parsing is
//! done; musl's malloc serves those blocks with fresh `mmap`s and returns them with
//! `munmap`s (a dozen calls, each new block's pages faulted in again). In the arena a block
//! that is the last one handed out grows in place, and nothing is unmapped. What the arena
//! holds is never reused once the window ends (it is a few tens of KiB, bounded by its
//! size); when it is full, allocations go to the system allocator as usual.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Arena bytes: room for `dust run`'s whole parse, with margin.
const SIZE: usize = 256 << 10;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; SIZE]>);

// SAFETY: bytes are handed out by an atomic bump offset, so no two live blocks overlap;
// each block is then only touched through the pointer its owner got.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; SIZE]));
/// Offset of the first free byte.
static NEXT: AtomicUsize = AtomicUsize::new(0);
static ON: AtomicBool = AtomicBool::new(false);

/// Serve allocations from the arena from now on (until [`end`]).
pub fn begin() {
    ON.store(true, Ordering::Release);
}

/// Back to the system allocator for every new block; blocks in the arena stay valid.
pub fn end() {
    ON.store(false, Ordering::Release);
}

fn base() -> usize {
    ARENA.0.get() as usize
}

fn in_arena(p: *mut u8) -> bool {
    (base()..base() + SIZE).contains(&(p as usize))
}

/// A block of `layout` from the arena, or null when it does not fit.
fn bump(layout: Layout) -> *mut u8 {
    let mut cur = NEXT.load(Ordering::Relaxed);
    loop {
        let start = (base() + cur).next_multiple_of(layout.align()) - base();
        let end = match start.checked_add(layout.size()) {
            Some(e) if e <= SIZE => e,
            _ => return std::ptr::null_mut(),
        };
        match NEXT.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
            // SAFETY: start + size <= SIZE: inside the arena.
            Ok(_) => return unsafe { (ARENA.0.get() as *mut u8).add(start) },
            Err(now) => cur = now,
        }
    }
}

/// Move the arena's end from the end of block `p` (old size `old`) to `new` bytes past `p`,
/// if `p` is the last block handed out and the new end fits.
fn resize_last(p: *mut u8, old: usize, new: usize) -> bool {
    let off = p as usize - base();
    let Some(end) = off.checked_add(new).filter(|&e| e <= SIZE) else {
        return false;
    };
    NEXT.compare_exchange(off + old, end, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// The global allocator ([`System`] outside the start-up window).
pub struct StartupArena;

// SAFETY: every block is either the system allocator's (handed back to it) or a disjoint
// range of the arena (see `bump`), aligned as its layout asks; arena blocks are never
// passed to the system allocator.
unsafe impl GlobalAlloc for StartupArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.load(Ordering::Acquire) {
            let p = bump(layout);
            if !p.is_null() {
                return p;
            }
        }
        // SAFETY: the caller's layout contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ON.load(Ordering::Acquire) {
            let p = bump(layout);
            if !p.is_null() {
                // SAFETY: a fresh block of `layout.size()` bytes (maybe a freed one's room
                // again, so not necessarily zero yet).
                unsafe { p.write_bytes(0, layout.size()) };
                return p;
            }
        }
        // SAFETY: the caller's layout contract, passed on (calloc: fresh pages unwritten).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if in_arena(p) {
            // The last block's room is taken back (a shrink to nothing); others stay put.
            resize_last(p, layout.size(), 0);
            return;
        }
        // SAFETY: `p` came from System with `layout`.
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_arena(p) {
            // SAFETY: `p` came from System with `layout`.
            return unsafe { System.realloc(p, layout, new_size) };
        }
        if ON.load(Ordering::Acquire) && resize_last(p, layout.size(), new_size) {
            return p;
        }
        // SAFETY: the new layout is valid (the caller's contract); the copy stays within
        // both blocks.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let q = self.alloc(new_layout);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the window is process-wide, and the test harness's own threads allocate
    // while it is open (through the same arena, which is what the shipped binary does too).
    #[test]
    fn the_window_serves_from_the_arena_grows_in_place_and_ends() {
        begin();
        let mut v: Vec<u64> = Vec::with_capacity(4);
        let first = v.as_ptr() as *mut u8;
        assert!(in_arena(first));
        v.extend(0..4);
        let boxed = Box::new([7u8; 100]);
        assert!(in_arena(boxed.as_ptr() as *mut u8));
        drop(boxed);
        // Growth copies the contents, wherever it lands.
        v.extend(4..5000);
        assert!(v.iter().copied().eq(0..5000));
        // A block bigger than the whole arena comes from the system.
        let big = vec![1u8; SIZE + 1];
        assert!(!in_arena(big.as_ptr() as *mut u8));
        end();
        let after = Box::new(5u32);
        assert!(!in_arena(&*after as *const u32 as *mut u8));
        // Arena blocks outlive the window: grown (copied out), read, freed.
        v.extend(5000..6000);
        assert!(v.iter().copied().eq(0..6000));
        drop(v);
        drop(big);
    }

    #[test]
    fn the_last_block_grows_and_shrinks_in_place() {
        // Only the offsets: a block at the arena's current end.
        let layout = Layout::from_size_align(64, 8).unwrap();
        let p = bump(layout);
        if p.is_null() {
            return; // the arena is full: nothing to check here
        }
        // Another thread may bump in between; then `p` is no longer last and both fail.
        if resize_last(p, 64, 128) {
            assert!(resize_last(p, 128, 0));
        }
        assert!(in_arena(p));
    }
}
