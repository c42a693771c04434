//! The boundary with the C half (`c/runtime.c` and the module's wasm2c code): the
//! protected calls into wasm code, and the heap and limit the C runtime asks for.

use core::alloc::Layout;
use core::ffi::{CStr, c_char, c_void};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::Wasi;

unsafe extern "C" {
    fn dust_aot_call(what: u32, instance: *mut u8, wasi: *mut c_void) -> u32;
    fn dust_aot_instance_size() -> u64;
    fn dust_aot_memory(instance: *mut u8, len: *mut u64) -> *mut u8;
    fn dust_aot_trap_message(code: u32) -> *const c_char;
    /// Leaves the wasm code for the protected call (`proc_exit`); never returns.
    pub(crate) fn dust_aot_exit() -> !;
}

/// What `dust_aot_call` returns for a run that returned / called `proc_exit` (any other
/// value is a wasm2c trap code).
const RETURNED: u32 = 0;
const EXITED: u32 = 0x100;

/// One step of a module's life.
#[derive(Clone, Copy)]
pub enum Step {
    /// `Z_m_init_module`: once per image.
    Init = 0,
    /// `Z_m_instantiate`: per instance.
    Instantiate = 1,
    /// The `_start` export: per request.
    Start = 2,
}

/// How a step ended.
pub enum Ended {
    /// It returned.
    Returned,
    /// `proc_exit` (the status is in the [`Wasi`]).
    Exited,
    /// It trapped, for this reason.
    Trap(&'static str),
}

/// Runs `step` on the wasm stack, catching traps and `proc_exit`.
pub fn call(step: Step, instance: *mut u8, wasi: *mut Wasi) -> Ended {
    // SAFETY: the C runtime runs the step on its own stack and returns; `instance` is an
    // instance of the right size (or null for Init, which ignores it) and `wasi` lives
    // for the VM's life.
    match unsafe { dust_aot_call(step as u32, instance, wasi.cast()) } {
        RETURNED => Ended::Returned,
        EXITED => Ended::Exited,
        code => {
            // SAFETY: the runtime returns a static NUL-terminated string for any code.
            let msg = unsafe { CStr::from_ptr(dust_aot_trap_message(code)) };
            Ended::Trap(msg.to_str().unwrap_or("trap"))
        }
    }
}

/// A zeroed module instance (its size is only known to the C side).
pub fn alloc_instance() -> Option<*mut u8> {
    // SAFETY: a plain query.
    let size = unsafe { dust_aot_instance_size() } as usize;
    let ptr = dust_aot_alloc_zeroed(size.max(1) as u64);
    (!ptr.is_null()).then_some(ptr)
}

/// The instance's exported `memory` (empty when it exports none).
pub fn memory<'a>(instance: *mut u8) -> Option<&'a mut [u8]> {
    let mut len = 0u64;
    // SAFETY: `instance` is a live instance; the runtime writes `len`.
    let data = unsafe { dust_aot_memory(instance, &mut len) };
    if data.is_null() {
        return None;
    }
    // SAFETY: the runtime's memory block holds `len` bytes, and only the running import
    // touches it until it returns (the wasm code is suspended in the call).
    Some(unsafe { core::slice::from_raw_parts_mut(data, len as usize) })
}

/// Most bytes of linear memory all instances may hold.
static MEMORY_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Sets the limit the C runtime enforces on `memory.grow` and instantiation.
pub fn set_memory_limit(bytes: u64) {
    MEMORY_LIMIT.store(bytes, Ordering::Relaxed);
}

const ALIGN: usize = 16;

fn layout(size: u64) -> Option<Layout> {
    Layout::from_size_align(usize::try_from(size).ok()?, ALIGN).ok()
}

#[unsafe(no_mangle)]
extern "C" fn dust_aot_memory_limit() -> u64 {
    MEMORY_LIMIT.load(Ordering::Relaxed)
}

/// `size` zeroed bytes, 16-byte aligned, or null.
#[unsafe(no_mangle)]
extern "C" fn dust_aot_alloc_zeroed(size: u64) -> *mut u8 {
    match layout(size).filter(|l| l.size() > 0) {
        // SAFETY: a non-zero size.
        Some(l) => unsafe { alloc::alloc::alloc_zeroed(l) },
        None => core::ptr::null_mut(),
    }
}

/// Frees a block from [`dust_aot_alloc_zeroed`].
#[unsafe(no_mangle)]
extern "C" fn dust_aot_dealloc(ptr: *mut u8, size: u64) {
    if let (false, Some(l)) = (ptr.is_null(), layout(size)) {
        // SAFETY: the C runtime passes back a block it got from here, with its size.
        unsafe { alloc::alloc::dealloc(ptr, l) }
    }
}

/// A zeroed block of `new` bytes holding the first `old` bytes of `ptr` (freed), or null
/// (and `ptr` untouched). A fresh zeroed block costs nothing to clear on a young heap,
/// where `realloc` plus clearing the tail would.
#[unsafe(no_mangle)]
extern "C" fn dust_aot_grow_block(ptr: *mut u8, old: u64, new: u64) -> *mut u8 {
    let block = dust_aot_alloc_zeroed(new);
    if !block.is_null() && !ptr.is_null() {
        // SAFETY: `ptr` holds `old` bytes, `block` `new` >= `old`; they are distinct.
        unsafe { core::ptr::copy_nonoverlapping(ptr, block, old.min(new) as usize) };
        dust_aot_dealloc(ptr, old);
    }
    block
}

/// A trap with no protected call to return to (a runtime bug): ends the VM.
#[unsafe(no_mangle)]
extern "C" fn dust_aot_fatal(code: u32) -> ! {
    panic!("dust-aot: wasm trap {code} outside a protected call")
}
