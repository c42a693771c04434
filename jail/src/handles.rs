//! A zygote-forked worker's jail from handles (docs/security.md, "The spare's jail").
//!
//! The dearest step of the path-based jail ([`crate::enter`]) is detaching the host's
//! mount tree after `pivot_root`: an unmount waits for an RCU grace period, about half a
//! millisecond of each shell build here. A spare does that ahead of its request
//! ([`prejail`]): in its own mount namespace it pivots into an empty tmpfs and detaches
//! the host's tree while it waits. Its request then cannot name host paths any more, so the
//! daemon opens what the jail needs and sends it along as file descriptors ([`open`]):
//! a detached copy (`open_tree(OPEN_TREE_CLONE)`) of the per-VM directory and of each file
//! or directory mounted in it, and the cgroups' `tasks` files. The worker attaches those
//! copies below the tmpfs ([`Handles::attach`]), makes the per-VM directory its root and
//! goes on as before (rlimits, no capabilities, an unprivileged uid).
//!
//! Outside the worker's root there is only the empty tmpfs: the host's tree is gone from
//! its mount namespace, as after `pivot_root`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::JailSpec;

/// Where the per-VM directory is attached below the tmpfs root.
const VM: &CStr = c"/vm";

/// The most handles a request carries: the per-VM directory, image, initrd, serial file,
/// snapshot directory, and the cgroups.
pub(crate) const MAX: usize = 5 + MAX_CGROUPS;

/// The most cgroups a worker joins.
const MAX_CGROUPS: usize = 8;

/// Whether this process pivoted into its tmpfs already ([`prejail`]).
static PREJAILED: AtomicBool = AtomicBool::new(false);

/// The handles a forked worker received, taken by its jail.
static RECEIVED: Mutex<Option<Handles>> = Mutex::new(None);

fn last_error(step: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{step}: {e}"))
}

fn check(rc: libc::c_long, step: &str) -> io::Result<()> {
    if rc < 0 {
        Err(last_error(step))
    } else {
        Ok(())
    }
}

/// A detached copy of the mount at `path` (following symlinks, as a bind mount does).
fn clone_tree(path: &std::path::Path) -> io::Result<OwnedFd> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: a NUL-terminated path that outlives the call; the fd returned is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    check(fd, &format!("open_tree {}", path.display()))?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether this process (the daemon, before it starts its zygote) and the workers it forks
/// can take the jail from handles: the kernel has the calls (5.12 or later), no seccomp
/// filter or unit file refuses them, and it holds `CAP_SYS_CHROOT` (a unit file written for
/// an older dust may not grant it). Each call is made with arguments it refuses before it
/// does anything. If not, spares keep the host's tree and workers take the path-based jail.
pub(crate) fn supported() -> bool {
    let refused = |rc: libc::c_long| {
        rc < 0
            && matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOSYS | libc::EPERM)
            )
    };
    // SAFETY: each call gets an invalid fd or an empty path and fails before any effect.
    let calls = unsafe {
        [
            libc::syscall(libc::SYS_open_tree, -1, c"".as_ptr(), 0),
            libc::syscall(libc::SYS_move_mount, -1, c"".as_ptr(), -1, c"".as_ptr(), 0),
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                0,
                std::ptr::null::<libc::mount_attr>(),
                0,
            ),
            libc::syscall(libc::SYS_chroot, c"".as_ptr()),
        ]
    };
    !calls.into_iter().any(refused) && has_chroot_capability()
}

/// Whether `CAP_SYS_CHROOT` is in this process's effective set.
fn has_chroot_capability() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_CHROOT: u32 = 18;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a v3 header and room for its two data words.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::addr_of_mut!(header),
            data.as_mut_ptr(),
        )
    };
    rc == 0 && data[0].effective & (1 << CAP_SYS_CHROOT) != 0
}

/// The daemon's side: what a worker jailed as `spec` needs from the host, in the order
/// [`Handles::from_fds`] takes them. Also readies the serial file as the path-based jail
/// does (created if need be, never through a symlink, owned by the worker's uid).
pub(crate) fn open(spec: &JailSpec) -> io::Result<Vec<OwnedFd>> {
    if spec.cgroups.len() > MAX_CGROUPS {
        return Err(io::Error::other(format!(
            "{} cgroups (at most {MAX_CGROUPS})",
            spec.cgroups.len()
        )));
    }
    let mut fds = vec![clone_tree(&spec.root)?, clone_tree(&spec.image)?];
    if let Some(initrd) = &spec.initrd {
        fds.push(clone_tree(initrd)?);
    }
    if let Some(serial) = &spec.serial {
        crate::enter::ready_serial(serial, spec.uid, spec.gid)?;
        fds.push(clone_tree(serial)?);
    }
    if let Some(s) = &spec.snapshot {
        fds.push(clone_tree(&s.dir)?);
    }
    for cg in &spec.cgroups {
        let file = crate::enter::join_file(cg);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
        fds.push(f.into());
    }
    Ok(fds)
}

/// How many handles a worker jailed as `spec` takes (0: none, a worker without
/// namespaces joins its cgroups by path).
pub(crate) fn count(spec: &JailSpec) -> usize {
    if !spec.namespaces {
        return 0;
    }
    2 + usize::from(spec.initrd.is_some())
        + usize::from(spec.serial.is_some())
        + usize::from(spec.snapshot.is_some())
        + spec.cgroups.len()
}

/// A worker's handles (each an fd of this process).
#[derive(Debug)]
pub(crate) struct Handles {
    root: OwnedFd,
    image: OwnedFd,
    initrd: Option<OwnedFd>,
    serial: Option<OwnedFd>,
    snapshot: Option<OwnedFd>,
    cgroups: Vec<OwnedFd>,
}

impl Handles {
    /// Take `fds` (received with `spec`) as its handles; `None` (and every fd closed) if
    /// their number does not match the spec.
    pub(crate) fn from_fds(spec: &JailSpec, fds: &[RawFd]) -> Option<Self> {
        // SAFETY: the caller hands over these received fds; each is owned once, here
        // (and closed on return if they do not fit the spec).
        let owned: Vec<OwnedFd> = fds
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if owned.len() != count(spec) {
            return None;
        }
        let mut owned = owned.into_iter();
        let mut next = || owned.next();
        Some(Self {
            root: next()?,
            image: next()?,
            initrd: spec.initrd.as_ref().and_then(|_| next()),
            serial: spec.serial.as_ref().and_then(|_| next()),
            snapshot: spec.snapshot.as_ref().and_then(|_| next()),
            cgroups: owned.collect(),
        })
    }

    /// Keep them for this process's jail ([`take`]).
    pub(crate) fn keep(self) {
        *RECEIVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(self);
    }

    /// Join the cgroups, attach the copies below the tmpfs (pivoting into it first if the
    /// spare did not) and make the per-VM directory this process's root.
    pub(crate) fn attach(self, spec: &JailSpec) -> io::Result<()> {
        for cg in &self.cgroups {
            // "0": the writing thread (see `enter`).
            // SAFETY: writes two bytes from a static buffer to our fd.
            let n = unsafe { libc::write(cg.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            check(n as libc::c_long, "joining a cgroup")?;
        }
        if !PREJAILED.load(Ordering::Relaxed) {
            prejail()?;
        }
        let (ro, rw) = (libc::MOUNT_ATTR_RDONLY, 0);
        attach_at(&self.root, VM, rw)?;
        attach_at(&self.image, &inside(crate::IMAGE), ro)?;
        if let Some(fd) = &self.initrd {
            attach_at(fd, &inside(crate::INITRD), ro)?;
        }
        if let Some(fd) = &self.serial {
            attach_at(fd, &inside(crate::SERIAL), rw)?;
        }
        if let (Some(fd), Some(s)) = (&self.snapshot, &spec.snapshot) {
            attach_at(
                fd,
                &inside(crate::SNAPSHOT),
                if s.writable { rw } else { ro },
            )?;
        }
        // SAFETY: NUL-terminated paths. Outside this root is only the tmpfs (no host
        // mount), and the worker drops CAP_SYS_CHROOT with every other capability next.
        unsafe {
            check(libc::chdir(VM.as_ptr()).into(), "chdir to the jail")?;
            check(libc::chroot(c".".as_ptr()).into(), "chroot")?;
            check(libc::chdir(c"/".as_ptr()).into(), "chdir /")
        }
    }
}

/// The handles this process received, if any (once).
pub(crate) fn take() -> Option<Handles> {
    RECEIVED.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// `/vm` + `path` (an absolute path inside the jail).
fn inside(path: &str) -> std::ffi::CString {
    let mut p = VM.to_bytes().to_vec();
    p.extend_from_slice(path.as_bytes());
    std::ffi::CString::new(p).unwrap_or_default()
}

/// Set `attr` (plus nosuid, nodev, noexec) on the detached mount `fd` and attach it at
/// `target`.
fn attach_at(fd: &OwnedFd, target: &CStr, attr: u64) -> io::Result<()> {
    // SAFETY: mount_attr is plain integers; all zero is "change nothing".
    let mut set: libc::mount_attr = unsafe { std::mem::zeroed() };
    set.attr_set =
        attr | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    let what = target.to_string_lossy();
    // SAFETY: `set` is a valid mount_attr for the call; empty path with AT_EMPTY_PATH
    // names the fd itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::addr_of_mut!(set),
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(rc, &format!("mount attributes for {what}"))?;
    // SAFETY: as above; `target` is NUL-terminated.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(rc, &format!("attaching {what}"))
}

/// In a process with a mount namespace of its own: make its mounts private, pivot into an
/// empty tmpfs (mounted over `/proc`, which every host has) and detach the host's tree, then
/// make the mount point for the per-VM directory. A spare does this while it waits.
pub(crate) fn prejail() -> io::Result<()> {
    crate::enter::make_root_private();
    // SAFETY: NUL-terminated strings and options that outlive the calls.
    unsafe {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let opts = c"mode=0755,size=16k,nr_inodes=16";
        check(
            libc::mount(
                c"dust".as_ptr(),
                c"/proc".as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                opts.as_ptr().cast(),
            )
            .into(),
            "mounting the jail's tmpfs",
        )?;
        crate::enter::pivot_into(c"/proc")
            .map_err(|(step, e)| io::Error::new(e.kind(), format!("{step}: {e}")))?;
        check(libc::mkdir(VM.as_ptr(), 0o755).into(), "mkdir /vm")?;
    }
    PREJAILED.store(true, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(namespaces: bool, cgroups: usize) -> JailSpec {
        JailSpec {
            root: PathBuf::from("/nonexistent/root"),
            namespaces,
            uid: 65534,
            gid: 65534,
            image: PathBuf::from("/nonexistent/image"),
            initrd: None,
            serial: Some(PathBuf::from("/nonexistent/serial")),
            cgroups: (0..cgroups)
                .map(|i| PathBuf::from(format!("/cg{i}")))
                .collect(),
            max_open_files: 1024,
            max_processes: 1024,
            serial_max_bytes: 0,
            snapshot: None,
        }
    }

    /// `n` pipes: (read ends, non-blocking; write ends, to hand over as handles).
    fn pipes(n: usize) -> (Vec<OwnedFd>, Vec<RawFd>) {
        (0..n)
            .map(|_| {
                let mut p = [0; 2];
                // SAFETY: `p` has room for two fds.
                assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
                // SAFETY: a fresh fd owned here.
                (unsafe { OwnedFd::from_raw_fd(p[0]) }, p[1])
            })
            .unzip()
    }

    /// Whether every write end of these pipes is closed (a read sees end of file, not
    /// EAGAIN): no race with other tests reusing fd numbers.
    fn all_closed(reads: &[OwnedFd]) -> bool {
        reads.iter().all(|r| {
            let mut b = [0u8; 1];
            // SAFETY: reads at most one byte into `b`.
            unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 0 }
        })
    }

    #[test]
    fn a_worker_without_namespaces_takes_no_handles() {
        assert_eq!(count(&spec(false, 2)), 0);
        // Root, image, serial file, two cgroups.
        assert_eq!(count(&spec(true, 2)), 5);
    }

    #[test]
    fn handles_that_do_not_fit_the_spec_are_refused_and_closed() {
        let s = spec(true, 1);
        let (reads, fds) = pipes(3);
        assert!(Handles::from_fds(&s, &fds).is_none());
        assert!(all_closed(&reads), "fds left open");
        let (reads, fds) = pipes(4);
        let h = Handles::from_fds(&s, &fds).expect("four handles fit");
        assert!(h.serial.is_some() && h.initrd.is_none() && h.cgroups.len() == 1);
        assert!(!all_closed(&reads));
        drop(h);
        assert!(all_closed(&reads), "fds left open");
    }

    #[test]
    fn the_daemon_refuses_a_spec_whose_paths_are_missing() {
        let e = open(&spec(true, 0)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/root"), "{e}");
    }
}
