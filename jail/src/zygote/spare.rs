//! The spare: the next worker's process, forked by the zygote ahead of the request for it.
//!
//! Forking a worker with its namespaces (the new network namespace above all, and the copy
//! of the mount namespace) was the dearest step left between a spawn request and the jail.
//! So once the worker it last forked has answered its first command (the daemon says so:
//! [`super::Zygote::refill`]), the zygote forks the next worker, with the
//! same clone flags (`CLONE_PARENT` and the namespaces: the daemon's child, pid 1 of a pid
//! namespace of its own, a network namespace nobody else ever uses), makes its mount tree
//! private, and leaves it waiting on a socket of its own. The daemon sends the next request
//! of that kind to it (the bytes and fds it would have sent the zygote) and it goes on
//! exactly as a freshly forked worker ([`super::serve`]): the jail, the parent-death
//! signal, the worker protocol.
//!
//! A spare is one worker: it takes one request and becomes that VM's process, or it exits
//! when the daemon lets it go (its socket reads end-of-file) or dies (the parent-death
//! signal). It never reads anything but its one request. The daemon is told its pid as
//! soon as it exists and is handed its socket ([`NOTICE`]): it waits for it like for any
//! worker and sends it the request itself, the zygote out of that path.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::serve::{child, clone, clone_flags, close_others, set_name, Ahead, Run};
use crate::{JailSpec, CONTROL_FD};

/// The tag of a spare's notice to the daemon: `[pid, NOTICE, namespaces]` as three
/// native-endian i32, with the zygote's end of the spare's socket (an answer to a request
/// is one i32).
pub const NOTICE: i32 = 0x5350_4152;

/// The name a spare shows (`/proc/<pid>/comm`) until it is handed a request.
pub const NAME: &std::ffi::CStr = c"dust-spare";

/// A forked spare, seen from the zygote until it is announced.
pub(super) struct Spare {
    pid: i32,
    /// The zygote's end of the spare's socket, handed to the daemon with the notice.
    sock: UnixDatagram,
}

impl Spare {
    /// Fork a spare for a worker with or without namespaces; `None` if the fork failed (the
    /// next request is then forked as it comes). `buf` is the zygote's request buffer,
    /// which the spare reads its request into (its own copy: no pages written ahead).
    /// `kind`: whether it gets namespaces, and whether it then detaches the host's mount
    /// tree ahead (its request brings handles).
    pub fn fork(
        kind: (bool, bool),
        hint: Option<u32>,
        keep: RawFd,
        run: (Run, Ahead),
        buf: &mut [u8],
    ) -> Option<Self> {
        let (namespaces, handles) = kind;
        let (ours, theirs) = super::seqpacket_pair().ok()?;
        let pid = clone(clone_flags(namespaces));
        if pid == 0 {
            drop(ours);
            wait(
                theirs.as_raw_fd(),
                (namespaces, handles),
                hint,
                keep,
                run,
                buf,
            )
        }
        drop(theirs);
        (pid > 0).then_some(Spare { pid, sock: ours })
    }

    /// Tell the daemon on `daemon` (the zygote's socket) the pid and kind of the spare it
    /// asked for, and hand it the spare's socket: the daemon sends the request straight to
    /// the spare, and the zygote keeps nothing of it. With no spare (the fork failed) the
    /// notice says so (pid 0, no socket), and the daemon stops waiting for one.
    pub fn announce(
        spare: Option<Self>,
        namespaces: bool,
        daemon: &UnixDatagram,
    ) -> std::io::Result<()> {
        let pid = spare.as_ref().map_or(0, |s| s.pid);
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&pid.to_ne_bytes());
        n[4..8].copy_from_slice(&NOTICE.to_ne_bytes());
        n[8..].copy_from_slice(&i32::from(namespaces).to_ne_bytes());
        let sent = match &spare {
            Some(s) => daemon.send_with_fds(&[&n[..]], &[s.sock.as_raw_fd()]),
            None => daemon.send_with_fds(&[&n[..]], &[]),
        };
        sent.map(|_| ())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// In the spare: take the socket as fd 3, shed every other fd but 0-2, 4 (the daemon's
/// pidfd) and `keep`, make the mount tree private, do the `Ahead` work (its KVM VM); then
/// wait for the one request.
fn wait(
    sock: RawFd,
    kind: (bool, bool),
    hint: Option<u32>,
    keep: RawFd,
    run: (Run, Ahead),
    buf: &mut [u8],
) -> ! {
    let (namespaces, handles) = kind;
    let (run, ahead) = run;
    // SAFETY: fd calls on fds valid in this process; prctl as in `die_with_daemon`.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::dup2(sock, CONTROL_FD) < 0 {
            libc::_exit(i32::from(dust_abi::status::VMM_ERROR));
        }
    }
    close_others(&mut [keep]);
    set_name(NAME);
    crate::die_with_daemon_keep_fd();
    // The jail's dearest step, the host's mount tree detached, done while it waits (its
    // request then brings the rest as fds: docs/security.md, "The spare's jail"). If it
    // fails, the request is refused by the jail, which reports the step.
    if namespaces && handles {
        let _ = crate::handles::prejail();
    } else if namespaces {
        crate::enter::make_root_private();
    }
    // Its jail's capability step too (a failure is left to the jail, which reports it).
    if namespaces {
        let _ = crate::enter::empty_bounding_set();
    }
    // Before the jail, as the worker's own /dev/kvm fd is: the same process and the same
    // fds its build would have made after the request (docs/security.md). The spare is
    // forked once the previous worker has built (the daemon's refill), so this takes no
    // CPU from that build; a spare whose request is already there leaves the work to its
    // own build.
    let made = if idle(CONTROL_FD) {
        ahead(hint)
    } else {
        [-1, -1]
    };
    // SAFETY: fd 3 is the spare's socket, dup'ed above; nothing else owns it.
    let sock = unsafe { UnixDatagram::from_raw_fd(CONTROL_FD) };
    let mut fds = [-1 as RawFd; super::serve::MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points into `buf`, which any bytes may be written to.
    let got = unsafe { sock.recv_with_fds(&mut iov, &mut fds) };
    let (spec, nfds) = match got {
        Ok((n, k)) if n > 0 && k >= 2 => (
            serde_json::from_slice::<Option<JailSpec>>(&buf[..n]).ok(),
            k,
        ),
        // The daemon let it go (end of file) or sent nothing usable: the spare ends.
        _ => (None, 0),
    };
    let Some(spec) = spec else {
        // SAFETY: ends the spare; nothing else runs in it.
        unsafe { libc::_exit(i32::from(dust_abi::status::KILLED)) }
    };
    // `child` puts the control socket in place of this one at fd 3.
    std::mem::forget(sock);
    child(spec.as_ref(), &fds[..nfds], [keep, made[0], made[1]], run)
}

/// Whether nothing came on `sock` yet (no request, no end-of-file).
fn idle(sock: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd: sock,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    unsafe { libc::poll(&mut p, 1, 0) == 0 }
}
