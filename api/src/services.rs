//! `PUT /v1/services/{name}`: create, or replace live without ever losing a working service
//! to a bad config.
//!
//! Order of a replacement:
//! 1. validate the new config (422 and nothing touched if it fails);
//! 2. if the listen address moves to another port, check that the new one can be bound
//!    (409 and nothing touched if not) — the summoner keys services by name, so the new
//!    service cannot literally run beside the old one;
//! 3. stop the old service (in-flight requests get `replace_grace`);
//! 4. start the new one; if that still fails, start the old config again (rollback) and
//!    answer with the new config's error.
//!
//! A change runs in a task of its own: a client that disconnects mid-way cancels only its
//! wait for the answer, never the change, so a replacement always finishes or rolls back.
//! Every change is logged.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use summoner::{AddError, ServiceConfig, ServiceStats, StartError};

use crate::control::{Control, ServiceStatus};
use crate::error::{ErrorCode, HttpError};
use crate::models;
use crate::router::{json, Router, Settings};

/// 409/422 for a service that could not be added; the message names no host path the
/// client did not give.
fn add_error(e: AddError, def: &Defined) -> HttpError {
    let message = crate::persist::scrub(&e.to_string(), &def.config, &def.run);
    match e {
        AddError::Duplicate(_) => HttpError::new(ErrorCode::AlreadyExists, message),
        AddError::Start(StartError::Config(e)) => {
            crate::persist::invalid_config(&e, &def.config, &def.run)
        }
        AddError::Start(StartError::Template { .. } | StartError::Compile { .. }) => {
            HttpError::new(ErrorCode::InvalidConfig, message)
        }
        AddError::Start(StartError::Bind { source, .. }) => bind_error(source.kind(), message),
    }
}

fn bind_error(kind: ErrorKind, message: String) -> HttpError {
    let code = if kind == ErrorKind::AddrInUse {
        ErrorCode::AddressInUse
    } else {
        ErrorCode::CannotListen
    };
    HttpError::new(code, message)
}

/// Can `addr` be bound now? (Bound and released at once.)
fn probe(name: &str, addr: SocketAddr) -> Result<(), HttpError> {
    std::net::TcpListener::bind(addr).map(drop).map_err(|e| {
        bind_error(
            e.kind(),
            format!("service {name}: cannot listen on {addr}: {e}"),
        )
    })
}

/// Is this a bind failure because the port is (still) taken?
fn addr_in_use(e: &AddError) -> bool {
    matches!(e, AddError::Start(StartError::Bind { source, .. }) if source.kind() == ErrorKind::AddrInUse)
}

impl<C: Control> Router<C> {
    /// Create the service, or (unless `create_only`, as for `POST /v1/services`) replace
    /// the one of that name. `config` is as the client gave it: its artifact references
    /// are resolved here, and it is what the state directory keeps.
    pub(crate) async fn put_service(
        &self,
        config: ServiceConfig,
        create_only: bool,
    ) -> Result<Response<Full<Bytes>>, HttpError> {
        // Resolving hashes an artifact, checking reads and parses the image or module:
        // off the async threads.
        let (control, given) = (self.control.clone(), config.clone());
        let run = join(tokio::task::spawn_blocking(move || {
            let run = crate::persist::resolve(&*control, &given)?;
            control
                .check_service(&run)
                .map_err(|e| crate::persist::invalid_config(&e, &given, &run))?;
            Ok::<_, HttpError>(run)
        }))
        .await??;
        let change = self.change(&config.name);
        join(tokio::spawn(
            change.put(Defined { config, run }, create_only),
        ))
        .await?
    }

    /// Bring back the definition a service had before its last replacement.
    pub(crate) async fn rollback_service(
        &self,
        name: &str,
    ) -> Result<Response<Full<Bytes>>, HttpError> {
        let change = self.change(name);
        join(tokio::spawn(change.rollback(name.to_string()))).await?
    }

    pub(crate) fn change(&self, name: &str) -> Change<C> {
        Change {
            control: self.control.clone(),
            settings: self.settings,
            lock: self.changes.of(name),
            artifacts: self.artifacts_lock.clone(),
        }
    }

    /// Drain and remove a service, in a task of its own like every change.
    pub(crate) async fn delete_service(&self, name: &str) -> Result<(), HttpError> {
        join(tokio::spawn(self.change(name).delete(name.to_string()))).await?
    }
}

/// Wait for a change's task; the task goes on if this wait is dropped.
async fn join<T>(task: tokio::task::JoinHandle<T>) -> Result<T, HttpError> {
    task.await.map_err(|e| {
        tracing::error!("a service change failed: {e}");
        HttpError::new(ErrorCode::Internal, "the service change failed".to_string())
    })
}

/// A service config as the client gave it (`config`, what the state directory keeps) and
/// as it runs (`run`: artifact references resolved to their files).
pub(crate) struct Defined {
    config: ServiceConfig,
    run: ServiceConfig,
}

/// What a change needs, owned, so that it can outlive the request that asked for it.
pub(crate) struct Change<C> {
    control: Arc<C>,
    settings: Settings,
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Held shared while a change may start using an artifact; a DELETE of an artifact
    /// holds it alone.
    artifacts: Arc<tokio::sync::RwLock<()>>,
}

impl<C: Control> Change<C> {
    async fn delete(self, name: String) -> Result<(), HttpError> {
        let _change = self.lock.lock().await;
        tracing::info!(service = %name, "removing service (control API)");
        if !self
            .control
            .remove_service(&name, self.settings.drain_grace)
            .await
        {
            return Err(crate::router::service_not_found(&name));
        }
        self.control.forget_metrics(&name);
        crate::persist::forget(&*self.control, &name)?;
        tracing::info!(service = %name, "service removed (control API)");
        Ok(())
    }

    async fn put(
        self,
        def: Defined,
        create_only: bool,
    ) -> Result<Response<Full<Bytes>>, HttpError> {
        let _change = self.lock.lock().await;
        let _artifacts = self.artifacts.read().await;
        let name = def.config.name.clone();
        let c = &*self.control;
        let (status, address) = match c.service(&name) {
            None => {
                let address = c.add_service(def.run.clone()).await.map_err(|e| {
                    tracing::warn!(service = %name, "service not created (control API): {e}");
                    add_error(e, &def)
                })?;
                crate::persist::save(c, def.config.clone(), None)?;
                tracing::info!(service = %name, %address, "service created (control API)");
                (StatusCode::CREATED, address)
            }
            Some(_) if create_only => {
                return Err(HttpError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "a service named {name:?} already exists; PUT /v1/services/{name} replaces it"
                    ),
                ));
            }
            Some(old) => {
                tracing::info!(service = %name, "replacing service (control API)");
                let before = crate::persist::defined(c, &old.config);
                let address = self.replace(old, &def).await?;
                crate::persist::save(c, def.config.clone(), Some(before))?;
                tracing::info!(service = %name, %address, "service replaced (control API)");
                (StatusCode::OK, address)
            }
        };
        Ok(self.answer(status, def, address))
    }

    /// The service as it runs now, in a `status` answer.
    fn answer(
        &self,
        status: StatusCode,
        def: Defined,
        address: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let c = &*self.control;
        let name = def.config.name.clone();
        let now = c.service(&name).unwrap_or(ServiceStatus {
            config: def.run,
            address,
            stats: ServiceStats {
                running: 0,
                max_running: 0,
                idle: 0,
                waiting: 0,
                connections: 0,
            },
        });
        let shown = models::Service {
            creation: c.creation(&name),
            ..crate::persist::shown(c, now)
        };
        let mut resp = json(status, &shown);
        if status == StatusCode::CREATED {
            if let Ok(loc) = HeaderValue::from_str(&format!("/v1/services/{name}")) {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
        }
        resp
    }

    async fn rollback(self, name: String) -> Result<Response<Full<Bytes>>, HttpError> {
        let _change = self.lock.lock().await;
        let _artifacts = self.artifacts.read().await;
        let c = &*self.control;
        let Some(old) = c.service(&name) else {
            return Err(crate::router::service_not_found(&name));
        };
        let (current, previous) = crate::persist::previous(c, &name)?;
        let run = crate::persist::resolve(c, &previous)?;
        c.check_service(&run)
            .map_err(|e| crate::persist::invalid_config(&e, &previous, &run))?;
        let def = Defined {
            config: previous,
            run,
        };
        tracing::info!(service = %name, "rolling back (control API)");
        let address = self.replace(old, &def).await?;
        crate::persist::save(c, def.config.clone(), Some(current))?;
        tracing::info!(service = %name, %address, "service rolled back (control API)");
        Ok(self.answer(StatusCode::OK, def, address))
    }

    async fn replace(&self, old: ServiceStatus, def: &Defined) -> Result<SocketAddr, HttpError> {
        let c = &*self.control;
        let new = &def.run;
        let name = new.name.clone();
        // Same address, or the same port on another IP (0.0.0.0:P conflicts with
        // 127.0.0.1:P): the old service must let go of it first.
        let shares_port = new.listen == old.config.listen
            || (new.listen.port() != 0 && new.listen.port() == old.address.port());
        if !shares_port {
            probe(&name, new.listen)?;
        }
        c.remove_service(&name, self.settings.replace_grace).await;
        let mut tries = 0;
        let err = loop {
            match c.add_service(new.clone()).await {
                Ok(address) => return Ok(address),
                // The old listener may take a moment to close after its drain.
                Err(e) if shares_port && addr_in_use(&e) && tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => break add_error(e, def),
            }
        };
        let mut previous = old.config;
        if previous.listen.port() == 0 {
            // Keep the port clients know.
            previous.listen = old.address;
        }
        match c.add_service(previous).await {
            Ok(address) => {
                tracing::warn!(service = %name, %address, "new config failed to start ({}); the previous one runs again", err.message);
                Err(err)
            }
            Err(e) => {
                tracing::error!(service = %name, "new config failed to start ({}) and the previous one could not be restarted: {e}", err.message);
                Err(HttpError::new(
                    err.code(),
                    format!(
                        "{}; the previous config could not be restarted either ({e}), so the \
                         service is gone",
                        err.message
                    ),
                ))
            }
        }
    }
}
