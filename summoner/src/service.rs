//! A running service: its listener, admission, pool of shells, and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admission::Admission;
use crate::config::{Mode, ServiceConfig, ServiceConfigError};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::pool::Pool;
use crate::worker::Spawner;

/// What the request path of a service shares.
pub struct ServiceInner {
    /// Its config.
    pub config: Arc<ServiceConfig>,
    /// Admission control.
    pub admission: Admission,
    /// Idle shells.
    pub pool: Arc<Pool>,
    /// Metrics.
    pub metrics: Arc<ServiceMetrics>,
    /// The summoner's live VMs.
    pub registry: Arc<crate::registry::Registry>,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid config.
    #[error(transparent)]
    Config(#[from] ServiceConfigError),
    /// Snapshot mode: the template VM did not reach ready (or could not be saved).
    #[error("service {name}: the snapshot template failed: {reason}")]
    Template {
        /// Service.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The address could not be bound.
    #[error("service {name}: cannot listen on {addr}: {source}")]
    Bind {
        /// Service.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A service that accepts connections.
pub struct Service {
    inner: Arc<ServiceInner>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Validate, bind and start accepting (needs a tokio runtime).
    pub fn start(
        config: ServiceConfig,
        spawner: Spawner,
        metrics: &Arc<Metrics>,
        registry: Arc<crate::registry::Registry>,
        template: Option<Arc<crate::template::Template>>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let bind_err = |source| StartError::Bind {
            name: config.name.clone(),
            addr: config.listen,
            source,
        };
        let (std_listener, inherited) =
            crate::listen::take_or_bind(&config.name, config.listen).map_err(bind_err)?;
        if inherited {
            tracing::info!(service = %config.name, "using the socket systemd passed");
        }
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = std_listener.local_addr().map_err(bind_err)?;
        let listener = TcpListener::from_std(std_listener).map_err(bind_err)?;
        let config = Arc::new(config);
        let smetrics = metrics.service(&config.name);
        metrics.set_start_mode(&config.name, template.is_some());
        let pool = Arc::new(Pool::new(
            config.clone(),
            spawner,
            smetrics.clone(),
            template,
        ));
        let inner = Arc::new(ServiceInner {
            admission: Admission::new(
                config.max_concurrent,
                config.queue_depth,
                config.queue_deadline,
            ),
            config,
            pool,
            metrics: smetrics,
            registry,
        });
        tokio::spawn(inner.pool.clone().run());
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(inner.clone(), listener, stop_rx));
        Ok(Self {
            inner,
            local_addr,
            stop,
            accept,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether it still accepts connections (its accept loop has not ended).
    pub fn accepting(&self) -> bool {
        !self.accept.is_finished()
    }

    /// Config.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Shared state (metrics, pool, admission).
    pub fn inner(&self) -> &Arc<ServiceInner> {
        &self.inner
    }

    /// Stop accepting (the port closes at once), let in-flight requests finish within
    /// `grace`, then kill what is left and the idle shells.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        self.inner.pool.close();
        let mut accept = self.accept;
        if tokio::time::timeout(grace, &mut accept).await.is_err() {
            tracing::warn!(service = %self.inner.config.name, "grace period over: killing in-flight VMs");
            // Aborting the accept task drops its connection tasks, whose VMs are killed.
            accept.abort();
            let _ = accept.await;
        }
    }
}

async fn accept_loop(
    svc: Arc<ServiceInner>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(serve_conn(svc.clone(), tcp, stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(service = %svc.config.name, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    // Drain: in-flight connections finish (HTTP ones are told to close after the current
    // request). Dropping the set on cancellation aborts them, killing their VMs.
    while conns.join_next().await.is_some() {}
}

async fn serve_conn(
    svc: Arc<ServiceInner>,
    tcp: tokio::net::TcpStream,
    mut stop: watch::Receiver<bool>,
) {
    match svc.config.mode {
        Mode::Tcp => crate::tcp::handle(svc, tcp).await,
        Mode::Http => {
            let handler = {
                let svc = svc.clone();
                service_fn(move |req| crate::http::handle(svc.clone(), req))
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), handler);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    }
}
