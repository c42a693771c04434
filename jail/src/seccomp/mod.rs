//! Per-thread seccomp filters of a worker process (docs/security.md).
//!
//! The allowlists are data, `allowlist.json` beside this file (seccompiler's JSON format),
//! compiled to BPF once when a worker calls [`enable`]. From then on every thread of the
//! worker installs its own filter before it touches guest-controlled data: the vCPU
//! threads and the device event thread as they start (before any guest instruction runs),
//! the main thread once the VM shell is built. Threads the main thread starts later (the
//! VM waiter) inherit its filter. `dust run` and in-process VMs never call [`enable`] and
//! run unfiltered.
//!
//! A syscall outside the list traps (SIGSYS). The handler writes which syscall it was to
//! the worker's stderr and, as an `error` event, to the summoner's control socket, then
//! makes the same call again with SIGSYS blocked, which the kernel answers by killing the
//! whole process with SIGSYS.

use std::sync::OnceLock;

use seccompiler::{BpfMap, BpfProgram, TargetArch};

mod prefilter;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
mod trap;

/// The allowlists, one per thread kind.
const ALLOWLIST: &str = include_str!("allowlist.json");

/// The x86_64 syscall names, line n = syscall n (seccompiler's table).
const NAMES: &str = include_str!("syscalls_x86_64.txt");

/// Why filtering could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allowlist did not compile (a bug in `allowlist.json`).
    #[error("compiling the seccomp allowlist: {0}")]
    Compile(#[source] seccompiler::Error),
    /// The allowlist has no filter for a thread kind.
    #[error("the seccomp allowlist has no filter {0:?}")]
    Missing(&'static str),
    /// The kernel refused the filter.
    #[error("installing the {what} seccomp filter: {source}")]
    Install {
        /// Which filter.
        what: &'static str,
        /// Cause.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The threads of a worker, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The control-socket thread (and the VM waiter it starts): after the build.
    Main,
    /// A vCPU thread: KVM_RUN and the device emulation it does inline.
    Vcpu,
    /// The device event loop (vsock sockets, virtqueue notifications).
    Events,
}

impl ThreadKind {
    fn key(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Events => "events",
        }
    }
}

struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
    events: BpfProgram,
    no_clone3: BpfProgram,
    /// Each allowlist's [`prefilter`], installed just before it (`None`: an allowlist the
    /// prefilter cannot express; it is then installed alone, only slower).
    pre: [Option<BpfProgram>; 3],
}

/// The prefilters of the main, vCPU and events threads; the main thread's also does
/// `no_clone3`'s job (one filter fewer to install).
fn prefilters() -> [Option<BpfProgram>; 3] {
    let kinds = [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Events];
    let named = prefilter::named(ALLOWLIST, &kinds.map(ThreadKind::key), NAMES);
    let clone3 = [libc::SYS_clone3 as u32];
    kinds.map(|kind| {
        let i = kind as usize;
        let enosys: &[u32] = if kind == ThreadKind::Main {
            &clone3
        } else {
            &[]
        };
        prefilter::build(named.as_ref()?.get(i)?, enosys)
    })
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

fn take(map: &mut BpfMap, key: &'static str) -> Result<BpfProgram, SeccompError> {
    map.remove(key).ok_or(SeccompError::Missing(key))
}

/// Compile the allowlists and install the SIGSYS reporter: from now on the threads of
/// this process filter themselves (see [`apply`]). Called once, early, by `dust worker`.
pub fn enable() -> Result<(), SeccompError> {
    if FILTERS.get().is_some() {
        return Ok(());
    }
    let mut map = compile()?;
    let filters = Filters {
        main: take(&mut map, "main")?,
        vcpu: take(&mut map, "vcpu")?,
        events: take(&mut map, "events")?,
        no_clone3: take(&mut map, "no_clone3")?,
        pre: prefilters(),
    };
    trap::install().map_err(SeccompError::Handler)?;
    let _ = FILTERS.set(filters);
    Ok(())
}

/// The worker's main thread, once its VM shell is built: filter it (and arm the test hook
/// when built with `test-hooks`).
pub fn worker_built(cmdline: &str) -> Result<(), SeccompError> {
    #[cfg(feature = "test-hooks")]
    test_hooks::arm(cmdline);
    let _ = cmdline;
    apply(ThreadKind::Main)
}

/// The worker is about to start its VM (fires the test hook when built with `test-hooks`).
pub fn worker_starting() {
    #[cfg(feature = "test-hooks")]
    test_hooks::fire();
}

/// The daemon's own filter (`dust serve`), for its calling thread and every thread and
/// process it starts later: a denylist (EPERM) of what dust never needs and an attacker
/// would want (ptrace, process_vm_*, bpf, perf_event_open, kernel modules, kexec, keyrings,
/// io_uring, setns, the new mount API but the three calls the jail takes its mounts with,
/// ...). Workers inherit it under their own allowlists.
pub fn apply_daemon() -> Result<(), SeccompError> {
    let mut map = compile()?;
    let prog = take(&mut map, "daemon")?;
    seccompiler::apply_filter(&prog).map_err(|source| SeccompError::Install {
        what: "daemon",
        source,
    })
}

/// Compile `allowlist.json` for this machine.
pub fn compile() -> Result<BpfMap, SeccompError> {
    seccompiler::compile_from_json(ALLOWLIST.as_bytes(), TargetArch::x86_64)
        .map_err(SeccompError::Compile)
}

/// Whether [`enable`] was called in this process.
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Install the calling thread's filter, if this process filters its threads (a no-op
/// otherwise). Irreversible for the thread and any thread it starts.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(f) = FILTERS.get() else {
        return Ok(());
    };
    let (prog, pre) = match kind {
        ThreadKind::Main => {
            // glibc starts threads with clone3, whose flags a filter cannot read: make it
            // fail with ENOSYS so that glibc falls back to clone, whose flags the main
            // filter checks. Filters stack; the stricter answer wins. The prefilter, if
            // there is one, answers ENOSYS to clone3 itself.
            if f.pre[0].is_none() {
                seccompiler::apply_filter(&f.no_clone3).map_err(|source| {
                    SeccompError::Install {
                        what: "no_clone3",
                        source,
                    }
                })?;
            }
            (&f.main, &f.pre[0])
        }
        ThreadKind::Vcpu => (&f.vcpu, &f.pre[1]),
        ThreadKind::Events => (&f.events, &f.pre[2]),
    };
    trap::set_kind(kind.key());
    if let Some(pre) = pre {
        seccompiler::apply_filter(pre).map_err(|source| SeccompError::Install {
            what: kind.key(),
            source,
        })?;
    }
    seccompiler::apply_filter(prog).map_err(|source| SeccompError::Install {
        what: kind.key(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_compiles_with_every_thread_kind() {
        let map = compile().unwrap();
        for k in ["main", "vcpu", "events", "no_clone3", "daemon"] {
            assert!(map.get(k).is_some_and(|p| !p.is_empty()), "{k}");
        }
    }
}
