//! The daemon's side of a VM's hybrid vsock socket (`dust_abi::vsock`): `CONNECT <port>\n`
//! out, `OK <host_port>\n` back, then the guest's byte stream.
//!
//! [`connect`] waits for the `OK` line before it hands the stream over (TCP mode splices
//! bytes both ways and needs a live connection first). [`open`] does not: it writes the
//! `CONNECT` line and returns a [`GuestStream`] at once, so that an HTTP request can follow
//! the line without waiting for the guest's answer. The device keeps those bytes in the
//! socket until the guest has accepted, then forwards them, so the request reaches the
//! guest without a round trip through the daemon. The stream consumes the `OK` line
//! itself, and says through its [`Handshake`] when it came or why it did not.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use dust_abi::vsock;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;

/// Why the request could not reach the guest's port.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The VM's vsock socket cannot be connected.
    #[error("vsock {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The handshake broke off.
    #[error("vsock CONNECT: {0}")]
    Io(#[from] std::io::Error),
    /// The device closed the socket: nothing listens on the port.
    #[error("guest is not listening on vsock port {0}")]
    NotListening(u32),
    /// Something other than `OK <port>` came back.
    #[error("vsock CONNECT refused: {0:?}")]
    Refused(String),
    /// HTTP mode: the guest did not speak HTTP/1.1.
    #[error("HTTP handshake with the guest: {0}")]
    Handshake(#[source] hyper::Error),
    /// HTTP mode: the guest closed or broke the connection instead of answering.
    #[error("guest did not answer: {0}")]
    NoAnswer(#[source] hyper::Error),
}

/// Connect to the VM's socket `path` and write `CONNECT <port>\n`.
async fn connect_line(path: &Path, port: u32) -> Result<UnixStream, ConnectError> {
    let mut s = UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
    s.write_all(vsock::connect_line(port).as_bytes()).await?;
    Ok(s)
}

/// The whole handshake on the VM's socket `path`: returns once the guest accepted, with
/// nothing the guest sent after its `OK` line consumed. The same parser as [`open`]'s,
/// waited for before the stream is handed on.
pub async fn connect(path: &Path, port: u32) -> Result<GuestStream, ConnectError> {
    let mut s = open(path, port).await?;
    std::future::poll_fn(|cx| s.poll_answer(cx)).await?;
    match s.handshake.error(port) {
        Some(e) => Err(e),
        None => Ok(s),
    }
}

/// Write the `CONNECT` line and return the stream without waiting for the guest's answer.
pub async fn open(path: &Path, port: u32) -> Result<GuestStream, ConnectError> {
    let io = connect_line(path, port).await?;
    Ok(GuestStream {
        io,
        line: Vec::with_capacity(vsock::LINE_MAX),
        rest: Vec::new(),
        at: 0,
        port,
        handshake: Handshake::default(),
    })
}

/// Where a [`GuestStream`]'s handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No answer yet.
    Waiting,
    /// The guest accepted at this instant.
    Accepted(Instant),
    /// The device closed the socket first: nothing listens on the port.
    NotListening,
    /// Something other than `OK <port>` came back.
    Refused(String),
}

/// The answer to a [`GuestStream`]'s `CONNECT`, readable after the stream moved on.
#[derive(Debug, Clone)]
pub struct Handshake(Arc<Mutex<Answer>>);

impl Default for Handshake {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Answer::Waiting)))
    }
}

impl Handshake {
    /// The answer so far.
    pub fn answer(&self) -> Answer {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, a: Answer) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = a;
    }

    /// The error a stream that failed in `port`'s handshake stands for, if it did.
    pub fn error(&self, port: u32) -> Option<ConnectError> {
        match self.answer() {
            Answer::NotListening => Some(ConnectError::NotListening(port)),
            Answer::Refused(line) => Some(ConnectError::Refused(line)),
            Answer::Waiting | Answer::Accepted(_) => None,
        }
    }
}

/// A guest stream whose `OK` line may still be ahead: reads skip it (see the module doc).
pub struct GuestStream {
    io: UnixStream,
    /// The handshake line so far; emptied once it is complete.
    line: Vec<u8>,
    /// What came after the line in the read that completed it, from `at` on.
    rest: Vec<u8>,
    at: usize,
    port: u32,
    handshake: Handshake,
}

impl GuestStream {
    /// The handshake's answer, also once the stream has been handed on.
    pub fn handshake(&self) -> Handshake {
        self.handshake.clone()
    }

    /// The guest port asked for.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Read until the `OK` line is complete: `Ok(())` once it is (or the handshake failed,
    /// which [`Handshake::answer`] tells; EOF for the reader).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.handshake.answer() == Answer::Waiting {
            let mut tmp = [0u8; 512];
            let mut rb = ReadBuf::new(&mut tmp);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb)) {
                Ok(()) => {}
                // Closed with our request unread in it: refused, like an EOF.
                Err(e) if refused(&e) => {
                    self.handshake.set(Answer::NotListening);
                    break;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            let got = rb.filled();
            if got.is_empty() {
                self.handshake.set(Answer::NotListening);
                break;
            }
            self.line.extend_from_slice(got);
            let Some(end) = self.line.iter().position(|&b| b == b'\n') else {
                if self.line.len() >= vsock::LINE_MAX {
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    self.handshake.set(Answer::Refused(line));
                }
                continue;
            };
            self.rest = self.line.split_off(end + 1);
            match vsock::parse_ok(&self.line) {
                Some(_) => self.handshake.set(Answer::Accepted(Instant::now())),
                None => {
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    self.handshake.set(Answer::Refused(line));
                }
            }
            self.line = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_answer(cx))?;
        match this.handshake.answer() {
            Answer::Accepted(_) => {}
            Answer::Refused(_) => {
                let e = io::Error::new(io::ErrorKind::InvalidData, "vsock CONNECT refused");
                return Poll::Ready(Err(e));
            }
            // EOF: nothing listens on the port.
            Answer::NotListening | Answer::Waiting => return Poll::Ready(Ok(())),
        }
        if this.at < this.rest.len() {
            let n = buf.remaining().min(this.rest.len() - this.at);
            buf.put_slice(&this.rest[this.at..this.at + n]);
            this.at += n;
            if this.at == this.rest.len() {
                this.rest = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

/// Whether `e`, before the guest answered, means the device closed the socket.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

impl GuestStream {
    /// A write that failed before the guest answered: the device closed the socket.
    fn note_write<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            if refused(e) && self.handshake.answer() == Answer::Waiting {
                self.handshake.set(Answer::NotListening);
            }
        }
        r
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A device stand-in on a real Unix socket: reads the CONNECT line, then answers `reply`.
    async fn device(
        reply: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, tokio::task::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 11];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(reply).await.unwrap();
            got
        });
        (dir, path, task)
    }

    #[tokio::test]
    async fn the_ok_line_is_consumed_and_what_follows_is_read() {
        let (_dir, path, dev) = device(b"OK 1073741824\nHTTP/1.1 200 OK\r\n").await;
        let mut s = open(&path, 80).await.unwrap();
        let hs = s.handshake();
        assert_eq!(hs.answer(), Answer::Waiting);
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "HTTP/1.1 200 OK\r\n");
        assert!(matches!(hs.answer(), Answer::Accepted(_)));
        assert!(hs.error(80).is_none());
        assert_eq!(dev.await.unwrap(), b"CONNECT 80\n");
    }

    #[tokio::test]
    async fn a_closed_socket_means_nothing_listens() {
        let (_dir, path, _dev) = device(b"").await;
        let mut s = open(&path, 81).await.unwrap();
        let mut got = Vec::new();
        assert_eq!(s.read_to_end(&mut got).await.unwrap(), 0);
        assert!(matches!(
            s.handshake().error(81),
            Some(ConnectError::NotListening(81))
        ));
    }

    #[tokio::test]
    async fn connect_waits_for_ok_and_keeps_what_follows() {
        let (_dir, path, _dev) = device(b"OK 1073741824\nhello").await;
        let mut s = connect(&path, 80).await.unwrap();
        assert!(matches!(s.handshake().answer(), Answer::Accepted(_)));
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
    }

    #[tokio::test]
    async fn connect_names_a_refusal() {
        let (_dir, path, _dev) = device(b"").await;
        assert!(matches!(
            connect(&path, 81).await,
            Err(ConnectError::NotListening(81))
        ));
        let (_dir, path, _dev) = device(b"NO\n").await;
        assert!(matches!(
            connect(&path, 80).await,
            Err(ConnectError::Refused(l)) if l == "NO\n"
        ));
    }

    #[tokio::test]
    async fn anything_but_ok_is_refused() {
        let (_dir, path, _dev) = device(b"NO\n").await;
        let mut s = open(&path, 80).await.unwrap();
        let mut got = Vec::new();
        assert!(s.read_to_end(&mut got).await.is_err());
        assert!(matches!(
            s.handshake().error(80),
            Some(ConnectError::Refused(l)) if l == "NO\n"
        ));
    }
}
