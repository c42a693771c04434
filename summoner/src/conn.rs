//! One client connection of an HTTP-mode service, from accept to close.
//!
//! One listener speaks HTTP/1.1 and HTTP/2 over cleartext with prior knowledge (h2c: the
//! client opens with the HTTP/2 preface, as `curl --http2-prior-knowledge` does); the first
//! bytes decide. Every HTTP/2 stream is a request like any other: it is admitted, gets a
//! fresh VM of its own and is forwarded to the guest as HTTP/1.1 (`crate::http`). A
//! connection carries at most the service's `max_concurrent` streams at once: more could
//! only wait for a VM, and HTTP/2 clients queue on their side instead.
//!
//! - Half-closed clients get their answers (`half_close`): `printf 'GET / ...' | nc -N`
//!   shuts its write side at once; pipelined requests are all answered.
//! - Timeouts: a request head must arrive within `header_timeout` (counted from its first
//!   byte, or from the connection's opening for the first request); a keep-alive
//!   connection idle for `idle_timeout` between requests is closed. A request in progress
//!   (VM summoned, answer streaming) is bounded by the service's `request_deadline`
//!   instead.
//!
//! With half-close allowed, a client that closes its connection entirely (FIN) cannot be
//! told from one that only shut its write side until its answer is written: its VM lives
//! until the answer or the request deadline. A connection reset (RST: the client died with
//! data unread, or aborted) is noticed within [`RESET_CHECK`] and kills the request's VM
//! (every stream's VM, for HTTP/2). An HTTP/2 stream the client cancels (`RST_STREAM`) kills
//! its own VM at once and leaves the connection's other streams alone.
//!
//! hyper's own header timer also runs while a keep-alive connection waits, so the two
//! timeouts are kept here: the connection's reads and its requests' start and end update
//! an [`Activity`], and [`serve`] closes the connection when [`Activity::expired`] says so.
//!
//! HTTP/2 has no request head to time between requests: an HTTP/2 connection's first
//! request must arrive within `header_timeout` of its first byte (as for HTTP/1.1), and
//! after that it is idle while no stream is open, whatever control frames (PING, SETTINGS,
//! WINDOW_UPDATE) it sends; idle for `idle_timeout`, it is told GOAWAY and closed. A peer
//! that stops answering PINGs is dropped too (hyper's HTTP/2 keep-alive), also mid-request.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::RespBody;
use crate::service::ServiceInner;

/// How often a connection with a request in progress is checked for a reset.
pub const RESET_CHECK: Duration = Duration::from_millis(200);

/// Whether the peer reset the connection (or it failed): POLLERR/POLLHUP, which a mere
/// half-close (FIN) does not raise.
fn reset_by_peer(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd we own; `fd` is the connection's socket,
    // open for as long as the connection future that owns it (the caller holds it).
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

#[derive(Debug)]
struct State {
    /// Requests whose answer is not finished yet.
    active: usize,
    /// Answers finished on this connection.
    served: u64,
    /// When the connection last became idle (opened, or an answer finished).
    idle_since: Instant,
    /// First byte read while idle: a request head is on its way.
    head_started: Option<Instant>,
    /// The client speaks HTTP/2: reads between requests are control frames, not heads.
    h2: bool,
}

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    /// Woken when a request starts, so that [`serve`] looks at its timers again.
    started: tokio::sync::Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Activity {
    /// A connection opened now.
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                active: 0,
                served: 0,
                idle_since: Instant::now(),
                head_started: None,
                h2: false,
            }),
            started: tokio::sync::Notify::new(),
            header_timeout,
            idle_timeout,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_some(&self) {
        let mut s = self.state();
        if s.active == 0 && s.head_started.is_none() && !s.h2 {
            s.head_started = Some(Instant::now());
        }
    }

    fn request_started(self: &Arc<Self>, version: http::Version) -> RequestGuard {
        let mut s = self.state();
        s.active += 1;
        s.head_started = None;
        s.h2 |= version == http::Version::HTTP_2;
        self.started.notify_one();
        RequestGuard(self.clone())
    }

    /// When the connection's current timeout runs out, if nothing happens before (with a
    /// request in progress: when to look again).
    pub fn deadline(&self) -> Instant {
        let s = self.state();
        let now = Instant::now();
        if s.active > 0 {
            return now + self.header_timeout.min(self.idle_timeout);
        }
        match s.head_started {
            Some(t) => t + self.header_timeout,
            None if s.served == 0 => s.idle_since + self.header_timeout,
            None => s.idle_since + self.idle_timeout,
        }
    }

    /// Whether a request is in progress.
    fn busy(&self) -> bool {
        self.state().active > 0
    }

    /// Whether the client has spoken HTTP/2.
    fn is_h2(&self) -> bool {
        self.state().h2
    }

    /// Whether the connection has run out of time at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.state().active == 0 && now >= self.deadline()
    }
}

/// Held by a request until its answer is finished (or dropped).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.active = s.active.saturating_sub(1);
        s.served += 1;
        s.idle_since = Instant::now();
    }
}

/// The client's stream, telling its [`Activity`] about reads.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// How long a timed-out HTTP/2 connection has to take its GOAWAY before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// The connection builder for `svc`: HTTP/1.1 and h2c (prior knowledge) on one socket.
fn builder(svc: &ServiceInner) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().half_close(true);
    let streams = u32::try_from(svc.config.max_concurrent.max(1)).unwrap_or(u32::MAX);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(streams)
        // A peer that does not answer a PING within header_timeout is gone; the PINGs only
        // go out every idle_timeout, so a live connection costs next to nothing.
        .keep_alive_interval(svc.config.idle_timeout)
        .keep_alive_timeout(svc.config.header_timeout);
    b
}

/// What the handler answers a request with.
type Answer = Result<http::Response<RespBody>, Infallible>;

/// The connection's request handler: each request is marked in `activity` from its start
/// until its answer's body is sent or dropped, and served in a fresh VM.
fn handler(
    svc: Arc<ServiceInner>,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<RespBody>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Answer> + Send + 'static,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let guard = activity.request_started(req.version());
        let svc = svc.clone();
        async move {
            let resp = crate::http::handle(svc, req).await?;
            // The guard lives as long as the answer's body: until it is sent or dropped.
            Ok::<_, Infallible>(resp.map(|b| track(b, guard)))
        }
    })
}

/// The reset check's timer: a tick every [`RESET_CHECK`]; late ticks are not caught up.
fn reset_timer() -> tokio::time::Interval {
    let mut t = tokio::time::interval(RESET_CHECK);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Log a connection that ended in an error; one hyper answered itself (400, 414, 431: the
/// service never saw the request) gets an access-log line too.
fn connection_failed(svc: &ServiceInner, e: &(dyn std::error::Error + Send + Sync + 'static)) {
    if let Some(status) = refused_status(e) {
        crate::http::refused_log(svc, ("-", "-"), status, &e.to_string());
    }
    tracing::debug!(service = %svc.config.name, "client connection: {e}");
}

/// Serve one HTTP client connection until it closes, times out, or the service stops.
pub async fn serve(svc: Arc<ServiceInner>, tcp: TcpStream, mut stop: watch::Receiver<bool>) {
    let activity = Arc::new(Activity::new(
        svc.config.header_timeout,
        svc.config.idle_timeout,
    ));
    let handler = handler(svc.clone(), activity.clone());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    let io = Watched {
        io: tcp,
        activity: activity.clone(),
    };
    let builder = builder(&svc);
    let conn = builder.serve_connection(TokioIo::new(io), handler);
    tokio::pin!(conn);
    let mut reset_check = reset_timer();
    loop {
        let deadline = activity.deadline();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    connection_failed(&svc, &*e);
                }
                return;
            }
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            _ = activity.started.notified() => {}
            _ = reset_check.tick(), if activity.busy() => {
                if reset_by_peer(fd) {
                    tracing::debug!(service = %svc.config.name, "client reset the connection");
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if activity.expired(Instant::now()) {
                    tracing::debug!(service = %svc.config.name, "client connection timed out");
                    if activity.is_h2() {
                        // Say GOAWAY, so the client knows no stream was lost. A stream it
                        // opened meanwhile is still answered (within its request deadline).
                        conn.as_mut().graceful_shutdown();
                        loop {
                            tokio::select! {
                                _ = conn.as_mut() => break,
                                _ = tokio::time::sleep(GOAWAY_GRACE) => {
                                    if !activity.busy() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// The status hyper answered a request it could not parse with (its automatic response to
/// a parse error), if `e` is such an error.
fn refused_status(e: &(dyn std::error::Error + 'static)) -> Option<http::StatusCode> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if !e.is_parse() || e.is_parse_version_h2() {
        return None;
    }
    Some(
        match (e.is_parse_too_large(), e.to_string().contains("URI")) {
            (true, true) => http::StatusCode::URI_TOO_LONG,
            (true, false) => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            (false, _) => http::StatusCode::BAD_REQUEST,
        },
    )
}

fn track(body: RespBody, guard: RequestGuard) -> RespBody {
    body.map_frame(move |frame| {
        // Owned by the closure, so dropped with the body.
        let _held = &guard;
        frame
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_then_idle_timeouts() {
        let a = Arc::new(Activity::new(
            Duration::from_secs(10),
            Duration::from_secs(30),
        ));
        let opened = Instant::now();
        // A fresh connection has header_timeout to send its first head.
        assert!(!a.expired(opened));
        assert!(a.expired(opened + Duration::from_secs(11)));
        let g = a.request_started(http::Version::HTTP_11);
        assert!(!a.expired(opened + Duration::from_secs(100)), "busy");
        drop(g);
        // Idle between requests: idle_timeout.
        let idle = Instant::now();
        assert!(!a.expired(idle + Duration::from_secs(20)));
        assert!(a.expired(idle + Duration::from_secs(31)));
        // A head begun: header_timeout from its first byte.
        a.read_some();
        assert!(a.expired(Instant::now() + Duration::from_secs(11)));
    }
}
