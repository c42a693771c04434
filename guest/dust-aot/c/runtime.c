/* The freestanding wasm2c runtime of dust's ahead-of-time wasm guest (dust-aot).
 *
 * Compiled on the host, in the same translation unit as the wasm2c output of one module
 * (module name `m`), by the compile step that builds that module's guest image (see
 * docs/wasm.md, "Ahead-of-time engine"), and linked with the dust-aot Rust archive, which
 * provides the heap, the WASI imports and the HTTP side.
 *
 * - Traps: `wasm_rt_trap` long-jumps (`__builtin_longjmp`, no libc) back to the protected
 *   call (`dust_aot_call`) that entered wasm code; Rust never unwinds through C.
 * - Memory: bounds checks are explicit (WASM_RT_MEMCHECK_SIGNAL_HANDLER=0); linear memory
 *   (reserved whole, see wasm_rt_allocate_memory) and tables come from the Rust heap,
 *   within the limit the Rust side sets.
 * - Stack: wasm code runs on a stack of its own (STACK_SIZE), deep enough for
 *   WASM_RT_MAX_CALL_STACK_DEPTH frames; the depth counter (biased, see
 *   DUST_AOT_DEPTH_BASE) is reset after every trap.
 *
 * The compile defines DUST_AOT_HAS_MEMORY when the module exports a memory named `memory`
 * (the one the WASI imports read and write). */
#include <stdint.h>

#include "wasm-rt.h"

/* Provided by the Rust side (guest/dust-aot/src/host.rs). */
extern void *dust_aot_alloc_zeroed(uint64_t size);
extern void *dust_aot_grow_block(void *ptr, uint64_t old_size, uint64_t new_size);
extern void dust_aot_dealloc(void *ptr, uint64_t size);
extern uint64_t dust_aot_memory_limit(void);
extern _Noreturn void dust_aot_fatal(uint32_t code);

enum { WASM_PAGE = 65536, STACK_SIZE = 2 << 20, MAX_TYPES = 4096, TYPE_BYTES = 1 << 16 };

/* What `dust_aot_call` returns besides a trap code (wasm_rt_trap_t, 1..). */
enum { DUST_AOT_RETURNED = 0, DUST_AOT_EXITED = 0x100 };

/* The call-depth counter starts DUST_AOT_DEPTH_BASE frames below 0x7fffffff, the limit the
 * generated code is compiled against (the compile unit redefines it for m.c), so the
 * WASM_RT_MAX_CALL_STACK_DEPTH+1st nested call is the one that sets its sign bit and traps:
 * the same frames as `++depth > WASM_RT_MAX_CALL_STACK_DEPTH` from 0, tested with the flags
 * of the increment. */
#define DUST_AOT_DEPTH_BASE (0x7fffffffu - (uint32_t)WASM_RT_MAX_CALL_STACK_DEPTH)
uint32_t wasm_rt_call_stack_depth = DUST_AOT_DEPTH_BASE;

static uint8_t wasm_stack[STACK_SIZE] __attribute__((aligned(16)));
/* The protected call's jump buffer (__builtin_setjmp layout), whether one is active, and
 * why it was left (the value of __builtin_longjmp must be the constant 1). */
static void *jump[5];
static int protected_depth;
static uint32_t jump_code;

void wasm_rt_init(void) {}
bool wasm_rt_is_initialized(void) { return true; }
void wasm_rt_free(void) {}

_Noreturn void wasm_rt_trap(wasm_rt_trap_t code) {
  if (!protected_depth) dust_aot_fatal((uint32_t)code);
  jump_code = (uint32_t)code;
  __builtin_longjmp(jump, 1);
}

/* Called by the Rust side's `proc_exit`: leaves the wasm code like a trap does. */
_Noreturn void dust_aot_exit(void) {
  if (!protected_depth) dust_aot_fatal(0);
  jump_code = DUST_AOT_EXITED;
  __builtin_longjmp(jump, 1);
}

const char *wasm_rt_strerror(wasm_rt_trap_t trap) {
  switch (trap) {
    case WASM_RT_TRAP_OOB: return "out of bounds memory or table access";
    case WASM_RT_TRAP_INT_OVERFLOW: return "integer overflow";
    case WASM_RT_TRAP_DIV_BY_ZERO: return "integer divide by zero";
    case WASM_RT_TRAP_INVALID_CONVERSION: return "invalid conversion to integer";
    case WASM_RT_TRAP_UNREACHABLE: return "unreachable instruction executed";
    case WASM_RT_TRAP_CALL_INDIRECT: return "indirect call to a null, missing or mistyped function";
    case WASM_RT_TRAP_UNCAUGHT_EXCEPTION: return "uncaught exception";
    case WASM_RT_TRAP_EXHAUSTION: return "call stack exhausted";
    default: return "trap";
  }
}

/* Function types, interned: equal signatures get equal indexes (call_indirect compares
 * them). Each record is [params, results, types...] in `type_bytes`. */
static uint8_t type_bytes[TYPE_BYTES];
static uint32_t type_start[MAX_TYPES];
static uint32_t type_count, type_used;

uint32_t wasm_rt_register_func_type(uint32_t params, uint32_t results, ...) {
  uint32_t n = params + results;
  if (n > 255 || type_count >= MAX_TYPES || type_used + n + 2 > TYPE_BYTES)
    wasm_rt_trap(WASM_RT_TRAP_EXHAUSTION);
  uint8_t *rec = &type_bytes[type_used];
  rec[0] = (uint8_t)params;
  rec[1] = (uint8_t)results;
  __builtin_va_list ap;
  __builtin_va_start(ap, results);
  for (uint32_t i = 0; i < n; i++) rec[2 + i] = (uint8_t)__builtin_va_arg(ap, int);
  __builtin_va_end(ap);
  for (uint32_t t = 0; t < type_count; t++) {
    const uint8_t *old = &type_bytes[type_start[t]];
    if (old[0] != rec[0] || old[1] != rec[1]) continue;
    uint32_t i = 0;
    while (i < n && old[2 + i] == rec[2 + i]) i++;
    if (i == n) return t + 1;
  }
  type_start[type_count] = type_used;
  type_used += n + 2;
  return ++type_count;
}

static uint64_t memory_in_use;

/* Linear memory is reserved whole when it is allocated: up to its declared maximum, within
 * the limit, with `max_pages` lowered to what was reserved (the generated code never reads
 * it). Fresh heap is zero, so the reservation costs nothing, and `memory.grow` only moves
 * `size`: no copy, no clearing (the bytes past `size` were never reachable). */
void wasm_rt_allocate_memory(wasm_rt_memory_t *mem, uint32_t initial, uint32_t max) {
  uint64_t room = (dust_aot_memory_limit() - memory_in_use) / WASM_PAGE;
  uint64_t pages = max < room ? max : room;
  if (pages > 65535) pages = 65535;
  if (initial > pages) wasm_rt_trap(WASM_RT_TRAP_OOB);
  uint8_t *data = 0;
  while (pages && !(data = dust_aot_alloc_zeroed(pages * WASM_PAGE))) {
    if (pages == initial) wasm_rt_trap(WASM_RT_TRAP_OOB);
    pages = pages / 2 > initial ? pages / 2 : initial;
  }
  memory_in_use += pages * WASM_PAGE;
  mem->data = data;
  mem->pages = initial;
  mem->max_pages = (uint32_t)pages;
  mem->size = (uint32_t)((uint64_t)initial * WASM_PAGE);
}

uint32_t wasm_rt_grow_memory(wasm_rt_memory_t *mem, uint32_t delta) {
  uint32_t old = mem->pages;
  uint64_t pages = (uint64_t)old + delta;
  if (pages > mem->max_pages) return (uint32_t)-1;
  mem->pages = (uint32_t)pages;
  mem->size = (uint32_t)(pages * WASM_PAGE);
  return old;
}

void wasm_rt_free_memory(wasm_rt_memory_t *mem) {
  uint64_t reserved = (uint64_t)mem->max_pages * WASM_PAGE;
  if (mem->data) dust_aot_dealloc(mem->data, reserved);
  memory_in_use -= reserved;
  mem->data = 0;
  mem->size = mem->pages = 0;
}

void wasm_rt_allocate_funcref_table(wasm_rt_funcref_table_t *t, uint32_t n, uint32_t max) {
  uint64_t bytes = (uint64_t)n * sizeof(wasm_rt_funcref_t);
  t->data = bytes ? dust_aot_alloc_zeroed(bytes) : 0;
  if (bytes && !t->data) wasm_rt_trap(WASM_RT_TRAP_OOB);
  t->size = n;
  t->max_size = max;
}

uint32_t wasm_rt_grow_funcref_table(wasm_rt_funcref_table_t *t, uint32_t delta,
                                    wasm_rt_funcref_t init) {
  uint32_t old = t->size;
  uint64_t n = (uint64_t)old + delta;
  if (delta == 0) return old;
  if (n > t->max_size || n > (1u << 20)) return (uint32_t)-1;
  wasm_rt_funcref_t *data = dust_aot_grow_block(t->data, (uint64_t)old * sizeof(*data),
                                                n * sizeof(*data));
  if (!data) return (uint32_t)-1;
  for (uint64_t i = old; i < n; i++) data[i] = init;
  t->data = data;
  t->size = (uint32_t)n;
  return old;
}

void wasm_rt_free_funcref_table(wasm_rt_funcref_table_t *t) {
  if (t->data) dust_aot_dealloc(t->data, (uint64_t)t->size * sizeof(*t->data));
  t->data = 0;
  t->size = 0;
}

/* Runs fn(arg) with rsp at the top of `stack` (16-byte aligned) and returns its value. */
uint32_t dust_aot_on_stack(uint32_t (*fn)(void *), void *arg, void *stack);
__asm__(
    ".text\n"
    ".globl dust_aot_on_stack\n"
    "dust_aot_on_stack:\n"
    "  push %rbp\n"
    "  mov %rsp, %rbp\n"
    "  mov %rdx, %rsp\n"
    "  mov %rdi, %rax\n"
    "  mov %rsi, %rdi\n"
    "  call *%rax\n"
    "  mov %rbp, %rsp\n"
    "  pop %rbp\n"
    "  ret\n");

/* What one protected call runs. */
enum { DUST_AOT_INIT = 0, DUST_AOT_INSTANTIATE = 1, DUST_AOT_START = 2 };
struct call {
  uint32_t what;
  Z_m_instance_t *instance;
  struct Z_wasi_snapshot_preview1_instance_t *wasi;
};

static __attribute__((noinline)) uint32_t protected_call(void *arg) {
  struct call *c = arg;
  if (__builtin_setjmp(jump)) {
    protected_depth = 0;
    wasm_rt_call_stack_depth = DUST_AOT_DEPTH_BASE;
    return jump_code;
  }
  protected_depth = 1;
  switch (c->what) {
    case DUST_AOT_INIT: Z_m_init_module(); break;
    case DUST_AOT_INSTANTIATE: Z_m_instantiate(c->instance, c->wasi); break;
    default: Z_mZ__start(c->instance); break;
  }
  protected_depth = 0;
  return DUST_AOT_RETURNED;
}

/* Runs one step (DUST_AOT_INIT, _INSTANTIATE or _START) on the wasm stack; returns
 * DUST_AOT_RETURNED, DUST_AOT_EXITED (proc_exit) or the trap code. */
uint32_t dust_aot_call(uint32_t what, void *instance, void *wasi) {
  struct call c = {what, instance, wasi};
  return dust_aot_on_stack(protected_call, &c, wasm_stack + STACK_SIZE);
}

/* Bytes of an instance (allocated by the Rust side, zeroed, 16-byte aligned). */
uint64_t dust_aot_instance_size(void) { return sizeof(Z_m_instance_t); }

/* The instance's exported `memory`, or NULL. */
uint8_t *dust_aot_memory(void *instance, uint64_t *len) {
#ifdef DUST_AOT_HAS_MEMORY
  wasm_rt_memory_t *mem = Z_mZ_memory(instance);
  *len = mem->size;
  return mem->data;
#else
  (void)instance;
  *len = 0;
  return 0;
#endif
}

/* The message of a trap code. */
const char *dust_aot_trap_message(uint32_t code) { return wasm_rt_strerror((wasm_rt_trap_t)code); }
