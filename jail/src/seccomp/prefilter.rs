//! A short filter installed just before each thread's allowlist: it traps every syscall the
//! allowlist does not name (but the two its installation makes) and lets the allowlist
//! judge the rest (their arguments).
//!
//! Why: installing a filter makes the kernel emulate it once for every syscall number the
//! filters already in place allow (the per-filter "always allow" cache, built with the
//! signal lock held and interrupts off). seccompiler's filters test the numbers one after
//! another, so that emulation walks the whole list for each of the ~450 numbers the
//! daemon's denylist lets through: the largest single cost of a shell build in the profile
//! (docs/benchmarks.md). This filter is a binary search over the sorted numbers (about ten
//! instructions per number); the allowlist installed after it is then emulated only for
//! the numbers it names. What a thread may do is unchanged: both filters run on every
//! call and the stricter answer wins, and this one traps only what the allowlist traps.

use seccompiler::{sock_filter, BpfProgram};

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_TRAP: u32 = 0x0003_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A search over `nrs` (sorted): ALLOW if the accumulator is one of them, else TRAP.
/// Jumps are only forward, over the left half; `None` if one would not fit in a byte.
fn search(nrs: &[u32]) -> Option<Vec<sock_filter>> {
    if nrs.len() <= 4 {
        let mut out = Vec::new();
        for &nr in nrs {
            out.push(ins(BPF_JEQ_K, 0, 1, nr));
            out.push(ins(BPF_RET_K, 0, 0, RET_ALLOW));
        }
        out.push(ins(BPF_RET_K, 0, 0, RET_TRAP));
        return Some(out);
    }
    let mid = nrs.len() / 2;
    let left = search(&nrs[..mid])?;
    let right = search(&nrs[mid..])?;
    let skip = u8::try_from(left.len()).ok()?;
    let mut out = vec![ins(BPF_JGE_K, skip, 0, nrs[mid])];
    out.extend(left);
    out.extend(right);
    Some(out)
}

/// What installing the allowlist after this filter takes (`prctl` for `no_new_privs`,
/// `seccomp`); the allowlist then judges them like every other call.
const INSTALL: [u32; 2] = [libc::SYS_prctl as u32, libc::SYS_seccomp as u32];

/// The filter for a thread whose allowlist names `nrs`; another architecture's calls are
/// left to the allowlist (which refuses them).
pub fn build(nrs: &[u32]) -> Option<BpfProgram> {
    let mut sorted = nrs.to_vec();
    sorted.extend(INSTALL);
    sorted.sort_unstable();
    sorted.dedup();
    let mut prog = vec![
        ins(BPF_LD_W_ABS, 0, 0, ARCH),
        ins(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(BPF_RET_K, 0, 0, RET_ALLOW),
        ins(BPF_LD_W_ABS, 0, 0, NR),
    ];
    prog.extend(search(&sorted)?);
    Some(prog)
}

/// The syscall numbers the filter `kind` of `allowlist` (seccompiler's JSON) names, by the
/// number table `names` (one name per line, line n = syscall n).
pub fn named(allowlist: &str, kind: &str, names: &str) -> Option<Vec<u32>> {
    let json: serde_json::Value = serde_json::from_str(allowlist).ok()?;
    let rules = json.get(kind)?.get("filter")?.as_array()?;
    let table: Vec<&str> = names.lines().collect();
    rules
        .iter()
        .map(|r| {
            let name = r.get("syscall")?.as_str()?;
            let nr = table.iter().position(|n| *n == name)?;
            u32::try_from(nr).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `prog` (only the instructions [`build`] emits) on one call.
    fn run(prog: &[sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => acc = if i.k == ARCH { arch } else { nr },
                BPF_JEQ_K | BPF_JGE_K => {
                    let hit = if i.code == BPF_JEQ_K {
                        acc == i.k
                    } else {
                        acc >= i.k
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    #[test]
    fn it_allows_exactly_what_each_allowlist_names() {
        for kind in ["main", "vcpu", "events"] {
            let nrs = named(super::super::ALLOWLIST, kind, super::super::NAMES).unwrap();
            assert!(nrs.len() > 20, "{kind}: {nrs:?}");
            let prog = build(&nrs).unwrap();
            for nr in 0..600 {
                let want = if nrs.contains(&nr) || INSTALL.contains(&nr) {
                    RET_ALLOW
                } else {
                    RET_TRAP
                };
                assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr), want, "{kind}: {nr}");
            }
            // i386 calls go on to the allowlist, which refuses them.
            assert_eq!(run(&prog, 0x4000_0003, 11), RET_ALLOW);
        }
        assert_eq!(named(super::super::ALLOWLIST, "nonesuch", ""), None);
    }
}
