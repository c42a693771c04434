//! HTTP mode: one fresh VM per request. hyper serves the client (HTTP/1.1 with keep-alive, or
//! h2c, see `crate::conn`) and, per request, speaks HTTP/1.1 to the guest over the vsock
//! stream; bodies stream both ways. Guests only ever see HTTP/1.1: an HTTP/2 request is
//! rewritten on the way in ([`to_http1`]) and its answer on the way out ([`for_client`]).
//! Every response carries `Server-Timing` (queue, spawn, boot, connect, respond, guest,
//! total) and `X-Dust-Vm`. Guest crash -> 502, deadline -> 504, overload -> 503.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::metrics::Phase;
use crate::service::ServiceInner;
use crate::summon::{self, ConnectError, Failure, OutcomeGuard, SummonError};
use crate::vsock::GuestStream;
use crate::worker::{ServingWorker, WorkerError};

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body type.
pub type RespBody = BoxBody<Bytes, BoxError>;

fn text(status: StatusCode, msg: String) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg + "\n"))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

fn error_response(svc: &ServiceInner, f: &Failure) -> Response<RespBody> {
    let e = &f.error;
    let status = match e {
        SummonError::Shed(_) => StatusCode::SERVICE_UNAVAILABLE,
        SummonError::Guest(_) | SummonError::Connect(_) => StatusCode::BAD_GATEWAY,
        SummonError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        SummonError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // The details (paths, worker errors) go to the log, never to the service's client.
    let vm = f.vm.as_deref().unwrap_or("-");
    match e {
        SummonError::Shed(_) => {
            tracing::info!(service = %svc.config.name, "request shed: {e}");
        }
        _ if f.killed => {
            tracing::info!(service = %svc.config.name, vm, "request ended: VM killed by the operator");
        }
        _ => tracing::warn!(service = %svc.config.name, vm, "request failed: {e}"),
    }
    let mut r = text(status, f.client_message());
    if let Some(v) = f.vm.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        r.headers_mut().insert("x-dust-vm", v);
    }
    if matches!(e, SummonError::Shed(_)) {
        let secs = svc.config.queue_deadline.as_secs().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    r
}

/// Remove hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection, and
/// the client's connection is not the guest's. Forwarding the guest's `Connection: close`
/// would end a keep-alive client's connection after every request.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Make a request the client sent in any HTTP version one the guest can read as HTTP/1.1:
/// an HTTP/2 request names its host in `:authority` (part of the URI here) and its target
/// in absolute form, where an HTTP/1.1 server expects a `Host` header and a path.
fn to_http1<B>(req: &mut Request<B>) {
    strip_hop_by_hop(req.headers_mut());
    if req.version() == http::Version::HTTP_11 || req.version() == http::Version::HTTP_10 {
        return;
    }
    *req.version_mut() = http::Version::HTTP_11;
    if !req.headers().contains_key(http::header::HOST) {
        let host = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(host) = host {
            req.headers_mut().insert(http::header::HOST, host);
        }
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = http::Uri::from(path);
}

/// Make the guest's HTTP/1.1 response headers fit the client's `version`: hop-by-hop headers
/// never pass, and HTTP/2 also forbids `transfer-encoding` (its framing is its own).
fn for_client(headers: &mut http::HeaderMap, version: http::Version) {
    strip_hop_by_hop(headers);
    if version == http::Version::HTTP_2 {
        headers.remove(http::header::TRANSFER_ENCODING);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// One access-log line per request, at info: service, VM, method, path, status, outcome and
/// the phases (as in `Server-Timing`).
fn access_log(
    svc: &ServiceInner,
    vm: Option<&str>,
    (method, path): (&http::Method, &str),
    status: StatusCode,
    outcome: crate::metrics::Outcome,
    timing: &str,
) {
    tracing::info!(
        target: "dust::access",
        service = %svc.config.name,
        vm = vm.unwrap_or("-"),
        %method,
        path,
        status = status.as_u16(),
        outcome = ?outcome,
        timing,
        "request"
    );
}

/// The access-log line of a request the front door answered itself, without a VM: one
/// over the guest's limits ([`head_too_large`]), or one hyper could not parse
/// (`crate::conn`). `method` and `path` are `-` when the request line was unreadable.
pub(crate) fn refused_log(
    svc: &ServiceInner,
    (method, path): (&str, &str),
    status: StatusCode,
    why: &str,
) {
    tracing::info!(
        target: "dust::access",
        service = %svc.config.name,
        vm = "-",
        %method,
        path,
        status = status.as_u16(),
        outcome = %"refused",
        why,
        "request"
    );
}

/// Whether the guest runtime would refuse `req`'s head as too large (431): over
/// [`dust_abi::http::MAX_HEAD`] bytes as forwarded (request line, fields, blank line), or
/// more than [`dust_abi::http::MAX_HEADERS`] fields. The front door answers those itself,
/// so that they never cost a VM. `req` is in its HTTP/1.1 form ([`to_http1`]).
fn head_too_large<B>(req: &Request<B>) -> bool {
    let line = req.method().as_str().len() + 1 + req.uri().to_string().len() + 11;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + fields + 2 > dust_abi::http::MAX_HEAD
        || req.headers().len() > dust_abi::http::MAX_HEADERS
}

/// A request that got no answer from its VM: count it, answer it, log it (with what its
/// guest wrote last).
fn failed(
    svc: &ServiceInner,
    outcome: &mut OutcomeGuard,
    f: &Failure,
    req: (&http::Method, &str),
    t0: Instant,
) -> Response<RespBody> {
    let r = error_response(svc, f);
    outcome.settle(f.error.outcome(), Some(r.status().as_u16()));
    if let (Some(vm), Some(output), false) = (&f.vm, &f.output, f.killed) {
        let status = r.status().as_u16();
        svc.guest_log.report(&svc.config.name, vm, status, output);
    }
    let timing = format!("total;dur={}", ms(t0.elapsed()));
    access_log(
        svc,
        f.vm.as_deref(),
        req,
        r.status(),
        f.error.outcome(),
        &timing,
    );
    r
}

/// Serve one request in a fresh VM.
pub async fn handle(
    svc: Arc<ServiceInner>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let version = req.version();
    let mut req = req;
    to_http1(&mut req);
    if head_too_large(&req) {
        return Ok(refuse_large_head(&svc, (method.as_str(), &path)));
    }
    let t0 = Instant::now();
    let deadline = t0 + svc.config.request_deadline;
    let mut outcome = OutcomeGuard::new(&svc);
    let opened = match summon::summon_http(&svc, t0, deadline).await {
        Ok(s) => s,
        Err(f) => return Ok(failed(&svc, &mut outcome, &f, (&method, &path), t0)),
    };
    let (mut vm, phases, result, respond) = exchange(&svc, opened, req, deadline).await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            let f = Failure::of_vm(e, &mut vm, &svc.guest_log).await;
            return Ok(failed(&svc, &mut outcome, &f, (&method, &path), t0));
        }
    };
    let guest = Duration::from_micros(vm.guest_us().await);
    let total = t0.elapsed();
    svc.metrics.phase(Phase::respond, respond);
    svc.metrics.phase(Phase::guest, guest);
    svc.metrics.request_duration(total);
    let done = settle(&svc, &mut outcome, &mut vm, resp.status().as_u16()).await;

    let timing = server_timing(&svc, &phases, respond, guest, total);
    let (mut parts, body) = resp.into_parts();
    let req = (&method, path.as_str());
    access_log(
        &svc,
        Some(vm.vm_id.as_str()),
        req,
        parts.status,
        done,
        &timing,
    );
    dust_headers(&mut parts.headers, version, &timing, &vm.vm_id);
    let body = VmBody {
        inner: body,
        vm: Some(vm),
        deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Send the request on `opened`'s stream and wait for the answer's head: the VM, the phases
/// with `connect` (recorded once the guest accepted), the answer, and `respond` (from the
/// guest's accepting: the request was written before).
async fn exchange(
    svc: &ServiceInner,
    opened: summon::Opened,
    req: Request<Incoming>,
    deadline: Instant,
) -> (
    ServingWorker,
    summon::Phases,
    Result<Response<Incoming>, SummonError>,
    Duration,
) {
    let (mut phases, since) = (opened.phases, opened.since);
    let handshake = opened.stream.handshake();
    let mut vm = opened.vm;
    let result =
        tokio::time::timeout_at(deadline.into(), forward(&mut vm, opened.stream, req)).await;
    let head_at = Instant::now();
    let mut respond = Duration::ZERO;
    if let Some((connect, at)) = summon::Opened::connected(&handshake, since) {
        phases.connect = connect;
        respond = head_at.saturating_duration_since(at);
        summon::record(svc, &phases);
    }
    let result = result.unwrap_or(Err(SummonError::Timeout));
    (vm, phases, result, respond)
}

/// Count the request `vm` answered with `status`; a 5xx the guest sent itself (a wasm
/// trap, out of fuel) gets its output in the log.
async fn settle(
    svc: &ServiceInner,
    outcome: &mut OutcomeGuard,
    vm: &mut ServingWorker,
    status: u16,
) -> crate::metrics::Outcome {
    let done = crate::metrics::code::answered(status);
    outcome.settle(done, Some(status));
    if status >= 500 && svc.guest_log.open() {
        // The guest says it failed (a wasm trap, out of fuel): say why in the log.
        let output = vm.output().await;
        svc.guest_log
            .report(&svc.config.name, &vm.vm_id, status, &output);
    }
    done
}

/// The guest's response headers as the client gets them: hop-by-hop ones gone, plus
/// `Server-Timing` and `X-Dust-Vm`.
fn dust_headers(headers: &mut http::HeaderMap, version: http::Version, timing: &str, vm: &str) {
    for_client(headers, version);
    if let Ok(v) = HeaderValue::from_str(timing) {
        headers.append("server-timing", v);
    }
    if let Ok(v) = HeaderValue::from_str(vm) {
        headers.insert("x-dust-vm", v);
    }
}

/// 431 for a head the guest could not take, answered without a VM (and logged).
fn refuse_large_head(svc: &ServiceInner, req: (&str, &str)) -> Response<RespBody> {
    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    refused_log(svc, req, status, "head over the guest's limits");
    text(status, "request header block too large".into())
}

/// The `Server-Timing` value of an answered request: each phase, how the shell was made
/// (snapshot, warm, cold), the guest's CPU time and the total.
fn server_timing(
    svc: &ServiceInner,
    phases: &summon::Phases,
    respond: Duration,
    guest: Duration,
    total: Duration,
) -> String {
    format!(
        "queue;dur={}, spawn;dur={};desc=\"{}\", boot;dur={}, connect;dur={}, respond;dur={}, guest;dur={}, total;dur={}",
        ms(phases.queue),
        ms(phases.spawn),
        match (svc.pool.snapshot_mode(), phases.warm) {
            (true, _) => "snapshot",
            (false, true) => "warm",
            (false, false) => "cold",
        },
        ms(phases.boot),
        ms(phases.connect),
        ms(respond),
        ms(guest),
        ms(total)
    )
}

/// Send the request to the guest; a guest that dies first is a 502, and one that refused
/// the connection answers as [`summon::summon`]'s handshake would have.
async fn forward(
    vm: &mut ServingWorker,
    stream: GuestStream,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, SummonError> {
    let (handshake, port) = (stream.handshake(), stream.port());
    let refused = |e: ConnectError| handshake.error(port).unwrap_or(e);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| refused(ConnectError::Handshake(e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tokio::select! {
        r = sender.send_request(req) => Ok(r.map_err(|e| refused(ConnectError::NoAnswer(e)))?),
        exit = vm.ended() => Err(SummonError::Guest(WorkerError::Ended(exit))),
    }
}

/// The guest's response body; owns the VM, which is killed as soon as the body ends (or the
/// client goes away, or the deadline passes).
struct VmBody {
    inner: Incoming,
    vm: Option<ServingWorker>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for VmBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.vm = None;
            return Poll::Ready(Some(
                Err("request deadline exceeded while streaming".into()),
            ));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                self.vm = None; // response complete: dissolve the VM now
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.vm = None;
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn an_http2_request_reaches_the_guest_as_http1() {
        let mut req = Request::builder()
            .version(http::Version::HTTP_2)
            .uri("http://example.test:8080/a/b?c=d")
            .header("te", "trailers")
            .body(())
            .unwrap();
        to_http1(&mut req);
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert_eq!(req.uri().to_string(), "/a/b?c=d");
        assert_eq!(req.headers()["host"], "example.test:8080");
        assert!(!req.headers().contains_key("te"));
        // A Host the client sent itself wins over the authority.
        let mut req = Request::builder()
            .version(http::Version::HTTP_2)
            .uri("http://a.test/")
            .header("host", "b.test")
            .body(())
            .unwrap();
        to_http1(&mut req);
        assert_eq!(req.headers()["host"], "b.test");
        // HTTP/1.1 requests keep their target as it came.
        let mut req = Request::builder().uri("/x").body(()).unwrap();
        to_http1(&mut req);
        assert_eq!(req.uri().to_string(), "/x");
        assert!(!req.headers().contains_key("host"));
    }

    #[test]
    fn a_head_over_the_guests_limits_is_too_large() {
        let with = |n: usize, value_len: usize| {
            let mut b = Request::builder().uri("/");
            for i in 0..n {
                b = b.header(format!("x-h{i}"), "v".repeat(value_len));
            }
            b.body(()).unwrap()
        };
        assert!(!head_too_large(&with(dust_abi::http::MAX_HEADERS, 10)));
        assert!(head_too_large(&with(dust_abi::http::MAX_HEADERS + 1, 1)));
        // "GET / HTTP/1.1\r\n" is 16 bytes, "x-h0: " plus CRLF 8, the blank line 2.
        let fits = dust_abi::http::MAX_HEAD - 16 - 8 - 2;
        assert!(!head_too_large(&with(1, fits)));
        assert!(head_too_large(&with(1, fits + 1)));
    }

    #[test]
    fn an_http2_client_gets_no_transfer_encoding() {
        let mut h = http::HeaderMap::new();
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        for_client(&mut h, http::Version::HTTP_2);
        assert_eq!(h.len(), 1);
        let mut h = http::HeaderMap::new();
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        for_client(&mut h, http::Version::HTTP_11);
        assert_eq!(h.len(), 1, "HTTP/1.1 keeps it");
    }
}
