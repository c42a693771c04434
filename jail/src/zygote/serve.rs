//! The zygote itself (`dust worker` with [`ENV`] set): serve the daemon's fork requests.
//! An exec of the `dust` binary and its start-up (dynamic loader, the C library's CPU
//! probing, each `cpuid` an exit on a nested host, the seccomp filters compiled, the CPUID
//! table read) cost more than a millisecond; a fork of this small, single-threaded process
//! costs a fraction of it.
//!
//! The daemon sends one request per worker on the zygote's socket (fd 3, a seqpacket
//! socket): the [`JailSpec`] (or none) as JSON, with the worker's control socket and stderr
//! as SCM_RIGHTS. The zygote clones with `CLONE_PARENT` (and the namespace flags when the
//! spec asks for them), so the worker is the daemon's child, not the zygote's: the daemon
//! waits for it, kills it, sees its exit status. It answers with the worker's pid (or
//! `-errno`). The forked worker then does what an exec'd one does: the jail, the
//! parent-death signal, the worker protocol.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::spare::Spare;
use crate::{JailSpec, CONTROL_FD};

/// The environment variable that makes `dust worker` a zygote.
pub const ENV: &str = "DUST_ZYGOTE";

/// [`ENV`]'s value when jailed workers take their jail from handles and spares detach the
/// host's mount tree ahead (`crate::handles`); any other value: the path-based jail.
pub(super) const HANDLES: &str = "handles";

/// The zygote's process name (`/proc/<pid>/comm`, what `ps` shows); its workers are `dust`.
pub const NAME: &std::ffi::CStr = c"dust-zygote";

pub(super) fn set_name(name: &std::ffi::CStr) {
    // SAFETY: a NUL-terminated name that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

/// The largest request (a JailSpec as JSON).
const MAX_REQUEST: usize = 64 << 10;

/// The daemon's word that the last worker it asked for has answered its first command
/// (built, restored or failed), followed by one byte, the kind of the next spare (1: with
/// namespaces), and the guest RAM in MiB that spare's VM should have made ahead (a
/// native-endian u32, 0: none): the zygote forks that spare then, not while that worker is
/// still building (docs/security.md, "The spare"). No answer but the notice.
pub(super) const REFILL: &[u8] = b"refill";

/// The length of a refill word.
pub(super) const REFILL_LEN: usize = REFILL.len() + 5;

/// What a forked worker runs: the jail (if any), then the protocol; returns its exit code.
pub type Run = fn(Option<&JailSpec>) -> u8;

/// What a spare does ahead of its request (the config-independent part of the worker's
/// work: `vmm::prepare_ahead`, its KVM VM, with guest RAM of the MiB given if any);
/// returns the fds it opened (-1: none), which
/// the worker keeps.
pub type Ahead = fn(Option<u32>) -> [RawFd; 2];

/// Serve fork requests on fd 3 until the daemon hangs up. Must be single-threaded. What
/// every worker needs from the host is opened ahead of the forks by the caller (/dev/kvm,
/// the CPUID table); `keep` (/dev/kvm, or -1) is the one fd besides 0-4 a forked worker
/// keeps; `ahead` is what each spare does before its request comes.
pub fn serve(keep: RawFd, run: Run, ahead: Ahead) -> u8 {
    set_name(NAME);
    // SAFETY: fd 3 is the socket the daemon gave us; nothing else owns it.
    let sock = unsafe { UnixDatagram::from_raw_fd(CONTROL_FD) };
    let mut buf = vec![0u8; MAX_REQUEST];
    let handles = std::env::var(ENV).is_ok_and(|v| v == HANDLES);
    let taken = |spec: Option<&JailSpec>| match spec {
        Some(s) if handles => crate::handles::count(s),
        _ => 0,
    };
    loop {
        let Some((n, fds)) = receive(&sock, &mut buf) else {
            return 0;
        };
        if fds.is_empty() && n == REFILL_LEN && buf.starts_with(REFILL) {
            // The next worker's process, namespaces and all, made now: off its build's
            // path, and after the last build (a fork right after a hand-off ran ahead of
            // the worker just handed its request, on the same CPU). The daemon takes it.
            let ns = buf[REFILL.len()] != 0;
            let at = REFILL.len() + 1;
            let mib = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let hint = (mib > 0).then_some(mib);
            let forked = Spare::fork((ns, handles), hint, keep, (run, ahead), &mut buf);
            if Spare::announce(forked, ns, &sock).is_err() {
                return 0;
            }
            continue;
        }
        let spec = serde_json::from_slice::<Option<JailSpec>>(&buf[..n]);
        let answer = match spec {
            // The control socket, stderr, and the jail's handles.
            Ok(spec) if fds.len() == 2 + taken(spec.as_ref()) => {
                fork(spec.as_ref(), &fds, keep, run)
            }
            _ => -libc::EINVAL,
        };
        for fd in fds {
            // SAFETY: our copies of the received fds (the worker has its own).
            unsafe { libc::close(fd) };
        }
        if sock.send(&answer.to_ne_bytes()).is_err() {
            return 0;
        }
    }
}

/// The most fds a request carries: control socket, stderr, the jail's handles.
pub(super) const MAX_FDS: usize = 2 + crate::handles::MAX;

/// One request: its length and the fds that came with it (at most [`MAX_FDS`]); `None`
/// once the daemon hangs up.
fn receive(sock: &UnixDatagram, buf: &mut [u8]) -> Option<(usize, Vec<RawFd>)> {
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points into `buf`, which any bytes may be written to.
    match unsafe { sock.recv_with_fds(&mut iov, &mut fds) } {
        Ok((0, _)) | Err(_) => None,
        Ok((n, nfds)) => Some((n, fds[..nfds].to_vec())),
    }
}

pub(super) fn namespaces(spec: Option<&JailSpec>) -> bool {
    spec.is_some_and(|s| s.namespaces)
}

pub(super) fn clone_flags(namespaces: bool) -> u64 {
    let mut flags = libc::CLONE_PARENT as u64;
    if namespaces {
        flags |= (libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS) as u64;
    }
    flags
}

/// clone3 with `flags` and nothing else: returns the pid (0 in the child) or `-errno`.
pub(super) fn clone(flags: u64) -> i32 {
    // SAFETY: clone_args is plain data; zero is "unset" (with CLONE_PARENT the exit signal
    // must be 0: the child ends with the zygote's, SIGCHLD, to the daemon).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    // SAFETY: a fork of this single-threaded process (no CLONE_VM): the child may run any
    // code.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if rc < 0 {
        return -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
    }
    i32::try_from(rc).unwrap_or(-libc::EOVERFLOW)
}

/// Fork one worker (the daemon's child); returns its pid or `-errno`.
fn fork(spec: Option<&JailSpec>, fds: &[RawFd], keep: RawFd, run: Run) -> i32 {
    let pid = clone(clone_flags(namespaces(spec)));
    if pid == 0 {
        child(spec, fds, [keep, -1, -1], run)
    }
    pid
}

/// In the forked worker: its fds in place (the zygote's socket at fd 3 is replaced by the
/// control socket), then the same path as an exec'd worker. `fds`: control socket, stderr,
/// the jail's handles (checked against the spec by the zygote); `keep`: the fds besides
/// 0-4 it keeps (/dev/kvm, a VM made ahead; -1: none).
pub(super) fn child(spec: Option<&JailSpec>, fds: &[RawFd], keep: [RawFd; 3], run: Run) -> ! {
    let (control, stderr) = (fds[0], fds[1]);
    // SAFETY: fd calls on fds valid in this process; prctl/poll as in `die_with_daemon`.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::dup2(control, CONTROL_FD) < 0 || libc::dup2(stderr, 2) < 0 {
            libc::_exit(i32::from(dust_abi::status::VMM_ERROR));
        }
        let _ = (control, stderr);
    }
    // Nothing but fds 0-4, `keep` and the handles (not the other received fds, nor
    // anything else).
    let mut kept = keep.to_vec();
    kept.extend_from_slice(&fds[2..]);
    close_others(&mut kept);
    if let Some(h) = spec.and_then(|s| crate::handles::Handles::from_fds(s, &fds[2..])) {
        h.keep();
    }
    set_name(c"dust");
    crate::die_with_daemon_keep_fd();
    let code = run(spec);
    // SAFETY: ends the worker; nothing of the zygote's loop runs in it.
    unsafe { libc::_exit(i32::from(code)) }
}

/// Close every fd from 5 up but those in `keep` (-1 and fds below 5 ignored).
pub(super) fn close_others(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut from: RawFd = 5;
    for &mut k in keep {
        if k < from {
            continue;
        }
        if k > from {
            // SAFETY: closes fds of this process that nothing in it uses any more.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}
