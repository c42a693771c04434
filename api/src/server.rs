//! The listeners: a Unix socket (mode 0600, no auth beyond that) and an optional TCP
//! listener that needs a bearer token. HTTP/1.1 by hyper; graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::control::Control;
use crate::error::ApiError;
use crate::router::{Router, Settings};

/// Longest a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The default control socket: `/run/dust/api.sock` as root, else
/// `$XDG_RUNTIME_DIR/dust/api.sock`, else `/tmp/dust-<uid>/api.sock` (next to the
/// summoner's per-VM sockets).
pub fn default_socket_path() -> PathBuf {
    summoner::default_run_dir().join("api.sock")
}

/// The socket file this server created; removed on drop unless something else has replaced
/// it meanwhile.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), "cannot remove the control socket: {e}");
            }
        }
    }
}

/// A bound control API, ready to [`ApiServer::serve`].
#[derive(Debug)]
pub struct ApiServer {
    unix: UnixListener,
    socket: SocketFile,
    tcp: Option<(TcpListener, Arc<str>)>,
    settings: Settings,
}

/// Remove `path` if it is a socket nobody answers on; fail if someone does or if it is not
/// a socket.
fn clear_stale(path: &Path) -> Result<(), ApiError> {
    let unix_err = |source| ApiError::Unix {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unix_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ApiError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale control socket");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(unix_err(e)),
                _ => Ok(()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(unix_err(e)),
    }
}

fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), ApiError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| ApiError::SocketDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    clear_stale(path)?;
    let unix_err = |source| ApiError::Unix {
        path: path.to_path_buf(),
        source,
    };
    let socket = UnixSocket::new_stream().map_err(unix_err)?;
    socket.bind(path).map_err(unix_err)?;
    let meta = std::fs::symlink_metadata(path).map_err(unix_err)?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    // Bound but not listening yet: nobody can connect before the mode is 0600.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(unix_err)?;
    let listener = socket.listen(128).map_err(unix_err)?;
    Ok((listener, file))
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    let tcp_err = |source| ApiError::Tcp { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(tcp_err)?;
    std_listener.set_nonblocking(true).map_err(tcp_err)?;
    TcpListener::from_std(std_listener).map_err(tcp_err)
}

impl ApiServer {
    /// Bind the Unix socket at `unix_path` (parent directory created 0700 if missing, a stale
    /// socket replaced, mode 0600) and, with `tcp = Some((addr, token))`, a TCP listener
    /// whose every request needs `Authorization: Bearer <token>`. Call inside a tokio
    /// runtime.
    pub fn bind(
        unix_path: impl AsRef<Path>,
        tcp: Option<(SocketAddr, String)>,
    ) -> Result<ApiServer, ApiError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ApiError::NoRuntime);
        }
        if let Some((_, token)) = &tcp {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::BadToken);
            }
        }
        let (unix, socket) = bind_unix(unix_path.as_ref())?;
        let tcp = match tcp {
            Some((addr, token)) => Some((bind_tcp(addr)?, Arc::from(token))),
            None => None,
        };
        Ok(ApiServer {
            unix,
            socket,
            tcp,
            settings: Settings::default(),
        })
    }

    /// Replace the timing knobs (drain and replace grace periods, body deadline).
    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The Unix socket's path.
    pub fn unix_path(&self) -> &Path {
        &self.socket.path
    }

    /// The TCP listener's bound address, if there is one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serve `control` until `shutdown` completes; then stop accepting, remove the socket
    /// file, let in-flight requests finish (idle keep-alive connections close at once) and
    /// return.
    pub async fn serve<C: Control>(self, control: Arc<C>, shutdown: impl Future<Output = ()>) {
        let ApiServer {
            unix,
            socket,
            tcp,
            settings,
        } = self;
        let router = Arc::new(Router::new(control, settings));
        let (stop, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tracing::info!(socket = %socket.path.display(), tcp = ?tcp.as_ref().and_then(|(l, _)| l.local_addr().ok()), "control API listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = unix.accept() => match accepted {
                    Ok((stream, _)) => {
                        conns.spawn(serve_conn(router.clone(), stream, None, stop_rx.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_tcp(&tcp) => match accepted {
                    Ok((stream, token)) => {
                        let _ = stream.set_nodelay(true);
                        conns.spawn(serve_conn(router.clone(), stream, Some(token), stop_rx.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(unix);
        drop(tcp);
        drop(socket);
        let _ = stop.send(true);
        let open = conns.len();
        if open > 0 {
            tracing::info!(
                connections = open,
                "control API stopping: finishing in-flight requests"
            );
        }
        while conns.join_next().await.is_some() {}
        tracing::info!("control API stopped");
    }
}

async fn accept_failed(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!("control API accept: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_tcp(
    tcp: &Option<(TcpListener, Arc<str>)>,
) -> std::io::Result<(TcpStream, Arc<str>)> {
    match tcp {
        Some((listener, token)) => {
            let (stream, _) = listener.accept().await?;
            Ok((stream, token.clone()))
        }
        None => std::future::pending().await,
    }
}

async fn serve_conn<C, S>(
    router: Arc<Router<C>>,
    io: S,
    token: Option<Arc<str>>,
    mut stop: watch::Receiver<bool>,
) where
    C: Control,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let token = token.clone();
        async move { Ok::<_, Infallible>(router.handle(req, token.as_deref()).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), handler);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("control API connection: {e}");
    }
}
