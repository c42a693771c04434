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
    /// The spares the zygote announced and no request took yet (the daemon's children,
    /// killed and reaped when dropped).
    spares: Vec<Child>,
    /// Whether its jailed workers take their jail from handles (`crate::handles`).
    handles: bool,
}

impl Running {
    /// Read the zygote's next answer to a request, adopting the spares it announces on
    /// the way.
    fn answer(&mut self) -> io::Result<i32> {
        loop {
            let mut msg = [0u8; 8];
            let n = self.sock.recv(&mut msg)?;
            let word = |i: usize| i32::from_ne_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
            match n {
                4 => return Ok(word(0)),
                8 if word(4) == spare::NOTICE => self.adopt_spare(word(0)),
                _ => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    fn adopt_spare(&mut self, pid: i32) {
        // Spares that ended meanwhile (the zygote replaced) are reaped here.
        self.spares.retain_mut(|c| !c.exited());
        match Child::adopt(pid) {
            Ok(c) => self.spares.push(c),
            Err(e) => tracing::warn!("zygote: spare {pid}: {e}"),
        }
    }

    /// The worker with `pid`: an announced spare, or a child forked for this request.
    fn worker(&mut self, pid: i32) -> io::Result<Child> {
        let spare = self
            .spares
            .iter()
            .position(|c| i64::from(c.id()) == i64::from(pid));
        match spare {
            Some(i) => Ok(self.spares.swap_remove(i)),
            None => Child::adopt(pid),
        }
    }
}

impl Drop for Running {
    /// Let the zygote end on its own (end of file on its socket) so that a spare it is
    /// forking is announced first; adopt what it announced, so that every spare is reaped.
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        let _ = self.sock.set_read_timeout(Some(Duration::from_secs(1)));
        while self.answer().is_ok() {}
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
            spares: Vec::new(),
            handles,
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
        let answer = (|| {
            let mut fds = vec![control, err_w.as_raw_fd()];
            fds.extend(handles.iter().map(AsRawFd::as_raw_fd));
            z.sock
                .send_with_fds(&[&request[..]], &fds)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            z.answer()
        })();
        let pid = match answer {
            Ok(pid) if pid > 0 => pid,
            Ok(errno) => return Err(io::Error::from_raw_os_error(-errno)),
            Err(e) => {
                // A zygote that does not answer is dropped (killed, reaped).
                *running = None;
                return Err(e);
            }
        };
        let worker = z.worker(pid);
        drop(running);
        Ok((worker?, err_r))
    }

    /// The last worker this zygote forked has answered its first command: have the
    /// zygote fork the next spare now (best effort; its notice is read with the next
    /// answer). A no-op while no zygote runs.
    pub fn refill(&self) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(z) = running.as_ref() {
            let _ = z.sock.send(serve::REFILL);
        }
    }

    /// Stop the zygote (the daemon is shutting down).
    pub fn stop(&self) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
