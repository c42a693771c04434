//! Starting and reaping worker processes (docs/security.md, "Every process is reaped").
//!
//! A jailed worker is started straight into its new mount/pid/net/ipc/uts namespaces
//! (`clone` with the namespace flags), so it is pid 1 of its own pid namespace *and* a
//! direct child of the daemon: there is no monitor process in between whose death could
//! orphan the VM. Killing it (through its pidfd, so never a recycled pid) ends everything
//! in its pid namespace, and the daemon waits for it: every process dust starts, dust reaps,
//! whatever PID 1 of the host or container does.
//!
//! The child dies with the daemon: it sets `PR_SET_PDEATHSIG` before `execve` and then
//! checks, on a pidfd of the daemon (fd [`crate::DAEMON_FD`] in the worker), that the
//! daemon did not die before that. The worker repeats both after its uid change (which
//! clears the parent-death signal). The parent-death signal follows the *thread* that
//! started the child: workers are started from the runtime's worker threads, which live as
//! long as the daemon, never from a blocking-pool thread.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::OnceLock;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What to start.
pub struct Spawn<'a> {
    /// The executable (an absolute path: no search).
    pub exe: &'a Path,
    /// argv[1..].
    pub args: &'a [OsString],
    /// One more environment variable on top of the daemon's.
    pub env: Option<(&'a str, String)>,
    /// The child's end of the control socket, to become its fd 3.
    pub control: RawFd,
    /// New mount/pid/net/ipc/uts namespaces (root only).
    pub namespaces: bool,
}

/// A started child: its pid, a pidfd, and its stderr.
pub struct Child {
    pid: u32,
    pidfd: OwnedFd,
    reaped: bool,
}

fn os_err<T>(rc: libc::c_long) -> io::Result<T>
where
    T: TryFrom<libc::c_long>,
{
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    T::try_from(rc).map_err(|_| io::ErrorKind::InvalidData.into())
}

/// A pidfd of this process, inherited by every child as [`crate::DAEMON_FD`]: readable
/// once the daemon is gone.
fn daemon_pidfd() -> io::Result<RawFd> {
    static FD: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = FD.get() {
        return Ok(fd.as_raw_fd());
    }
    // SAFETY: pidfd_open of our own pid; the returned fd (O_CLOEXEC) is ours.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    let raw: RawFd = os_err(rc)?;
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(FD.get_or_init(|| fd).as_raw_fd())
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Everything the child needs, made before the clone: after it, the child may only make
/// async-signal-safe system calls (no allocation, no locks).
struct Prepared {
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    null: OwnedFd,
    stderr: OwnedFd,
    control: RawFd,
    daemon: RawFd,
}

impl Prepared {
    fn new(s: &Spawn<'_>, stderr: OwnedFd) -> io::Result<Self> {
        let exe = cstring(s.exe.as_os_str())?;
        let mut argv = vec![exe.clone()];
        for a in s.args {
            argv.push(cstring(a)?);
        }
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if s.env
                .as_ref()
                .is_some_and(|(name, _)| k == OsStr::new(name))
            {
                continue;
            }
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            envp.push(cstring(&kv)?);
        }
        if let Some((k, v)) = &s.env {
            envp.push(cstring(OsStr::new(&format!("{k}={v}")))?);
        }
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        Ok(Self {
            exe,
            argv,
            envp,
            null: null.into(),
            stderr,
            control: s.control,
            daemon: daemon_pidfd()?,
        })
    }

    /// In the child, between clone and exec: fds 0-4, signal handlers, the parent-death
    /// signal, exec. Only returns on failure, with the errno to report.
    fn exec(&self, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> i32 {
        use crate::CONTROL_FD;
        use crate::DAEMON_FD;
        let null = self.null.as_raw_fd();
        // SAFETY: async-signal-safe system calls on fds valid in this (forked) process and on
        // NUL-terminated arrays built before the fork.
        unsafe {
            // Every source above fd 10 first: a dup2 onto 0-4 must not clobber a source
            // still needed.
            let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            let (control, daemon) = (high(self.control), high(self.daemon));
            let (null, stderr) = (high(null), high(self.stderr.as_raw_fd()));
            if control < 0
                || daemon < 0
                || null < 0
                || stderr < 0
                || libc::dup2(control, CONTROL_FD) < 0
                || libc::dup2(daemon, DAEMON_FD) < 0
                || libc::dup2(null, 0) < 0
                || libc::dup2(null, 1) < 0
                || libc::dup2(stderr, 2) < 0
                // Nothing else: not even what the daemon inherited without close-on-exec.
                || libc::syscall(libc::SYS_close_range, 5, u32::MAX, 0) < 0
            {
                return *libc::__errno_location();
            }
            // Our handlers are the parent's code in the parent's memory: back to the default
            // before any signal is let in. Ignored signals stay ignored, except SIGPIPE.
            for sig in 1..=libc::SIGRTMAX() {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction != libc::SIG_DFL
                    && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The daemon may have died before the line above: its pidfd says so.
            let mut pfd = libc::pollfd {
                fd: DAEMON_FD,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 0) != 0 {
                libc::_exit(i32::from(dust_abi::status::KILLED));
            }
            libc::execve(self.exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            *libc::__errno_location()
        }
    }
}

fn pointers(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What the child reads (and writes back: the errno of a failed exec) in the memory it
/// shares with its parent until it execs.
struct ChildArgs<'a> {
    p: &'a Prepared,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    errno: i32,
}

/// The child's first function (on its own stack, in the parent's memory, the parent thread
/// suspended): exec, or record why not and end.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `Child::spawn` passed, alive until the child has
    // exec'd or exited (CLONE_VFORK suspends the parent until then).
    let a = unsafe { &mut *arg.cast::<ChildArgs<'_>>() };
    a.errno = a.p.exec(a.argv, a.envp);
    127
}

/// The child's stack: only `child_main` and the calls it makes run on it.
const STACK: usize = 64 << 10;

/// Block every signal in the calling thread until dropped: the child shares our memory
/// until it execs, so none of our handlers may run in it (it resets them before it
/// unblocks).
struct Blocked(libc::sigset_t);

impl Blocked {
    fn all() -> Self {
        // SAFETY: sigset_t is plain data filled by sigfillset/pthread_sigmask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            Blocked(old)
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `all`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

impl Child {
    /// Start `s`; returns the child and the read end of its stderr. Like `posix_spawn`,
    /// the child shares this process's memory until it execs (CLONE_VM | CLONE_VFORK), so
    /// starting it costs the same whatever the daemon's size (no page tables copied).
    pub fn spawn(s: &Spawn<'_>) -> io::Result<(Self, OwnedFd)> {
        let (err_r, err_w) = pipe()?;
        let p = Prepared::new(s, err_w)?;
        let (argv, envp) = (pointers(&p.argv), pointers(&p.envp));
        let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
        if s.namespaces {
            flags |= libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS;
        }
        let mut stack = vec![0u8; STACK];
        let mut args = ChildArgs {
            p: &p,
            argv: &argv,
            envp: &envp,
            errno: 0,
        };
        let mut pidfd: libc::c_int = -1;
        let blocked = Blocked::all();
        // SAFETY: the child runs `child_main` on `stack` (its top, 16-byte aligned) with
        // `args`, both alive until it has exec'd or exited, which CLONE_VFORK waits for;
        // the kernel writes the pidfd into `pidfd` (CLONE_PIDFD through the ptid argument).
        let rc = unsafe {
            let top = stack.as_mut_ptr().add(STACK);
            let top = top.sub(top as usize % 16);
            libc::clone(
                child_main,
                top.cast(),
                flags,
                std::ptr::addr_of_mut!(args).cast(),
                std::ptr::addr_of_mut!(pidfd),
            )
        };
        drop(blocked);
        let pid: u32 = os_err(rc.into())?;
        // SAFETY: the kernel wrote a fresh pidfd that we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let errno = args.errno;
        drop(p);
        let mut child = Child {
            pid,
            pidfd,
            reaped: false,
        };
        if errno != 0 {
            child.wait_blocking();
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok((child, err_r))
    }

    /// A child of this process that someone else started for it (the zygote clones with
    /// CLONE_PARENT): not yet waited for, so `pid` cannot have been recycled.
    pub fn adopt(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open of our own child; the returned fd is ours.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let raw: RawFd = os_err(rc)?;
        Ok(Child {
            pid: pid.unsigned_abs(),
            // SAFETY: a fresh fd nobody else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(raw) },
            reaped: false,
        })
    }

    /// Its pid (in the daemon's pid namespace).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// SIGKILL it (a no-op once it is reaped).
    pub fn kill(&self) {
        if self.reaped {
            return;
        }
        // SAFETY: a signal through our own pidfd; no memory involved.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Wait for it to end and reap it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        // SAFETY: the pidfd stays open (owned by `self`) for as long as `fd` is registered:
        // `fd` is dropped before this function returns.
        let fd =
            unsafe { AsyncFd::register_with_interest(self.pidfd.as_raw_fd(), Interest::READABLE) }?;
        loop {
            let mut guard = fd.readable().await?;
            if let Some(status) = self.try_reap(libc::WNOHANG)? {
                return Ok(status);
            }
            guard.clear_ready();
        }
    }

    /// Whether it has ended (and is reaped now), without waiting.
    pub fn exited(&mut self) -> bool {
        self.reaped || matches!(self.try_reap(libc::WNOHANG), Ok(Some(_)))
    }

    fn wait_blocking(&mut self) -> Option<ExitStatus> {
        self.try_reap(0).ok().flatten()
    }

    fn try_reap(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        // SAFETY: siginfo_t is plain data that waitid fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let id = self.pidfd.as_raw_fd() as libc::id_t;
        loop {
            // SAFETY: waitid on our own pidfd with a valid out-pointer.
            let rc = unsafe { libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | flags) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // SAFETY: waitid filled `info` (si_pid 0: not exited yet under WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        self.reaped = true;
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        Ok(Some(ExitStatus::from_raw(raw)))
    }
}

impl Drop for Child {
    /// Never leave a process or a zombie behind: kill it and wait (only reached without a
    /// runtime to wait in, at shutdown).
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            self.wait_blocking();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(exe: &str, args: &[&str]) -> io::Result<(Child, OwnedFd)> {
        let (_ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        Child::spawn(&Spawn {
            exe: Path::new(exe),
            args: &args,
            env: Some(("DUST_PROCESS_TEST", "x".into())),
            control: theirs.as_raw_fd(),
            namespaces: false,
        })
    }

    #[tokio::test]
    async fn a_child_is_waited_for_and_reports_how_it_ended() {
        let (mut c, _err) = start("/bin/sh", &["-c", "exit 7"]).unwrap();
        assert_eq!(c.wait().await.unwrap().code(), Some(7));
        let (mut c, _err) = start("/bin/sh", &["-c", "sleep 30"]).unwrap();
        c.kill();
        assert_eq!(c.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        // The extra variable and fd 4 (the daemon's pidfd) reach the child.
        let (mut c, _err) = start(
            "/bin/sh",
            &[
                "-c",
                "test \"$DUST_PROCESS_TEST\" = x && test -e /proc/self/fd/4",
            ],
        )
        .unwrap();
        assert_eq!(c.wait().await.unwrap().code(), Some(0));
    }

    #[test]
    fn a_missing_executable_is_an_error_and_leaves_no_zombie() {
        let e = start("/nonexistent/dust", &[]).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
