/* Linear-memory stores of dust's ahead-of-time wasm guest: 4-byte stores as typed stores.
 *
 * Included by the compile unit after the module's header (m.h, which includes wasm-rt.h)
 * and before its code (m.c), whose loads and stores (DEFINE_LOAD / DEFINE_STORE) copy each
 * value with `wasm_rt_memcpy(dest, src, size)`. wasm-rt.h makes that `__builtin_memcpy`: a
 * copy of bytes, which C lets alias any object, so after every store clang must assume the
 * instance changed and reload what it holds in registers (the memory's base and size, the
 * globals such as the shadow-stack pointer).
 *
 * Here a 4-byte store goes through a packed one-member struct of our own type instead. By
 * C's aliasing rules such a store can only change an object of that type (or one of
 * character type), so it no longer clobbers the instance, which never lies in linear memory.
 *
 * Only one width is typed, so that every access to linear memory still aliases every other
 * one that may overlap it: typed stores are all of the one type, and everything else
 * (loads, and stores of 1, 2 and 8 bytes) stays a copy of bytes, which aliases anything.
 * Typing a second width would let clang assume that, say, an 8-byte store and a 4-byte
 * store never overlap, and reorder them; wasm code may well do that to the same bytes.
 * 4 bytes is the width most stores of wasm32 code have (pointers and `int`s). The values
 * and the bounds checks are unchanged; the stored value is still copied as bytes from the
 * local (`wrapped`), so no value changes type.
 *
 * In a store the destination is `&mem->data[addr]`, a `uint8_t *`; in a load it is the
 * address of a local of the access's type (a `uint8_t *` only for 1-byte loads, which this
 * leaves a byte copy). */
#ifndef DUST_AOT_ACCESS_H
#define DUST_AOT_ACCESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint32_t v;
} __attribute__((packed)) dust_aot_u32;

/* Stores `n` bytes from the local at `src` into linear memory at `dst`. */
static inline __attribute__((always_inline)) void dust_aot_store(void *dst, const void *src,
                                                                 size_t n) {
  if (n == 4) {
    uint32_t v;
    __builtin_memcpy(&v, src, 4);
    ((dust_aot_u32 *)dst)->v = v;
  } else {
    __builtin_memcpy(dst, src, n);
  }
}

/* Loads (and anything but a store) stay byte copies. */
static inline __attribute__((always_inline)) void dust_aot_copy(void *dst, const void *src,
                                                                size_t n) {
  __builtin_memcpy(dst, src, n);
}

#undef wasm_rt_memcpy
#define wasm_rt_memcpy(dst, src, n) \
  _Generic((dst), uint8_t *: dust_aot_store, default: dust_aot_copy)(dst, src, n)

#endif
