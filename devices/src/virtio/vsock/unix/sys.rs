//! The few socket calls std does not offer: peeking, a connect that never blocks, and sends
//! that never raise SIGPIPE (a host client that went away must not kill the VMM, whatever
//! the process's SIGPIPE disposition).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use vm_memory::VolatileSlice;

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// `recv(MSG_PEEK)`: look at queued bytes without consuming them.
pub fn peek(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes and the descriptor is open for
    // the duration of the call; recv writes at most that many bytes.
    result(unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    })
}

/// Send `buf` without blocking and without SIGPIPE.
pub fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes and the descriptor is open.
    result(unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// Send guest memory without blocking and without SIGPIPE.
pub fn send_volatile(stream: &UnixStream, buf: &VolatileSlice<'_, ()>) -> io::Result<usize> {
    let guard = buf.ptr_guard();
    // SAFETY: the guard keeps `guard.len()` bytes at `guard.as_ptr()` mapped and readable for
    // the duration of the call (guest memory outlives the slice); the kernel only reads them.
    result(unsafe {
        libc::send(
            stream.as_raw_fd(),
            guard.as_ptr().cast(),
            guard.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// Send several buffers in one call, without blocking and without SIGPIPE.
pub fn send_vectored(stream: &UnixStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid `msghdr` (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (documented by std); sendmsg does not
    // write through the pointer.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    // A `size_t` in glibc, an `int` in musl. At most IOV_MAX (1024) buffers go in one call: a
    // short send is a result the caller handles anyway.
    msg.msg_iovlen = bufs.len().min(1024) as _;
    // SAFETY: `msg` points at `msg_iovlen` (<= `bufs.len()`) valid iovecs that outlive the call; the descriptor
    // is open.
    result(unsafe {
        libc::sendmsg(
            stream.as_raw_fd(),
            &raw const msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// Connect to a Unix stream listener without ever blocking: a listener whose backlog is full
/// refuses (`EAGAIN`) instead of stalling the event thread. The stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: `sockaddr_un` is plain old data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable socket path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain system call; no memory is handed over.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is a valid, NUL-terminated `sockaddr_un` at least `len` bytes long and
    // `fd` is open.
    let ret = unsafe {
        libc::connect(
            fd,
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn sends_to_a_closed_peer_fail_without_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(send(&a, b"x").is_err());
        assert!(send_vectored(&a, &[IoSlice::new(b"x")]).is_err());
        let mut bytes = [1u8, 2];
        assert!(send_volatile(&a, &VolatileSlice::from(&mut bytes[..])).is_err());
    }

    #[test]
    fn vectored_send_and_peek() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let n = send_vectored(&a, &[IoSlice::new(b"ab"), IoSlice::new(b"cd")]).unwrap();
        assert_eq!(n, 4);
        let mut p = [0u8; 8];
        assert_eq!(peek(&b, &mut p).unwrap(), 4);
        let mut r = [0u8; 4];
        b.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"abcd");
    }

    #[test]
    fn connect_fails_fast_without_a_listener() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/dust-sys-").unwrap();
        let path = dir.as_path().join("nobody");
        assert!(connect_nonblocking(&path).is_err());
        let long = dir.as_path().join("x".repeat(200));
        assert!(connect_nonblocking(&long).is_err());
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(connect_nonblocking(&path).is_ok());
    }
}
