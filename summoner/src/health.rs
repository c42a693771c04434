//! Health for load balancers and orchestrators, on a listener of its own
//! (`dust serve --health-listen`), separate from the services and the control API:
//!
//! | path | answers |
//! |---|---|
//! | `/healthz`, `/readyz` | 200 `ok` while every service accepts and its pool is filled or filling; 503 and a one-line reason while the daemon drains, has no service, or a pool cannot build VMs |
//! | `/livez` | 200 while the process answers at all, draining or not |
//!
//! `GET` and `HEAD` only. Nothing here summons a VM: the answer comes from flags and counters
//! the summoner keeps anyway, so a balancer may probe as often as it likes.
//!
//! Draining ([`Drain`]) is the first step of a stop: health turns 503 at once, the services
//! keep accepting for the drain delay so balancers notice, then they stop (see `dust serve`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Summoner;

/// Whether the daemon is draining; set once, never cleared.
#[derive(Debug)]
pub struct Drain(watch::Sender<bool>);

impl Default for Drain {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Drain {
    /// Start draining; false if it had already started.
    pub fn start(&self) -> bool {
        !self.0.send_replace(true)
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once draining has started.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }
}

/// What `/healthz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Take traffic.
    Ok,
    /// Send traffic elsewhere, and why.
    Unavailable(String),
}

impl Summoner {
    /// Whether this daemon should get traffic: not draining, at least one service, every
    /// service accepting and none whose pool is failing to build VMs.
    pub fn health(&self) -> Health {
        if self.drain.is_draining() {
            return Health::Unavailable("draining".into());
        }
        let services = self.services();
        if services.is_empty() {
            return Health::Unavailable("no services".into());
        }
        for (name, svc) in services.iter() {
            if !svc.accepting() {
                return Health::Unavailable(format!("service {name}: not accepting"));
            }
            if let Some(why) = svc.inner().pool.failure() {
                return Health::Unavailable(format!("service {name}: cannot build VMs: {why}"));
            }
        }
        Health::Ok
    }

    /// Start draining: health turns 503 at once. False if it had already started. What
    /// follows (the drain delay, closing the listeners) is the daemon's to do; it waits on
    /// [`Summoner::drain_started`].
    pub fn drain(&self) -> bool {
        self.drain.start()
    }

    /// Whether draining has started.
    pub fn draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Resolves once [`Summoner::drain`] has been called (by a signal handler or the API).
    pub fn drain_started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.drain.started()
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The answer to one health request (hyper leaves the body out for `HEAD`).
pub fn answer<B>(summoner: &Summoner, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET or HEAD\n".to_string(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" | "/readyz" => match summoner.health() {
            Health::Ok => text(StatusCode::OK, "ok\n".into()),
            Health::Unavailable(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "health paths: /healthz /readyz /livez\n".into(),
        ),
    }
}

/// Serve health requests on `listener` until `stop` resolves; open connections are then
/// dropped (a probe is retried, nothing is lost).
pub async fn serve(listener: TcpListener, summoner: Arc<Summoner>, stop: impl Future<Output = ()>) {
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let summoner = summoner.clone();
                    conns.spawn(async move {
                        let handler = service_fn(move |req| {
                            let resp = answer(&summoner, &req);
                            async move { Ok::<_, Infallible>(resp) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), handler)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!("health listener: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            () = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_starts_once_and_wakes_waiters() {
        let d = Drain::default();
        let waiter = tokio::spawn(d.started());
        assert!(!d.is_draining());
        assert!(d.start());
        assert!(!d.start(), "a second drain is not a new one");
        assert!(d.is_draining());
        waiter.await.unwrap();
        // Waiting after the fact resolves at once.
        d.started().await;
    }
}
