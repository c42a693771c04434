//! CPUID for a vCPU: what KVM supports (read once per process), with the APIC ID of the vCPU
//! and the hypervisor bit set.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

static SUPPORTED: OnceLock<CpuId> = OnceLock::new();

/// KVM_GET_SUPPORTED_CPUID, cached in the process and in a file of the runtime directory:
/// it cannot change before the host reboots, and asking costs ~0.55 ms on our dev machines,
/// a sixth of a whole `dust run`. The file is named after the boot id, so a reboot (new
/// kernel, new KVM) never reads an old answer.
pub fn supported(kvm: &Kvm) -> Result<&'static CpuId, kvm_ioctls::Error> {
    if let Some(c) = SUPPORTED.get() {
        return Ok(c);
    }
    let file = cache_file();
    if let Some(c) = file.as_deref().and_then(read_cache) {
        return Ok(SUPPORTED.get_or_init(|| c));
    }
    let c = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    if let Some(f) = &file {
        write_cache(f, &c);
    }
    Ok(SUPPORTED.get_or_init(|| c))
}

const MAGIC: &[u8; 8] = b"DUSTCPU1";
const ENTRY_WORDS: usize = 10;

fn cache_file() -> Option<PathBuf> {
    // One read of the 37-byte id (read_to_string would stat the file and read to its end).
    let mut buf = [0u8; 64];
    let n = std::fs::File::open("/proc/sys/kernel/random/boot_id")
        .and_then(|mut f| std::io::Read::read(&mut f, &mut buf))
        .ok()?;
    let boot_id = std::str::from_utf8(&buf[..n]).ok()?.trim();
    if boot_id.is_empty() || !boot_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return None;
    }
    Some(crate::runtime_dir().join(format!("cpuid-{boot_id}.bin")))
}

/// The cached table, if the file is ours, private and well-formed. Opened without following
/// a symlink and checked through the open file: what is checked is what is read.
fn read_cache(path: &Path) -> Option<CpuId> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let max = (MAGIC.len() + KVM_MAX_CPUID_ENTRIES * ENTRY_WORDS * 4) as u64;
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 || meta.len() > max {
        return None;
    }
    let mut bytes = vec![0u8; meta.len() as usize];
    file.read_exact(&mut bytes).ok()?;
    let body = bytes.strip_prefix(MAGIC)?;
    let entry_len = ENTRY_WORDS * 4;
    if body.is_empty()
        || body.len() % entry_len != 0
        || body.len() / entry_len > KVM_MAX_CPUID_ENTRIES
    {
        return None;
    }
    let entries: Vec<kvm_cpuid_entry2> = body
        .chunks_exact(entry_len)
        .map(|e| {
            let w =
                |i: usize| u32::from_le_bytes([e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]]);
            kvm_cpuid_entry2 {
                function: w(0),
                index: w(1),
                flags: w(2),
                eax: w(3),
                ebx: w(4),
                ecx: w(5),
                edx: w(6),
                padding: [0; 3],
            }
        })
        .collect();
    CpuId::from_entries(&entries).ok()
}

/// Best effort: a cache that cannot be written only costs the next process an ioctl.
fn write_cache(path: &Path, cpuid: &CpuId) {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let Some(dir) = path.parent() else { return };
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let mut bytes = MAGIC.to_vec();
    for e in cpuid.as_slice() {
        for w in [
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx, 0, 0, 0,
        ] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, path);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

const LEAF_FEATURES: u32 = 1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF_XSAVE: u32 = 0xd;

/// A sub-leaf of leaf 0xD (the XSAVE state components) that says nothing: all four registers
/// zero, as a guest reads a sub-leaf that is not in the table at all. KVM_SET_CPUID2 costs a
/// host `cpuid` (~9 us on a nested host) per 0xD sub-leaf it is given, so these are left out
/// (on our dev machines sub-leaf 1, the XSAVEOPT/XSAVEC/XSAVES flags, is such a one).
fn says_nothing(e: &kvm_cpuid_entry2) -> bool {
    e.function == LEAF_XSAVE && e.index > 0 && (e.eax | e.ebx | e.ecx | e.edx) == 0
}

/// dust's own leaves (`dust-abi::cpuid`): the signature, and the features a guest may use.
fn dust_leaves() -> [kvm_cpuid_entry2; 2] {
    let sig = |i: usize| {
        let s = dust_abi::cpuid::SIGNATURE;
        u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]])
    };
    let leaf = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        index: 0,
        flags: 0,
        eax,
        ebx,
        ecx,
        edx,
        padding: [0; 3],
    };
    [
        leaf(
            dust_abi::cpuid::LEAF_SIGNATURE,
            dust_abi::cpuid::LEAF_FEATURES,
            sig(0),
            sig(4),
            sig(8),
        ),
        leaf(
            dust_abi::cpuid::LEAF_FEATURES,
            dust_abi::cpuid::FEATURE_CONSOLE_WRITE,
            0,
            0,
            0,
        ),
    ]
}

/// The CPUID table of vCPU `id` in a VM of `count` vCPUs.
pub fn for_vcpu(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    cpuid.retain(|e| !says_nothing(e));
    for leaf in dust_leaves() {
        // KVM takes at most KVM_MAX_CPUID_ENTRIES; without room the guest simply does not
        // see dust's leaves and keeps to the UART.
        let _ = cpuid.push(leaf);
    }
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => e.edx = u32::from(id),
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vcpu_sees_the_dust_signature_and_features() {
        let base = CpuId::new(0).unwrap();
        let c = for_vcpu(&base, 0, 1);
        let sig = c
            .as_slice()
            .iter()
            .find(|e| e.function == dust_abi::cpuid::LEAF_SIGNATURE)
            .unwrap();
        let mut bytes = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(bytes, b"DustDustDust");
        assert_eq!(sig.eax, dust_abi::cpuid::LEAF_FEATURES);
        let features = c
            .as_slice()
            .iter()
            .find(|e| e.function == dust_abi::cpuid::LEAF_FEATURES)
            .unwrap();
        assert_ne!(features.eax & dust_abi::cpuid::FEATURE_CONSOLE_WRITE, 0);
    }

    #[test]
    fn empty_xsave_sub_leaves_are_left_out_and_the_others_kept() {
        let leaf = |function, index, eax| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ..Default::default()
        };
        let base = CpuId::from_entries(&[
            leaf(LEAF_XSAVE, 0, 0x7),
            leaf(LEAF_XSAVE, 1, 0),
            leaf(LEAF_XSAVE, 2, 0x100),
            leaf(LEAF_XSAVE, 3, 0),
            leaf(0x14, 1, 0),
        ])
        .unwrap();
        let c = for_vcpu(&base, 0, 1);
        let has = |f, i| c.as_slice().iter().any(|e| e.function == f && e.index == i);
        assert!(
            has(LEAF_XSAVE, 0) && has(LEAF_XSAVE, 2),
            "sub-leaves with content stay"
        );
        assert!(!has(LEAF_XSAVE, 1) && !has(LEAF_XSAVE, 3), "empty ones go");
        assert!(has(0x14, 1), "only leaf 0xD is filtered");
    }

    #[test]
    fn cache_round_trips_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("dust-cpuid-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cpuid.bin");
        let entries = [kvm_cpuid_entry2 {
            function: 1,
            index: 0,
            flags: 0,
            eax: 0x806c1,
            ebx: 2,
            ecx: 3,
            edx: 4,
            padding: [0; 3],
        }];
        let c = CpuId::from_entries(&entries).unwrap();
        write_cache(&path, &c);
        let back = read_cache(&path).unwrap();
        assert_eq!(back.as_slice()[0].eax, 0x806c1);
        assert_eq!(back.as_slice().len(), 1);
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_cache(&link).is_none(), "a symlink is not followed");
        std::fs::write(&path, b"DUSTCPU1short").unwrap();
        assert!(read_cache(&path).is_none());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read_cache(&path).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
