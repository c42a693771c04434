//! Entering the jail: the steps in order, each a few syscalls.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{JailError, JailSpec};
use crate::seccomp::{self, ThreadKind};

fn failed(step: impl Into<String>) -> JailError {
    JailError::Step {
        step: step.into(),
        source: std::io::Error::last_os_error(),
    }
}

fn check(rc: libc::c_long, step: impl Into<String>) -> Result<(), JailError> {
    if rc < 0 {
        Err(failed(step))
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Step {
        step: format!("path {} has a NUL byte", p.display()),
        source: std::io::ErrorKind::InvalidInput.into(),
    })
}

/// Enter the jail `spec` describes. Must run while the process has one thread. Returns in
/// the jailed process; with namespaces, the parent left behind never returns (it becomes
/// the monitor, see the module docs).
pub fn enter(spec: &JailSpec) -> Result<(), JailError> {
    crate::open_kvm()?;
    for cg in &spec.cgroups {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string()).map_err(
            |source| JailError::Step {
                step: format!("joining cgroup {}", cg.display()),
                source,
            },
        )?;
    }
    let mut alive = None;
    if spec.namespaces {
        let flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        // SAFETY: unshare only changes this process's namespaces.
        check(unsafe { libc::unshare(flags) }.into(), "unshare")?;
        alive = Some(fork_monitor(spec)?);
        if let Some(serial) = &spec.serial {
            prepare_serial(serial, spec.uid, spec.gid)?;
        }
        mounts(spec)?;
    }
    limits(spec)?;
    if spec.namespaces {
        drop_privileges(spec)?;
    }
    if let Some(fd) = alive {
        die_with_monitor(fd);
    }
    // SAFETY: sets a flag on this process; no pointers.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into(),
        "no_new_privs",
    )
}

/// Fork; the child returns (pid 1 of the new pid namespace) with the read end of a pipe
/// that hangs up when the monitor dies; the parent becomes the monitor.
fn fork_monitor(spec: &JailSpec) -> Result<libc::c_int, JailError> {
    // A pipe whose write end only the monitor holds: the child sees it hang up if the
    // monitor is already gone (its getppid() is 0 across the pid namespace either way).
    let mut alive = [0; 2];
    // SAFETY: `alive` has room for the two fds.
    let rc = unsafe { libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) };
    check(rc.into(), "pipe")?;
    // SAFETY: the process has a single thread here (`dust worker` jails itself before it
    // starts any), so the child may run ordinary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(failed("fork"));
    }
    if pid == 0 {
        // SAFETY: our copy of the write end.
        unsafe { libc::close(alive[1]) };
        return Ok(alive[0]);
    }
    // SAFETY: the monitor's copy of the read end.
    unsafe { libc::close(alive[0]) };
    monitor(pid, spec)
}

/// Die with the monitor: PR_SET_PDEATHSIG (which a uid change clears, so this comes after
/// it), then make sure the monitor did not die before that.
fn die_with_monitor(alive: libc::c_int) {
    let mut pfd = libc::pollfd {
        fd: alive,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: plain prctl/poll/close calls on our own fd and one valid pollfd.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        let rc = libc::poll(&mut pfd, 1, 0);
        libc::close(alive);
        if rc != 0 {
            // Hung up: the monitor is gone already.
            libc::_exit(i32::from(dust_abi::status::KILLED));
        }
    }
}

/// Wait for the jailed child and end the same way.
fn monitor(child: libc::pid_t, spec: &JailSpec) -> ! {
    // SAFETY: our copy of the control socket; the child has its own and speaks on it.
    unsafe { libc::close(crate::worker::protocol::CONTROL_FD) };
    let ready = limits(spec)
        .and_then(|()| drop_privileges(spec))
        .and_then(|()| seccomp::apply(ThreadKind::Monitor).map_err(JailError::from));
    if let Err(e) = ready {
        eprintln!("dust worker: monitor: {e}");
        // SAFETY: ends this process; the child follows by PDEATHSIG.
        unsafe { libc::_exit(i32::from(dust_abi::status::VMM_ERROR)) };
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `child` is our child.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: ends this process.
            unsafe { libc::_exit(i32::from(dust_abi::status::VMM_ERROR)) };
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restore the default action and send the child's signal to ourselves, so
        // that the summoner sees the same death (SIGSYS for a seccomp kill).
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
    }
    // SAFETY: ends this process with the child's exit code.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

fn prepare_serial(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let io = |source| JailError::Step {
        step: format!("serial file {}", path.display()),
        source,
    };
    // This still runs as root: the file is opened without following a symlink.
    let f = crate::config::open_serial_file(path).map_err(io)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io)
}

fn mount(src: Option<&Path>, dst: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    let s = src.map(cstr).transpose()?;
    let d = cstr(dst)?;
    let sp = s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: NUL-terminated strings (or null) that live across the call; no data.
    let rc = unsafe { libc::mount(sp, d.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    check(rc.into(), format!("mount {}", dst.display()))
}

fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<(), JailError> {
    mount(Some(src), dst, libc::MS_BIND)?;
    let mut flags =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None, dst, flags)
}

/// The per-VM directory becomes `/`; nothing else of the host stays reachable.
fn mounts(spec: &JailSpec) -> Result<(), JailError> {
    // Nothing mounted here propagates back to the host.
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
    let root = spec.root.as_path();
    bind(root, root, false)?;
    bind(&spec.image, &root.join(&super::IMAGE[1..]), true)?;
    if let Some(initrd) = &spec.initrd {
        bind(initrd, &root.join(&super::INITRD[1..]), true)?;
    }
    if let Some(serial) = &spec.serial {
        bind(serial, &root.join(&super::SERIAL[1..]), false)?;
    }
    if let Some(s) = &spec.snapshot {
        bind(&s.dir, &root.join(&super::SNAPSHOT[1..]), !s.writable)?;
    }
    let r = cstr(root)?;
    let dot = c".";
    // SAFETY: NUL-terminated paths; pivot_root(".", ".") stacks the old root on top of the
    // new one, and the lazy unmount then drops it.
    unsafe {
        check(libc::chdir(r.as_ptr()).into(), "chdir to the jail")?;
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()),
            "pivot_root",
        )?;
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH).into(),
            "unmounting the host root",
        )?;
        check(libc::chdir(c"/".as_ptr()).into(), "chdir /")
    }
}

/// Set both limits to `value`, or to the hard limit if that is lower (without root a
/// process can only lower it).
fn setrlimit(what: libc::__rlimit_resource_t, value: u64, name: &str) -> Result<(), JailError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for the duration of the call.
    let rc = unsafe { libc::getrlimit(what, &mut lim) };
    check(rc.into(), format!("RLIMIT_{name}"))?;
    let value = value.min(lim.rlim_max);
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit for the duration of the call.
    check(
        unsafe { libc::setrlimit(what, &lim) }.into(),
        format!("RLIMIT_{name}"),
    )
}

fn limits(spec: &JailSpec) -> Result<(), JailError> {
    let serial = if spec.serial.is_some() {
        spec.serial_max_bytes
    } else {
        0
    };
    let snapshot = match &spec.snapshot {
        Some(s) if s.writable => s.max_file_bytes,
        _ => 0,
    };
    let fsize = serial.max(snapshot);
    setrlimit(libc::RLIMIT_NOFILE, spec.max_open_files, "NOFILE")?;
    setrlimit(libc::RLIMIT_FSIZE, fsize, "FSIZE")?;
    setrlimit(libc::RLIMIT_CORE, 0, "CORE")?;
    setrlimit(libc::RLIMIT_NPROC, spec.max_processes, "NPROC")?;
    // Past FSIZE a write fails with EFBIG instead of killing the worker.
    // SAFETY: ignoring a signal has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    Ok(())
}

/// Empty the capability bounding set, then become `uid`/`gid` with no supplementary
/// groups; a non-root uid keeps no capability.
fn drop_privileges(spec: &JailSpec) -> Result<(), JailError> {
    for cap in 0..=63 {
        // SAFETY: plain prctl; EINVAL past the kernel's last capability is expected.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: plain credential syscalls without pointers (setgroups gets an empty list).
    unsafe {
        check(libc::setgroups(0, std::ptr::null()).into(), "setgroups")?;
        check(
            libc::setresgid(spec.gid, spec.gid, spec.gid).into(),
            "setresgid",
        )?;
        check(
            libc::setresuid(spec.uid, spec.uid, spec.uid).into(),
            "setresuid",
        )
    }
}
