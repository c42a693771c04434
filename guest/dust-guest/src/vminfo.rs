//! The per-VM info page the VMM fills before the vCPU first runs, on boot and again on every
//! snapshot restore (`dust_abi::vminfo`): the VM's id, fresh random bytes, the host's wall
//! clock and a generation that changes on every restore. VMs restored from one snapshot
//! share all memory captured at `ready()`, so identity and entropy must come from here, read
//! when needed, never from a value computed before `ready()`.

use core::sync::atomic::{AtomicU64, Ordering};

use dust_abi::vminfo::VmInfo;

/// The page's size in quadwords.
const WORDS: usize = size_of::<VmInfo>() / 8;
const _: () = assert!(size_of::<VmInfo>() == WORDS * 8 && align_of::<VmInfo>() == 8);

/// A copy of the page, if the VMM filled one (dust does; QEMU and Firecracker do not).
pub fn page() -> Option<VmInfo> {
    #[cfg(not(target_os = "none"))]
    {
        None
    }
    #[cfg(target_os = "none")]
    {
        // SAFETY: the page lies in identity-mapped guest RAM, below the zero page; the VMM
        // writes it before the vCPU runs and nothing in the guest writes it. A volatile read
        // keeps the compiler from caching a value across a snapshot restore. It reads
        // quadwords: a volatile read of the struct itself is one byte load and store per
        // byte of its arrays, a few hundred emulated instructions per call.
        let words =
            unsafe { core::ptr::read_volatile(dust_abi::vminfo::ADDR as *const [u64; WORDS]) };
        // SAFETY: VmInfo is repr(C) of integers and byte arrays, 8-aligned, a whole number
        // of quadwords (asserted at WORDS): any bits are a valid value.
        let info: VmInfo = unsafe { core::mem::transmute(words) };
        (info.magic == dust_abi::vminfo::MAGIC).then_some(info)
    }
}

/// Generation of the page now (0 without one).
pub fn generation() -> u64 {
    page().map_or(0, |p| p.generation)
}

/// Host wall clock when this VM was created or restored, ns since the Unix epoch.
pub fn unix_time_ns() -> u64 {
    page().map_or(0, |p| p.unix_time_ns)
}

/// Copy the VM id into `buf`; returns the id's bytes (empty without a page).
pub fn id(buf: &mut [u8; dust_abi::vminfo::ID_MAX]) -> &str {
    let Some(p) = page() else { return "" };
    let n = (p.id_len as usize).min(buf.len());
    buf[..n].copy_from_slice(&p.id[..n]);
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

static SEEDED_FOR: AtomicU64 = AtomicU64::new(0);
static STATE: AtomicU64 = AtomicU64::new(0);

/// Fill `buf` with random bytes from a generator seeded by this VM's info page and reseeded
/// whenever the generation changes (after a restore), so two VMs never share a stream. Not
/// a cryptographic generator: SplitMix64 over the host's 32 fresh bytes.
pub fn random_bytes(buf: &mut [u8]) {
    // One vCPU and no preemption: plain loads and stores are enough.
    if let Some(p) = page()
        && SEEDED_FOR.load(Ordering::Relaxed) != p.generation
    {
        let mut seed = p.generation;
        for chunk in p.random.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            seed = mix(seed ^ u64::from_le_bytes(w));
        }
        STATE.store(seed, Ordering::Relaxed);
        SEEDED_FOR.store(p.generation, Ordering::Relaxed);
    }
    for chunk in buf.chunks_mut(8) {
        let s = STATE
            .load(Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        STATE.store(s, Ordering::Relaxed);
        let v = mix(s).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generator_does_not_repeat_its_first_words() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        super::random_bytes(&mut a);
        super::random_bytes(&mut b);
        assert_ne!(a, b);
    }
}
