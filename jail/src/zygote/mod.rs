//! The zygote (docs/security.md, "The zygote"): one `dust worker` per daemon, exec'd once,
//! which forks each worker as the daemon's child instead of the daemon exec'ing it. This
//! is the daemon's side ([`Zygote`]), started on first use; if it fails or dies, the spawn
//! falls back to an exec and the next one starts a new zygote. The zygote's side is
//! [`serve`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::process::{Child, Spawn};
use crate::JailSpec;

mod serve;
mod spare;
use serve::HANDLES;
pub use serve::{serve, Ahead, Run, ENV, NAME};
pub use spare::NAME as SPARE_NAME;

/// How long a fork may take before the zygote is given up on.
const ANSWER: Duration = Duration::from_secs(5);

/// A zygote, started on first use.
pub struct Zygote {
    exe: PathBuf,
    running: Mutex<Option<Running>>,
}

struct Running {
    sock: UnixDatagram,
    /// Killed and reaped when dropped.
    _child: Child,
    /// The spare the zygote announced and no request took yet (the daemon's child, killed
    /// and reaped when dropped; at most one).
    spare: Option<Held>,
    /// Whether its jailed workers take their jail from handles (`crate::handles`).
    handles: bool,
    /// The kind (namespaces or not) of the last worker asked for: the next spare's.
    last: Option<bool>,
    /// The kind of the spare a refill asked for and the zygote has not announced yet.
    pending: Option<bool>,
}

/// A spare held by the daemon: its process and its socket, on which its request goes.
struct Held {
    child: Child,
    sock: UnixDatagram,
    namespaces: bool,
}

/// What the zygote says: an answer to a request (a pid or `-errno`), or that it forked a
/// spare (adopted as it is read).
enum Said {
    Answer(i32),
    Spare,
}

impl Running {
    /// Read the zygote's next answer to a request, adopting the spares it announces on
    /// the way.
    fn answer(&mut self) -> io::Result<i32> {
        loop {
            if let Said::Answer(a) = self.read()? {
                return Ok(a);
            }
        }
    }

    /// Read one message of the zygote's (waiting at most [`ANSWER`]).
    fn read(&mut self) -> io::Result<Said> {
        let mut msg = [0u8; 12];
        let mut fds = [-1 as RawFd; 1];
        let mut iov = [libc::iovec {
            iov_base: msg.as_mut_ptr().cast(),
            iov_len: msg.len(),
        }];
        // SAFETY: the iovec points into `msg`, which any bytes may be written to.
        let (n, nfds) = unsafe { self.sock.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: a received fd is ours alone.
        let sock = (nfds == 1).then(|| unsafe { OwnedFd::from_raw_fd(fds[0]) });
        let word = |i: usize| i32::from_ne_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        match (n, sock) {
            (4, None) => Ok(Said::Answer(word(0))),
            (12, sock) if word(4) == spare::NOTICE => {
                self.pending = None;
                // Without a socket: the zygote could not fork it.
                if let Some(sock) = sock {
                    self.adopt(word(0), sock, word(8) != 0);
                }
                Ok(Said::Spare)
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn adopt(&mut self, pid: i32, sock: OwnedFd, namespaces: bool) {
        // Not inherited by anything the daemon execs.
        // SAFETY: F_SETFD on our own fd.
        unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        match Child::adopt(pid) {
            Ok(child) => {
                self.spare = Some(Held {
                    child,
                    sock: sock.into(),
                    namespaces,
                });
            }
            Err(e) => tracing::warn!("zygote: spare {pid}: {e}"),
        }
    }

    /// The spare for a worker of this kind: adopt what the zygote announced meanwhile, and
    /// if the spare a refill asked for is on its way, wait for it (as a request sent to
    /// the zygote would have).
    fn take_spare(&mut self, namespaces: bool) -> io::Result<Option<Held>> {
        loop {
            let on_its_way = self.pending == Some(namespaces);
            if !on_its_way && !readable(&self.sock) {
                break;
            }
            if let Said::Answer(_) = self.read()? {
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
        if let Some(s) = &mut self.spare {
            // One the zygote replaced, or that died, is reaped here.
            if s.child.exited() {
                self.spare = None;
            }
        }
        Ok(match &self.spare {
            Some(s) if s.namespaces == namespaces => self.spare.take(),
            _ => None,
        })
    }
}

/// Whether a message waits on `sock`.
fn readable(sock: &UnixDatagram) -> bool {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

impl Drop for Running {
    /// Let the zygote end on its own (end of file on its socket) so that a spare it is
    /// forking is announced first; adopt what it announced, so that every spare is reaped.
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        let _ = self.sock.set_read_timeout(Some(Duration::from_secs(1)));
        while self.read().is_ok() {}
    }
}

impl std::fmt::Debug for Zygote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zygote").field("exe", &self.exe).finish()
    }
}

fn seqpacket_pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh sockets we own; datagram calls work on seqpacket sockets.
    Ok(unsafe {
        (
            UnixDatagram::from_raw_fd(fds[0]),
            UnixDatagram::from_raw_fd(fds[1]),
        )
    })
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

impl Zygote {
    /// A zygote of `exe` (`dust`), not started yet.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            running: Mutex::new(None),
        }
    }

    fn start(&self) -> io::Result<Running> {
        let (ours, theirs) = seqpacket_pair()?;
        let args = ["worker".into()];
        let handles = crate::handles::supported();
        if !handles {
            tracing::info!(
                "zygote: jailed workers take the path-based jail (open_tree, move_mount, \
                 mount_setattr, chroot or CAP_SYS_CHROOT unavailable)"
            );
        }
        let (child, stderr) = Child::spawn(&Spawn {
            exe: &self.exe,
            args: &args,
            env: Some((ENV, if handles { HANDLES } else { "1" }.into())),
            control: theirs.as_raw_fd(),
            namespaces: false,
        })?;
        crate::exit::forward_stderr("zygote".into(), stderr);
        ours.set_read_timeout(Some(ANSWER))?;
        Ok(Running {
            sock: ours,
            _child: child,
            spare: None,
            handles,
            last: None,
            pending: None,
        })
    }

    /// Fork a worker jailed as `spec` with `control` as its fd 3; returns it and its stderr.
    pub fn spawn(&self, spec: Option<&JailSpec>, control: RawFd) -> io::Result<(Child, OwnedFd)> {
        let request = serde_json::to_vec(&spec).map_err(io::Error::other)?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_none() {
            *running = Some(self.start()?);
        }
        let Some(z) = running.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        // A jailed worker's mounts and cgroups as fds: a spare detached the host's mount
        // tree before its request came (docs/security.md, "The spare's jail").
        let handles = match spec {
            Some(s) if s.namespaces && z.handles => crate::handles::open(s)?,
            _ => Vec::new(),
        };
        let (err_r, err_w) = pipe()?;
        let mut fds = vec![control, err_w.as_raw_fd()];
        fds.extend(handles.iter().map(AsRawFd::as_raw_fd));
        let ns = spec.is_some_and(|s| s.namespaces);
        z.last = Some(ns);
        // Straight to the spare, if one of this kind waits; if it is gone meanwhile, it is
        // killed and reaped (dropped) and the zygote forks the worker.
        let spare = match z.take_spare(ns) {
            Ok(s) => s,
            Err(e) => {
                // A zygote that does not say what it should is dropped (killed, reaped).
                *running = None;
                return Err(e);
            }
        };
        if let Some(s) = spare {
            if s.sock.send_with_fds(&[&request[..]], &fds).is_ok() {
                return Ok((s.child, err_r));
            }
        }
        let answer = z
            .sock
            .send_with_fds(&[&request[..]], &fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
            .and_then(|_| z.answer());
        let pid = match answer {
            Ok(pid) if pid > 0 => pid,
            Ok(errno) => return Err(io::Error::from_raw_os_error(-errno)),
            Err(e) => {
                // A zygote that does not answer is dropped (killed, reaped).
                *running = None;
                return Err(e);
            }
        };
        drop(running);
        Ok((Child::adopt(pid)?, err_r))
    }

    /// The last worker this zygote forked has answered its first command: have the
    /// zygote fork the next spare now, of that worker's kind, its VM's RAM made ahead if
    /// `mib` is given (the last VM's size; `None` for a restore, which maps its own).
    /// Best effort; the daemon takes it with the next request. A no-op while no zygote
    /// runs, or while a spare waits or is on its way.
    pub fn refill(&self, mib: Option<u32>) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(z) = running.as_mut() else {
            return;
        };
        if let (None, None, Some(ns)) = (&z.spare, z.pending, z.last) {
            let mut word = serve::REFILL.to_vec();
            word.push(u8::from(ns));
            word.extend_from_slice(&mib.unwrap_or(0).to_ne_bytes());
            if z.sock.send(&word).is_ok() {
                z.pending = Some(ns);
            }
        }
    }

    /// Stop the zygote (the daemon is shutting down).
    pub fn stop(&self) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
