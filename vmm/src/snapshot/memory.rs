//! Guest memory in a snapshot: saved sparsely (only pages that are not all zero, the rest
//! left as holes in the file), restored as a `MAP_PRIVATE` view of that file. Every restored
//! VM shares the file read-only through the page cache; a page it writes is copied for it
//! alone (copy-on-write), so nothing it does reaches the file or another VM. Nothing is
//! copied up front and `MAP_POPULATE` is never used (on a private mapping it would copy
//! every page).

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion,
};

use crate::memory::{ram_ranges, GuestMem};

const PAGE: usize = 4096;

/// Write every non-zero page of `mem` into `file` at its offset (regions back to back);
/// returns the bytes written. The VM must be stopped.
pub fn save(mem: &GuestMem, file: &File) -> std::io::Result<u64> {
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region is a live mapping of `len` bytes owned by `mem`; the VM's vCPUs
        // and device thread have stopped, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr() as *const u8, len) };
        let mut run_start = None;
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            let zero = page.iter().all(|&b| b == 0);
            match (zero, run_start) {
                (false, None) => run_start = Some(i),
                (true, Some(s)) => {
                    written += write_run(file, bytes, s, i, offset)?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            written += write_run(file, bytes, s, len.div_ceil(PAGE), offset)?;
        }
        offset += len as u64;
    }
    file.set_len(offset)?;
    Ok(written)
}

fn write_run(file: &File, bytes: &[u8], from: usize, to: usize, base: u64) -> std::io::Result<u64> {
    let end = (to * PAGE).min(bytes.len());
    let chunk = &bytes[from * PAGE..end];
    file.write_all_at(chunk, base + (from * PAGE) as u64)?;
    Ok(chunk.len() as u64)
}

/// Map `file` as the RAM of a VM with `mib` MiB, private and copy-on-write.
pub fn map_private(file: &File, mib: u32) -> std::io::Result<GuestMem> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(mib) {
        let fo = FileOffset::new(file.try_clone()?, offset);
        let region = MmapRegion::build(
            Some(fo),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| std::io::Error::other(format!("mapping guest memory: {e}")))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| std::io::Error::other("guest memory region overflows"))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| std::io::Error::other(format!("guest memory layout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn sparse_save_then_private_map_round_trips_and_never_writes_back() {
        let mem = crate::memory::create(4).unwrap();
        mem.write_obj(0xdead_beef_u64, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(7u8, GuestAddress(0x3f_ffff)).unwrap();
        let dir = std::env::temp_dir().join(format!("dust-snapmem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let file = File::create(&path).unwrap();
        let written = save(&mem, &file).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        assert_eq!(file.metadata().unwrap().len(), 4 << 20);
        drop(file);
        let before = std::fs::read(&path).unwrap();
        let file = File::open(&path).unwrap();
        let restored = map_private(&file, 4).unwrap();
        let v: u64 = restored.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0xdead_beef);
        restored.write_obj(1u64, GuestAddress(0x1000)).unwrap();
        restored.write_obj(1u64, GuestAddress(0x2000)).unwrap();
        drop(restored);
        assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
