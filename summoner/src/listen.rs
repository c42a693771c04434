//! Where a service's listening socket comes from: inherited through systemd socket activation
//! (`sd_listen_fds(3)`: `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on)
//! or bound here.
//!
//! An inherited socket outlives the daemon: systemd (or `systemd-socket-activate`) keeps it
//! open while dust restarts, so connections that arrive in between wait in the kernel's
//! accept queue instead of being refused. A service takes the inherited socket whose
//! `FileDescriptorName=` is the service's name or, failing that, whose address is the
//! service's `listen` address; every other service binds its own.
//!
//! [`adopt_from_env`] runs once, at start, before any thread exists; the sockets it adopts
//! wait in a process-wide table until [`take_or_bind`] hands each to one service.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Why the socket-activation variables could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// `LISTEN_PID` or `LISTEN_FDS` is not a number.
    #[error("{var}={value:?} is not a number")]
    NotANumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `LISTEN_FDNAMES` names a different number of sockets than `LISTEN_FDS` counts.
    #[error("LISTEN_FDNAMES names {names} sockets but LISTEN_FDS is {fds}")]
    NameCount {
        /// Names given.
        names: usize,
        /// Sockets passed.
        fds: usize,
    },
    /// An inherited descriptor is not a listening TCP socket.
    #[error("inherited fd {fd} is not a listening TCP socket")]
    NotTcp {
        /// The descriptor.
        fd: RawFd,
    },
}

/// One inherited listening socket.
#[derive(Debug)]
pub struct Inherited {
    /// Its `FileDescriptorName=` (systemd names unnamed sockets after the unit; `None` when no
    /// names were passed at all).
    pub name: Option<String>,
    /// The address it is bound to.
    pub addr: SocketAddr,
    listener: TcpListener,
}

/// An inherited socket's name (if any) and address.
pub type Waiting = (Option<String>, SocketAddr);

/// Inherited sockets no service has taken yet.
#[derive(Debug, Default)]
pub struct Table {
    sockets: Vec<Inherited>,
}

impl Table {
    /// The socket named `name`, else the one bound to `addr` (never for port 0).
    pub fn take(&mut self, name: &str, addr: SocketAddr) -> Option<TcpListener> {
        let i = self
            .sockets
            .iter()
            .position(|s| s.name.as_deref() == Some(name))
            .or_else(|| {
                (addr.port() != 0)
                    .then(|| self.sockets.iter().position(|s| s.addr == addr))
                    .flatten()
            })?;
        Some(self.sockets.swap_remove(i).listener)
    }

    /// Names and addresses of the sockets still waiting for a service.
    pub fn waiting(&self) -> Vec<Waiting> {
        self.sockets
            .iter()
            .map(|s| (s.name.clone(), s.addr))
            .collect()
    }

    fn push(&mut self, s: Inherited) {
        self.sockets.push(s);
    }
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    sockets: Vec::new(),
});

fn table() -> std::sync::MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The descriptors and names the variables describe, if they are meant for process `me`
/// (`LISTEN_PID` names it). No variables, or another process's, is `Ok(vec![])`.
pub fn parse_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Vec<(RawFd, Option<String>)>, ListenError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    let number = |var, value: &str| {
        value
            .trim()
            .parse::<u32>()
            .map_err(|_| ListenError::NotANumber {
                var,
                value: value.to_string(),
            })
    };
    if number("LISTEN_PID", pid)? != me {
        return Ok(Vec::new());
    }
    let n = number("LISTEN_FDS", fds)? as usize;
    let names: Vec<Option<String>> = match names {
        Some(list) => {
            let v: Vec<Option<String>> = list
                .split(':')
                .map(|s| (!s.is_empty()).then(|| s.to_string()))
                .collect();
            if v.len() != n {
                return Err(ListenError::NameCount {
                    names: v.len(),
                    fds: n,
                });
            }
            v
        }
        None => vec![None; n],
    };
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name))
        .collect())
}

fn sockopt(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a c_int we own; on a
    // descriptor that is not a socket it fails with ENOTSOCK and writes nothing.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Take ownership of `fd`, an inherited descriptor, if it is a listening stream socket. Every
/// inherited descriptor is made close-on-exec, so worker processes never hold one.
fn adopt_fd(fd: RawFd, name: Option<String>) -> Result<Inherited, ListenError> {
    // SAFETY: fcntl(F_SETFD) on a descriptor number only changes that descriptor's flags; on
    // a number that is not open it fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let stream = sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM);
    let listening = sockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1);
    if !(stream && listening) {
        return Err(ListenError::NotTcp { fd });
    }
    // SAFETY: the socket-activation protocol hands descriptors LISTEN_FDS_START.. to this
    // process to own; `fd` is an open listening stream socket (checked above), and
    // [`adopt_from_env`] adopts each number once, so no other owner closes it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    // A Unix stream socket has no IP address: give it back rather than misuse it.
    match listener.local_addr() {
        Ok(addr) => Ok(Inherited {
            name,
            addr,
            listener,
        }),
        Err(_) => {
            let _ = std::os::fd::IntoRawFd::into_raw_fd(listener);
            Err(ListenError::NotTcp { fd })
        }
    }
}

/// Adopt the sockets systemd passed to this process and clear the variables, so that no
/// child process sees them. Call once, before other threads start (it edits the
/// environment). Returns what was adopted; descriptors that are not listening TCP sockets
/// are reported in the second list and left alone.
pub fn adopt_from_env() -> Result<(Vec<Waiting>, Vec<ListenError>), ListenError> {
    let var = |k| std::env::var(k).ok();
    let fds = parse_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let mut skipped = Vec::new();
    let mut t = table();
    for (fd, name) in fds? {
        match adopt_fd(fd, name) {
            Ok(s) => t.push(s),
            Err(e) => skipped.push(e),
        }
    }
    Ok((t.waiting(), skipped))
}

/// Inherited sockets no service has taken (to warn about at start).
pub fn unclaimed() -> Vec<Waiting> {
    table().waiting()
}

/// The listener for `name` on `addr`: the inherited one that matches, else a fresh bind.
/// The second value says whether it was inherited.
pub fn take(name: &str, addr: SocketAddr) -> Option<TcpListener> {
    table().take(name, addr)
}

/// [`take`], else a fresh socket bound to `addr`; true if it was inherited.
pub fn take_or_bind(name: &str, addr: SocketAddr) -> std::io::Result<(TcpListener, bool)> {
    match take(name, addr) {
        Some(l) => Ok((l, true)),
        None => TcpListener::bind(addr).map(|l| (l, false)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn variables_for_another_process_are_ignored() {
        assert_eq!(parse_env(None, None, None, 7), Ok(vec![]));
        assert_eq!(parse_env(Some("8"), Some("2"), None, 7), Ok(vec![]));
        assert_eq!(
            parse_env(Some("7"), Some("2"), None, 7),
            Ok(vec![(3, None), (4, None)])
        );
        assert_eq!(
            parse_env(Some("7"), Some("2"), Some("hello:"), 7),
            Ok(vec![(3, Some("hello".into())), (4, None)])
        );
        assert_eq!(
            parse_env(Some("7"), Some("2"), Some("hello"), 7),
            Err(ListenError::NameCount { names: 1, fds: 2 })
        );
        assert!(matches!(
            parse_env(Some("x"), Some("1"), None, 7),
            Err(ListenError::NotANumber { .. })
        ));
    }

    #[test]
    fn a_service_takes_its_socket_by_name_then_by_address() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut t = Table::default();
        t.push(adopt_fd(a.into_raw_fd(), Some("web".into())).unwrap());
        t.push(adopt_fd(b.into_raw_fd(), None).unwrap());
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(t.take("other", any).is_none(), "port 0 matches nothing");
        let got = t.take("web", b_addr).unwrap();
        assert_eq!(got.local_addr().unwrap(), a_addr, "the name wins");
        let got = t.take("api", b_addr).unwrap();
        assert_eq!(got.local_addr().unwrap(), b_addr);
        assert!(t.waiting().is_empty());
        // Inherited sockets must not leak into worker processes.
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&got), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn only_listening_tcp_sockets_are_adopted() {
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&bound);
        assert_eq!(adopt_fd(fd, None).unwrap_err(), ListenError::NotTcp { fd });
        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&unix);
        assert_eq!(adopt_fd(fd, None).unwrap_err(), ListenError::NotTcp { fd });
        // Both are still open and usable: a refused socket is not closed.
        assert!(bound.local_addr().is_ok() && unix.local_addr().is_ok());
    }
}
