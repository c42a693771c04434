//! Reading and writing canonical ABI values in a component instance's memory.

use alloc::string::String;
use alloc::vec::Vec;

/// A core wasm value as the canonical ABI flattens WASI types (no floats in WASI 0.2's
/// proxy world).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    /// `i32`: handles, pointers, lengths, `u8`..`u32`, `bool`, enums, discriminants.
    I32(i32),
    /// `i64`: `u64` and `s64`.
    I64(i64),
}

/// Why a host function stops the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trap {
    /// A pointer or length outside the memory.
    Bounds,
    /// A handle that is not live in the named resource table.
    Handle(&'static str),
    /// A string that is not UTF-8.
    Utf8,
    /// An argument of the wrong core type or a missing one.
    Args,
    /// `cabi_realloc` failed or is missing.
    Realloc,
    /// `wasi:cli/exit.exit` with this status (0 ok, 1 error).
    Exit(i32),
    /// A function dust does not implement.
    Unknown,
    /// A use of the API dust refuses, described.
    Misuse(&'static str),
}

impl core::fmt::Display for Trap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Bounds => f.write_str("pointer out of bounds"),
            Self::Handle(t) => write!(f, "not a live {t} handle"),
            Self::Utf8 => f.write_str("string is not UTF-8"),
            Self::Args => f.write_str("wrong arguments"),
            Self::Realloc => f.write_str("cabi_realloc failed"),
            Self::Exit(s) => write!(f, "exit with status {s}"),
            Self::Unknown => f.write_str("function not implemented"),
            Self::Misuse(what) => f.write_str(what),
        }
    }
}

/// The component instance as the host functions see it.
pub trait Memory {
    /// The whole linear memory.
    fn data(&self) -> &[u8];
    /// The whole linear memory, to write.
    fn data_mut(&mut self) -> &mut [u8];
    /// Calls the instance's `cabi_realloc(0, 0, align, size)`: new room for a value the
    /// host hands over.
    fn realloc(&mut self, align: u32, size: u32) -> Result<u32, Trap>;
}

/// Argument `i` as an `i32`.
pub fn i32_arg(args: &[Val], i: usize) -> Result<i32, Trap> {
    match args.get(i) {
        Some(Val::I32(v)) => Ok(*v),
        _ => Err(Trap::Args),
    }
}

/// Argument `i` as an `i64`.
pub fn i64_arg(args: &[Val], i: usize) -> Result<i64, Trap> {
    match args.get(i) {
        Some(Val::I64(v)) => Ok(*v),
        _ => Err(Trap::Args),
    }
}

/// `len` bytes at `ptr`.
pub fn bytes(mem: &dyn Memory, ptr: i32, len: i32) -> Result<&[u8], Trap> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize).ok_or(Trap::Bounds)?;
    mem.data().get(start..end).ok_or(Trap::Bounds)
}

/// A string at `ptr`, `len` bytes of UTF-8.
pub fn string(mem: &dyn Memory, ptr: i32, len: i32) -> Result<String, Trap> {
    let b = bytes(mem, ptr, len)?;
    core::str::from_utf8(b)
        .map(String::from)
        .map_err(|_| Trap::Utf8)
}

/// A `u32` stored at `at`.
pub fn load_u32(mem: &dyn Memory, at: u32) -> Result<u32, Trap> {
    let b = bytes(mem, at as i32, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Stores `value` at `at`.
pub fn store(mem: &mut dyn Memory, at: u32, value: &[u8]) -> Result<(), Trap> {
    let start = at as usize;
    let end = start.checked_add(value.len()).ok_or(Trap::Bounds)?;
    mem.data_mut()
        .get_mut(start..end)
        .ok_or(Trap::Bounds)?
        .copy_from_slice(value);
    Ok(())
}

/// Stores a `u8` (discriminants, bools, enums).
pub fn store_u8(mem: &mut dyn Memory, at: u32, v: u8) -> Result<(), Trap> {
    store(mem, at, &[v])
}

/// Stores a `u32`/`i32` (handles, pointers, lengths).
pub fn store_u32(mem: &mut dyn Memory, at: u32, v: u32) -> Result<(), Trap> {
    store(mem, at, &v.to_le_bytes())
}

/// Stores a `u64`.
pub fn store_u64(mem: &mut dyn Memory, at: u32, v: u64) -> Result<(), Trap> {
    store(mem, at, &v.to_le_bytes())
}

/// Copies `value` into new room from `cabi_realloc` (alignment `align`): its pointer.
pub fn lower_bytes(mem: &mut dyn Memory, value: &[u8], align: u32) -> Result<u32, Trap> {
    let size = u32::try_from(value.len()).map_err(|_| Trap::Bounds)?;
    if size == 0 {
        return Ok(align);
    }
    let ptr = mem.realloc(align, size)?;
    store(mem, ptr, value)?;
    Ok(ptr)
}

/// A `string` or `list<u8>` stored at `at` as (pointer, length).
pub fn store_list_u8(mem: &mut dyn Memory, at: u32, value: &[u8]) -> Result<(), Trap> {
    let ptr = lower_bytes(mem, value, 1)?;
    store_u32(mem, at, ptr)?;
    store_u32(mem, at + 4, value.len() as u32)
}

/// A list of elements of `size` bytes (alignment `align`), each written by `write` at its
/// address, stored at `at` as (pointer, length).
pub fn store_list<T>(
    mem: &mut dyn Memory,
    at: u32,
    items: &[T],
    size: u32,
    align: u32,
    mut write: impl FnMut(&mut dyn Memory, u32, &T) -> Result<(), Trap>,
) -> Result<(), Trap> {
    let total = size.checked_mul(items.len() as u32).ok_or(Trap::Bounds)?;
    let ptr = if total == 0 {
        align
    } else {
        mem.realloc(align, total)?
    };
    for (i, item) in items.iter().enumerate() {
        write(mem, ptr + size * i as u32, item)?;
    }
    store_u32(mem, at, ptr)?;
    store_u32(mem, at + 4, items.len() as u32)
}

/// The (pointer, length) pairs of a `list<list<u8>>` or `list<string>` at `ptr`.
pub fn lists(mem: &dyn Memory, ptr: i32, len: i32) -> Result<Vec<Vec<u8>>, Trap> {
    let mut out = Vec::new();
    for i in 0..len as u32 {
        let at = (ptr as u32).checked_add(i * 8).ok_or(Trap::Bounds)?;
        let p = load_u32(mem, at)?;
        let l = load_u32(mem, at + 4)?;
        out.push(bytes(mem, p as i32, l as i32)?.to_vec());
    }
    Ok(out)
}

/// A memory of plain bytes with a bump `cabi_realloc`, for tests.
#[cfg(test)]
pub struct TestMemory {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Next free byte for `realloc`.
    pub next: u32,
}

#[cfg(test)]
impl Memory for TestMemory {
    fn data(&self) -> &[u8] {
        &self.bytes
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn realloc(&mut self, align: u32, size: u32) -> Result<u32, Trap> {
        let ptr = self.next.next_multiple_of(align);
        self.next = ptr + size;
        if self.next as usize > self.bytes.len() {
            return Err(Trap::Realloc);
        }
        Ok(ptr)
    }
}
