/* Linear-memory accesses of dust's ahead-of-time wasm guest, as typed accesses.
 *
 * Included by the compile unit after the module's header (m.h, which includes wasm-rt.h)
 * and before its code (m.c), whose loads and stores (DEFINE_LOAD / DEFINE_STORE) copy each
 * value with `wasm_rt_memcpy(dest, src, size)`. wasm-rt.h makes that `__builtin_memcpy`: a
 * copy of bytes, which C lets alias any object, so after every store clang must assume the
 * instance changed and reload what it holds in registers (the memory's base and size, the
 * globals such as the shadow-stack pointer). Here the linear-memory side of a 2-, 4- or
 * 8-byte access goes through a packed one-member struct of our own: an object of that type
 * can only alias another of the same type, so a store into linear memory no longer clobbers
 * the instance (which never lies in linear memory). The value, the bytes and the bounds
 * checks are unchanged; the other side (the local `result` / `wrapped`) is still copied as
 * bytes, so no value changes type. 1-byte accesses stay byte copies.
 *
 * In a store the destination is `&mem->data[addr]` (a `uint8_t *`); in a load it is the
 * address of a local of the access's type (a `uint8_t *` only for 1-byte loads, which are
 * byte copies either way). */
#ifndef DUST_AOT_ACCESS_H
#define DUST_AOT_ACCESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint16_t v; } __attribute__((packed)) dust_aot_u16;
typedef struct { uint32_t v; } __attribute__((packed)) dust_aot_u32;
typedef struct { uint64_t v; } __attribute__((packed)) dust_aot_u64;

/* Stores `n` bytes from the local at `src` into linear memory at `dst`. */
static inline __attribute__((always_inline)) void dust_aot_store(void *dst, const void *src,
                                                                 size_t n) {
  if (n == 2) {
    uint16_t v;
    __builtin_memcpy(&v, src, 2);
    ((dust_aot_u16 *)dst)->v = v;
  } else if (n == 4) {
    uint32_t v;
    __builtin_memcpy(&v, src, 4);
    ((dust_aot_u32 *)dst)->v = v;
  } else if (n == 8) {
    uint64_t v;
    __builtin_memcpy(&v, src, 8);
    ((dust_aot_u64 *)dst)->v = v;
  } else {
    __builtin_memcpy(dst, src, n);
  }
}

/* Loads `n` bytes from linear memory at `src` into the local at `dst`. */
static inline __attribute__((always_inline)) void dust_aot_load(void *dst, const void *src,
                                                                size_t n) {
  if (n == 2) {
    uint16_t v = ((const dust_aot_u16 *)src)->v;
    __builtin_memcpy(dst, &v, 2);
  } else if (n == 4) {
    uint32_t v = ((const dust_aot_u32 *)src)->v;
    __builtin_memcpy(dst, &v, 4);
  } else if (n == 8) {
    uint64_t v = ((const dust_aot_u64 *)src)->v;
    __builtin_memcpy(dst, &v, 8);
  } else {
    __builtin_memcpy(dst, src, n);
  }
}

#undef wasm_rt_memcpy
#define wasm_rt_memcpy(dst, src, n) \
  _Generic((dst), uint8_t *: dust_aot_store, default: dust_aot_load)(dst, src, n)

#endif
