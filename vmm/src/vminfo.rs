//! The per-VM info page (`dust_abi::vminfo`): identity, fresh entropy, wall clock and a
//! generation, written before a VM's vCPU first runs, on boot and on every restore.

use std::time::{SystemTime, UNIX_EPOCH};

use dust_abi::vminfo::{VmInfo, ADDR, ID_MAX, MAGIC, RANDOM_LEN};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// Fill the page for VM `id`; `after` is a generation the new one must exceed (the
/// snapshot's, when restoring). Returns the generation written.
pub fn write(mem: &GuestMem, id: &str, after: u64) -> Result<u64, vm_memory::GuestMemoryError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let generation = now.max(after.saturating_add(1));
    let mut random = [0u8; RANDOM_LEN];
    fill_random(&mut random);
    let mut id_bytes = [0u8; ID_MAX];
    let n = id.len().min(ID_MAX);
    id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
    let info = VmInfo {
        magic: MAGIC,
        generation,
        unix_time_ns: now,
        id_len: n as u32,
        reserved: 0,
        id: id_bytes,
        random,
    };
    // SAFETY: VmInfo is repr(C) plain data (integers and byte arrays) with no padding:
    // 8 + 8 + 8 + 4 + 4 + 64 + 32 bytes, all at their natural alignment.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&info as *const VmInfo).cast::<u8>(),
            std::mem::size_of::<VmInfo>(),
        )
    };
    mem.write_slice(bytes, GuestAddress(ADDR))?;
    Ok(generation)
}

/// The generation in `mem`'s info page (0 if it holds none).
pub fn current_generation(mem: &GuestMem) -> u64 {
    let magic: u64 = mem.read_obj(GuestAddress(ADDR)).unwrap_or(0);
    if magic != MAGIC {
        return 0;
    }
    mem.read_obj(GuestAddress(ADDR + 8)).unwrap_or(0)
}

/// Bytes from getrandom(2); falls back to /dev/urandom if the call is unavailable.
fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n <= 0 {
            use std::io::Read;
            if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
                let _ = f.read_exact(rest);
            }
            return;
        }
        done += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_the_id_and_differs_per_vm() {
        let mem = crate::memory::create(4).unwrap();
        let g1 = write(&mem, "svc-1", 0).unwrap();
        let a: VmInfoBytes = mem.read_obj(GuestAddress(ADDR)).unwrap();
        let g2 = write(&mem, "svc-2", g1).unwrap();
        let b: VmInfoBytes = mem.read_obj(GuestAddress(ADDR)).unwrap();
        assert!(g2 > g1);
        assert_eq!(&a.0[..8], &MAGIC.to_le_bytes());
        assert_eq!(&a.0[32..37], b"svc-1");
        assert_ne!(a.0[96..128], b.0[96..128], "random bytes repeat");
    }

    #[derive(Clone, Copy)]
    struct VmInfoBytes([u8; 128]);
    // SAFETY: a plain byte array; every bit pattern is valid.
    unsafe impl vm_memory::ByteValued for VmInfoBytes {}
    impl Default for VmInfoBytes {
        fn default() -> Self {
            Self([0; 128])
        }
    }
}
