//! A running service: its listener, admission, pool of shells, and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::admission::Admission;
use crate::config::{Mode, ServiceConfig, ServiceConfigError};
use crate::limits::Budget;
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
    /// Its guests' output, logged when a request fails.
    pub guest_log: crate::diagnose::GuestLog,
    /// Client connections this service may still open (`max_connections`).
    connections: Arc<Semaphore>,
    /// The daemon-wide client connection budget.
    budget: Budget,
}

impl ServiceInner {
    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.config
            .max_connections
            .saturating_sub(self.connections.available_permits())
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Invalid config.
    #[error(transparent)]
    Config(#[from] ServiceConfigError),
    /// Engine `aot`: the module could not be compiled.
    #[error("service {name}: compiling the module: {source}")]
    Compile {
        /// Service.
        name: String,
        /// What went wrong.
        #[source]
        source: crate::wasm::aot::AotError,
    },
    /// Snapshot mode: the template VM did not reach ready (or could not be saved).
    #[error("service {name}: the snapshot template failed: {source}")]
    Template {
        /// Service.
        name: String,
        /// What went wrong.
        #[source]
        source: crate::template::TemplateError,
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
    /// The steps its creation took ([`crate::progress`]).
    pub(crate) creation: Vec<crate::progress::Step>,
}

impl Service {
    /// Bind and start accepting (needs a tokio runtime). `config` has been checked
    /// ([`crate::Summoner::check`]).
    pub fn start(
        config: ServiceConfig,
        spawner: Spawner,
        metrics: &Arc<Metrics>,
        registry: Arc<crate::registry::Registry>,
        template: Option<Arc<crate::template::Template>>,
        budget: Budget,
    ) -> Result<Self, StartError> {
        let bind_err = |source| StartError::Bind {
            name: config.name.clone(),
            addr: config.listen,
            source,
        };
        let listener = match crate::listen::take(&config.name, config.listen) {
            Some(l) => {
                tracing::info!(service = %config.name, "using the socket systemd passed");
                l.set_nonblocking(true).map_err(bind_err)?;
                TcpListener::from_std(l).map_err(bind_err)?
            }
            None => bind(config.listen).map_err(bind_err)?,
        };
        let local_addr = listener.local_addr().map_err(bind_err)?;
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
            connections: Arc::new(Semaphore::new(
                config.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            budget,
            config,
            pool,
            metrics: smetrics,
            registry,
            guest_log: Default::default(),
        });
        tokio::spawn(inner.pool.clone().run());
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(inner.clone(), listener, stop_rx));
        Ok(Self {
            inner,
            local_addr,
            stop,
            accept,
            creation: Vec::new(),
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

/// Pending connections the kernel may queue before the accept loop takes them.
const BACKLOG: u32 = 1024;

/// Bind `addr` (SO_REUSEADDR, as std does) with a backlog deep enough for a burst of
/// clients.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connections being refused (503) right now; past this many they are just closed.
const MAX_REFUSING: usize = 64;

/// A connection's share of the service's and the daemon's limits, held while it is open.
struct Admitted {
    _service: OwnedSemaphorePermit,
    _budget: OwnedSemaphorePermit,
}

fn admit_connection(svc: &ServiceInner) -> Option<Admitted> {
    let service = svc.connections.clone().try_acquire_owned().ok()?;
    let budget = svc.budget.try_take()?;
    Some(Admitted {
        _service: service,
        _budget: budget,
    })
}

async fn accept_loop(
    svc: Arc<ServiceInner>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    match admit_connection(&svc) {
                        Some(held) => {
                            conns.spawn(serve_conn(svc.clone(), tcp, stop.clone(), held));
                        }
                        None => {
                            tracing::info!(service = %svc.config.name, "connection refused: too many open connections");
                            if let (Mode::Http, Ok(p)) = (svc.config.mode, refusing.clone().try_acquire_owned()) {
                                tokio::spawn(crate::refuse::refuse(tcp, p));
                            }
                        }
                    }
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
    tcp: TcpStream,
    stop: watch::Receiver<bool>,
    _held: Admitted,
) {
    match svc.config.mode {
        Mode::Tcp => crate::tcp::handle(svc, tcp).await,
        Mode::Http => crate::conn::serve(svc, tcp, stop).await,
    }
}
