//! Entering the jail: the steps in order, each a few syscalls.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{JailError, JailSpec};

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

/// Enter the jail `spec` describes. Must run while the process has one thread, after
/// whatever it needs from the host's filesystem is open (`/dev/kvm`: the caller's). With
/// namespaces the daemon started this process in them already (pid 1 of a new pid
/// namespace, see the crate docs); this makes the rest of the jail.
pub fn enter(spec: &JailSpec) -> Result<(), JailError> {
    // SAFETY: getpid has no preconditions.
    if spec.namespaces && unsafe { libc::getpid() } != 1 {
        return Err(JailError::Step {
            step: "not started in a pid namespace of its own".into(),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    if spec.namespaces {
        if let Some(handles) = crate::handles::take() {
            handles.attach(spec).map_err(|source| JailError::Step {
                step: "entering from the daemon's handles".into(),
                source,
            })?;
            return finish(spec);
        }
    }
    for cg in &spec.cgroups {
        // "0": the writing process, whatever its pid looks like from here.
        std::fs::write(join_file(cg), "0").map_err(|source| JailError::Step {
            step: format!("joining cgroup {}", cg.display()),
            source,
        })?;
    }
    if spec.namespaces {
        if let Some(serial) = &spec.serial {
            prepare_serial(serial, spec.uid, spec.gid)?;
        }
        mounts(spec)?;
    }
    finish(spec)
}

/// The file a worker writes "0" to to join the cgroup `cg`: on cgroup v1 `tasks` (the
/// writing thread, which is the whole process here): moving a whole thread group through
/// `cgroup.procs` write-locks every fork on the host and waits for an RCU grace period
/// first (~8 ms here); moving the writing thread alone takes no such lock. On v2,
/// `cgroup.procs`.
pub(crate) fn join_file(cg: &Path) -> std::path::PathBuf {
    let tasks = cg.join("tasks");
    if tasks.exists() {
        tasks
    } else {
        cg.join("cgroup.procs")
    }
}

/// The steps after the mounts: rlimits, no capabilities, an unprivileged uid/gid,
/// `no_new_privs`.
fn finish(spec: &JailSpec) -> Result<(), JailError> {
    limits(spec)?;
    if spec.namespaces {
        drop_privileges(spec)?;
    }
    // SAFETY: sets a flag on this process; no pointers.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into(),
        "no_new_privs",
    )
}

/// Die with the daemon: PR_SET_PDEATHSIG again (a uid change clears it), then make sure
/// the daemon did not die before that (its pidfd, [`super::DAEMON_FD`], is readable once
/// it is gone); then close that fd. A no-op for the fd when the process was not started by
/// a daemon.
pub fn die_with_daemon() {
    arm_and_check(true);
}

/// [`die_with_daemon`], keeping the daemon's pidfd open (a forked worker checks again after
/// its jail).
pub(super) fn die_with_daemon_keep_fd() {
    arm_and_check(false);
}

fn arm_and_check(close: bool) {
    let fd = super::DAEMON_FD;
    // SAFETY: plain prctl/fcntl/poll/close calls on our own fd and one valid pollfd.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::fcntl(fd, libc::F_GETFD) < 0 {
            return;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let gone = libc::poll(&mut pfd, 1, 0) != 0;
        if close {
            libc::close(fd);
        }
        if gone {
            libc::_exit(i32::from(dust_abi::status::KILLED));
        }
    }
}

fn prepare_serial(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    ready_serial(path, uid, gid).map_err(|source| JailError::Step {
        step: format!("serial file {}", path.display()),
        source,
    })
}

/// Ready a VM's serial file before it is mounted in its jail: created if missing (never
/// through a symlink, only a regular file: [`open_serial_file`]) and owned by the jail's
/// uid. Runs as root: the path-based jail's worker, or the daemon for a worker taking its
/// jail from handles.
pub(crate) fn ready_serial(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let f = open_serial_file(path)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
}

/// Make `dir` (a mount point) this process's root and detach the old root's whole tree:
/// `pivot_root(".", ".")` stacks the old root on the new one, and the lazy unmount drops
/// it (an expedited RCU grace period: the step a spare takes ahead). Returns the step that
/// failed with its error.
pub(crate) fn pivot_into(dir: &std::ffi::CStr) -> Result<(), (&'static str, std::io::Error)> {
    let dot = c".";
    let step = |rc: libc::c_long, what: &'static str| {
        if rc < 0 {
            Err((what, std::io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    // SAFETY: NUL-terminated paths; no pointers are kept.
    unsafe {
        step(libc::chdir(dir.as_ptr()).into(), "chdir to the new root")?;
        step(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()),
            "pivot_root",
        )?;
        step(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH).into(),
            "unmounting the host root",
        )?;
        step(libc::chdir(c"/".as_ptr()).into(), "chdir /")
    }
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

/// Set once this process (a zygote's spare, in a mount namespace of its own) has made its
/// mount tree private ahead of its jail.
static ROOT_PRIVATE: AtomicBool = AtomicBool::new(false);

/// Make every mount of this process's mount namespace private, ahead of [`enter`] (which then
/// skips that step). Only for a process already in a mount namespace of its own; a failure
/// leaves the step to `enter`, which reports it.
pub(crate) fn make_root_private() {
    if mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE).is_ok() {
        ROOT_PRIVATE.store(true, Ordering::Relaxed);
    }
}

/// The per-VM directory becomes `/`; nothing else of the host stays reachable.
fn mounts(spec: &JailSpec) -> Result<(), JailError> {
    // Nothing mounted here propagates back to the host.
    if !ROOT_PRIVATE.load(Ordering::Relaxed) {
        mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
    }
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
    pivot_into(&cstr(root)?).map_err(|(step, source)| JailError::Step {
        step: step.into(),
        source,
    })
}

/// The type of `setrlimit`'s resource argument: glibc has its own, musl an `int`.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// Set both limits to `value`, or to the hard limit if that is lower (without root a
/// process can only lower it).
fn setrlimit(what: Resource, value: u64, name: &str) -> Result<(), JailError> {
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

/// Set once this process's capability bounding set is empty.
static BOUNDING_SET_EMPTY: AtomicBool = AtomicBool::new(false);

/// Empty the capability bounding set (one `prctl` per capability, ~40 of them). It takes no
/// capability from the running process (its effective set is unchanged until its uid
/// changes), only what an exec or `capset` could regain: so a spare in namespaces does it
/// while it waits, and its jail then skips it.
pub(crate) fn empty_bounding_set() -> Result<(), JailError> {
    if BOUNDING_SET_EMPTY.load(Ordering::Relaxed) {
        return Ok(());
    }
    for cap in 0..=63 {
        // SAFETY: plain prctl; EINVAL past the kernel's last capability ends the loop.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = failed(format!("dropping capability {cap}"));
            match &e {
                JailError::Step { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
                    break
                }
                _ => return Err(e),
            }
        }
    }
    BOUNDING_SET_EMPTY.store(true, Ordering::Relaxed);
    Ok(())
}

/// Empty the capability bounding set, then become `uid`/`gid` with no supplementary
/// groups; a non-root uid keeps no capability.
fn drop_privileges(spec: &JailSpec) -> Result<(), JailError> {
    empty_bounding_set()?;
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

/// Open a serial file (creating it, mode 0600) for appending, never truncating (the VMs of a
/// service share it) and never through a symlink: one in its place is refused, as is anything
/// but a regular file. Both the daemon (checking a service's file) and a jailed worker (still
/// root when it opens its file) come through here.
pub fn open_serial_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::other("is a symbolic link"),
            _ => e,
        })?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("is not a regular file"));
    }
    Ok(f)
}
