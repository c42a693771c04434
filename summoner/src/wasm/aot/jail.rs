//! Running one compiler tool (wasm2c, clang, ld.lld) on untrusted input: a child process
//! in its own process group, with CPU, address-space and file-size limits, no new
//! privileges, when dust runs as root no network (a new network namespace) and an
//! unprivileged uid/gid, and last a seccomp filter that refuses (EPERM) what a compiler
//! never needs: sockets, namespaces, mounts, ptrace, kernel keys, modules, BPF. It works in
//! a private directory and is killed (the whole group) at its deadline.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Limits of one compile (every tool of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileLimits {
    /// CPU seconds per tool (RLIMIT_CPU).
    pub cpu_secs: u64,
    /// Address space per tool, bytes (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Largest file a tool may write, bytes (RLIMIT_FSIZE).
    pub file_bytes: u64,
    /// Wall time for the whole compile.
    pub wall: Duration,
    /// The uid/gid tools run as when dust runs as root.
    pub uid: u32,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self {
            cpu_secs: 120,
            memory_bytes: 2 << 30,
            file_bytes: 256 << 20,
            wall: Duration::from_secs(180),
            uid: 65534,
        }
    }
}

/// How a tool run ended, when it did not succeed.
#[derive(Debug)]
pub enum RunError {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It ran past the deadline and was killed.
    TimedOut,
    /// It exited with a failure; the end of its stderr.
    Failed(String, String),
}

/// Most bytes of a tool's stderr kept for an error message.
const STDERR_TAIL: usize = 2000;

/// Runs `tool args` in `dir` under `limits` until `deadline`.
pub fn run(
    tool: &Path,
    args: &[&str],
    dir: &Path,
    limits: &CompileLimits,
    deadline: Instant,
) -> Result<(), RunError> {
    let mut child = spawn(tool, args, dir, limits)?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut out);
        }
        out
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break None,
        }
    };
    let pid = child.id() as libc::pid_t;
    // The tool's whole group: a driver may have started helpers.
    // SAFETY: plain syscall; the group is the child's own (setpgid in `confine`).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
    let err = reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(RunError::Failed(s.to_string(), stderr_tail(&err))),
        None => Err(RunError::TimedOut),
    }
}

/// Starts `tool args` in `dir`, confined (`confine`, then the seccomp filter) before exec;
/// its stderr is piped, the rest closed.
fn spawn(
    tool: &Path,
    args: &[&str],
    dir: &Path,
    limits: &CompileLimits,
) -> Result<std::process::Child, RunError> {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let limits = limits.clone();
    let filter = filter().map_err(RunError::Spawn)?;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setpgid, prctl, setrlimit, unshare, setgroups, setgid,
    // setuid, seccomp with a program built before the fork), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            confine(&limits)?;
            seccompiler::apply_filter(filter).map_err(|_| std::io::Error::last_os_error())
        });
    }
    cmd.spawn().map_err(RunError::Spawn)
}

/// The last [`STDERR_TAIL`] bytes of a tool's stderr (from a character boundary), trimmed.
fn stderr_tail(err: &[u8]) -> String {
    let text = String::from_utf8_lossy(err);
    let start = text.len().saturating_sub(STDERR_TAIL);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}

/// System calls the tools may not make (EPERM): a compiler reads and writes files.
const DENIED: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    // The new mount API (the daemon's own filter lets it and its workers' jails use
    // open_tree, move_mount and mount_setattr).
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_mount_setattr,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_open_by_handle_at,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
];

/// The tools' seccomp program, built once (before any fork).
fn filter() -> Result<&'static BpfProgram, std::io::Error> {
    static PROGRAM: OnceLock<BpfProgram> = OnceLock::new();
    if let Some(p) = PROGRAM.get() {
        return Ok(p);
    }
    let rules = DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let errno = SeccompAction::Errno(libc::EPERM as u32);
    let program = SeccompFilter::new(rules, SeccompAction::Allow, errno, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(std::io::Error::other)?;
    Ok(PROGRAM.get_or_init(|| program))
}

/// The child's confinement, between fork and exec.
fn confine(limits: &CompileLimits) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: each call takes plain values or a pointer to a local rlimit.
    unsafe {
        check(libc::setpgid(0, 0))?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let set = |res, value: u64| {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            libc::setrlimit(res, &lim)
        };
        check(set(libc::RLIMIT_CPU, limits.cpu_secs))?;
        check(set(libc::RLIMIT_AS, limits.memory_bytes))?;
        check(set(libc::RLIMIT_FSIZE, limits.file_bytes))?;
        check(set(libc::RLIMIT_CORE, 0))?;
        if libc::geteuid() == 0 {
            // No network, and not root. The private directory is the tool's (chowned).
            check(libc::unshare(libc::CLONE_NEWNET))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(limits.uid))?;
            check(libc::setuid(limits.uid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CompileLimits {
        CompileLimits {
            wall: Duration::from_secs(30),
            ..CompileLimits::default()
        }
    }

    #[test]
    fn a_tool_past_its_deadline_is_killed_with_its_group() {
        let dir = std::env::temp_dir();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(300);
        let r = run(
            Path::new("/bin/sh"),
            &["-c", "sleep 30 & sleep 30"],
            &dir,
            &limits(),
            deadline,
        );
        assert!(matches!(r, Err(RunError::TimedOut)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_failing_tool_reports_its_status_and_stderr() {
        let dir = std::env::temp_dir();
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = run(
            Path::new("/bin/sh"),
            &["-c", "echo bad input >&2; exit 3"],
            &dir,
            &limits(),
            deadline,
        );
        match r {
            Err(RunError::Failed(status, stderr)) => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "bad input");
            }
            other => panic!("{other:?}"),
        }
        assert!(run(Path::new("/bin/true"), &[], &dir, &limits(), deadline).is_ok());
    }

    #[test]
    fn tools_may_not_open_sockets() {
        let dir = std::env::temp_dir();
        let deadline = Instant::now() + Duration::from_secs(30);
        let py = "import socket; socket.socket(socket.AF_UNIX)";
        let r = run(
            Path::new("/usr/bin/python3"),
            &["-c", py],
            &dir,
            &limits(),
            deadline,
        );
        match r {
            Err(RunError::Failed(_, stderr)) => {
                assert!(stderr.contains("Operation not permitted"), "{stderr}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tools_run_without_network_and_unprivileged_when_dust_is_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = std::env::temp_dir();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Only a loopback interface (down) in a new network namespace; uid 65534.
        let script = "test \"$(id -u)\" = 65534 && \
                      test \"$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')\" = lo";
        let r = run(
            Path::new("/bin/sh"),
            &["-c", script],
            &dir,
            &limits(),
            deadline,
        );
        assert!(r.is_ok(), "{r:?}");
    }
}
