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

use std::collections::HashMap;

use seccompiler::{sock_filter, BpfProgram};

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_TRAP: u32 = 0x0003_0000;
/// `SECCOMP_RET_ERRNO | ENOSYS`.
const RET_ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A search over `nrs` (sorted by number): its answer if the accumulator is one of them,
/// else TRAP. Jumps are only forward, over the left half; `None` if one would not fit in a
/// byte.
fn search(nrs: &[(u32, u32)]) -> Option<Vec<sock_filter>> {
    if nrs.len() <= 4 {
        let mut out = Vec::new();
        for &(nr, answer) in nrs {
            out.push(ins(BPF_JEQ_K, 0, 1, nr));
            out.push(ins(BPF_RET_K, 0, 0, answer));
        }
        out.push(ins(BPF_RET_K, 0, 0, RET_TRAP));
        return Some(out);
    }
    let mid = nrs.len() / 2;
    let left = search(&nrs[..mid])?;
    let right = search(&nrs[mid..])?;
    let skip = u8::try_from(left.len()).ok()?;
    let mut out = vec![ins(BPF_JGE_K, skip, 0, nrs[mid].0)];
    out.extend(left);
    out.extend(right);
    Some(out)
}

/// What installing the allowlist after this filter takes (`prctl` for `no_new_privs`,
/// `seccomp`); the allowlist then judges them like every other call.
const INSTALL: [u32; 2] = [libc::SYS_prctl as u32, libc::SYS_seccomp as u32];

/// The filter for a thread whose allowlist names `nrs`, answering ENOSYS to those in
/// `enosys` (the main thread's `clone3`, so that glibc falls back to `clone`, whose flags
/// the allowlist can check); another architecture's calls are left to the allowlist
/// (which refuses them).
pub fn build(nrs: &[u32], enosys: &[u32]) -> Option<BpfProgram> {
    let mut sorted: Vec<(u32, u32)> = nrs
        .iter()
        .chain(&INSTALL)
        .map(|&n| (n, RET_ALLOW))
        .collect();
    sorted.sort_unstable();
    sorted.dedup_by_key(|(n, _)| *n);
    for (n, answer) in sorted.iter_mut() {
        if enosys.contains(n) {
            *answer = RET_ENOSYS;
        }
    }
    let mut prog = vec![
        ins(BPF_LD_W_ABS, 0, 0, ARCH),
        ins(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(BPF_RET_K, 0, 0, RET_ALLOW),
        ins(BPF_LD_W_ABS, 0, 0, NR),
    ];
    prog.extend(search(&sorted)?);
    Some(prog)
}

#[derive(serde::Deserialize)]
struct Filter<'a> {
    #[serde(borrow)]
    filter: Vec<Rule<'a>>,
}

#[derive(serde::Deserialize)]
struct Rule<'a> {
    syscall: &'a str,
}

/// The syscall numbers each filter of `kinds` in `allowlist` (seccompiler's JSON) names,
/// by the number table `names` (one name per line, line n = syscall n). One parse of each:
/// an exec'd worker does this at every start.
pub fn named(allowlist: &str, kinds: &[&str], names: &str) -> Option<Vec<Vec<u32>>> {
    let filters: HashMap<&str, Filter<'_>> = serde_json::from_str(allowlist).ok()?;
    let table: HashMap<&str, u32> = names.lines().zip(0..).collect();
    kinds
        .iter()
        .map(|k| {
            let rules = &filters.get(k)?.filter;
            rules
                .iter()
                .map(|r| table.get(r.syscall).copied())
                .collect()
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
        let kinds = ["main", "vcpu", "events"];
        let all = named(super::super::ALLOWLIST, &kinds, super::super::NAMES).unwrap();
        let json: serde_json::Value = serde_json::from_str(super::super::ALLOWLIST).unwrap();
        for (kind, nrs) in kinds.into_iter().zip(all) {
            // As many calls as the allowlist names.
            let rules = json[kind]["filter"].as_array().unwrap();
            let mut names: Vec<&str> = rules
                .iter()
                .map(|r| r["syscall"].as_str().unwrap())
                .collect();
            names.sort_unstable();
            names.dedup();
            let mut unique = nrs.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{kind}");
            assert!(nrs.len() > 20, "{kind}: {nrs:?}");
            let clone3 = libc::SYS_clone3 as u32;
            let prog = build(&nrs, &[clone3]).unwrap();
            for nr in 0..600 {
                let want = if nr == clone3 && nrs.contains(&nr) {
                    RET_ENOSYS
                } else if nrs.contains(&nr) || INSTALL.contains(&nr) {
                    RET_ALLOW
                } else {
                    RET_TRAP
                };
                assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr), want, "{kind}: {nr}");
            }
            // i386 calls go on to the allowlist, which refuses them.
            assert_eq!(run(&prog, 0x4000_0003, 11), RET_ALLOW);
        }
        assert_eq!(named(super::super::ALLOWLIST, &["nonesuch"], ""), None);
    }
}
