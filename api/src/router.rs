//! One request in, one response out: auth, route lookup ([`crate::routes::ROUTES`]),
//! handlers. No sockets here, so it is tested with plain `Request` values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use serde::Serialize;
use summoner::metrics::Format;

use crate::body;
use crate::control::Control;
use crate::error::{ErrorCode, HttpError};
use crate::models;
use crate::routes::{self, Endpoint};

/// Timing knobs of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long `DELETE /v1/services/{name}` lets in-flight requests finish.
    pub drain_grace: Duration,
    /// How long a replaced service's in-flight requests may finish (`PUT` on an existing
    /// name) before the new config takes over.
    pub replace_grace: Duration,
    /// Longest a client may take to send a request body.
    pub body_timeout: Duration,
    /// Largest artifact upload (`POST /v1/artifacts`); every other body is limited to
    /// [`body::MAX_BODY_BYTES`].
    pub max_upload: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drain_grace: Duration::from_secs(10),
            replace_grace: Duration::from_secs(2),
            body_timeout: body::BODY_TIMEOUT,
            max_upload: body::MAX_UPLOAD_BYTES,
        }
    }
}

/// The API's request handler over a [`Control`].
pub struct Router<C> {
    pub(crate) control: Arc<C>,
    pub(crate) settings: Settings,
    /// Serializes changes (PUT, DELETE) of each service so a replacement is never
    /// interleaved; changes of different services run side by side.
    pub(crate) changes: ChangeLocks,
    /// Shared by service changes, exclusive for an artifact's removal: a service cannot
    /// start using an artifact while it is being removed.
    pub(crate) artifacts_lock: Arc<tokio::sync::RwLock<()>>,
}

/// A JSON response.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(mut text) => {
            text.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => HttpError::new(
            ErrorCode::Internal,
            format!("cannot encode the response: {e}"),
        )
        .into_response(),
    }
}

fn no_content() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

pub(crate) fn service_not_found(name: &str) -> HttpError {
    HttpError::new(
        ErrorCode::ServiceNotFound,
        format!("there is no service named {name:?}"),
    )
}

fn vm_not_found(id: &str) -> HttpError {
    HttpError::new(
        ErrorCode::VmNotFound,
        format!("there is no live VM with id {id:?}"),
    )
}

impl<C: Control> Router<C> {
    /// A router over `control`.
    pub fn new(control: Arc<C>, settings: Settings) -> Self {
        Self {
            control,
            settings,
            changes: ChangeLocks::default(),
            artifacts_lock: Arc::default(),
        }
    }

    /// Answer one request. With `token`, the request must carry `Authorization: Bearer
    /// <token>` (the TCP listener); without, no auth (the Unix socket).
    pub async fn handle<B>(&self, req: Request<B>, token: Option<&str>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = self
            .dispatch(req, token)
            .await
            .unwrap_or_else(HttpError::into_response);
        let status = resp.status().as_u16();
        let us = started.elapsed().as_micros() as u64;
        if resp.status().is_server_error() {
            tracing::warn!(%method, %path, status, us, "control API request failed");
        } else {
            tracing::debug!(%method, %path, status, us, "control API request");
        }
        resp
    }

    async fn dispatch<B>(
        &self,
        req: Request<B>,
        token: Option<&str>,
    ) -> Result<Response<Full<Bytes>>, HttpError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(token) = token {
            if !crate::auth::authorized(req.headers(), token) {
                return Err(HttpError::unauthorized());
            }
        }
        let path = req.uri().path().to_string();
        let matched = routes::find(req.method().as_str(), &path)?;
        let param = matched.param.unwrap_or_default();
        let c = &*self.control;
        Ok(match matched.endpoint {
            Endpoint::Health => json(StatusCode::OK, &health()),
            Endpoint::Version => json(StatusCode::OK, &version()),
            Endpoint::ListServices => json(StatusCode::OK, &self.service_list()),
            Endpoint::GetService => {
                let s = c.service(param).ok_or_else(|| service_not_found(param))?;
                json(StatusCode::OK, &crate::persist::shown(c, s))
            }
            Endpoint::PutService => self.put_from_body(req, Some(param)).await?,
            Endpoint::CreateService => self.put_from_body(req, None).await?,
            Endpoint::RollbackService => self.rollback_service(param).await?,
            Endpoint::UploadArtifact => self.upload_artifact(req).await?,
            Endpoint::ListArtifacts => self.list_artifacts()?,
            Endpoint::DeleteArtifact => {
                self.delete_artifact(param).await?;
                no_content()
            }
            Endpoint::DeleteService => {
                self.delete_service(param).await?;
                no_content()
            }
            Endpoint::ListVms => json(StatusCode::OK, &self.vm_list()),
            Endpoint::GetVm => {
                let vm = c.vm(param).ok_or_else(|| vm_not_found(param))?;
                json(StatusCode::OK, &models::Vm::from(vm))
            }
            Endpoint::DeleteVm => {
                if !c.kill_vm(param) {
                    return Err(vm_not_found(param));
                }
                tracing::info!(vm = %param, "VM killed through the control API");
                no_content()
            }
            Endpoint::Drain => {
                let started = c.drain();
                tracing::info!(started, "drain requested through the control API");
                let status = "draining".into();
                json(StatusCode::ACCEPTED, &models::Drain { status, started })
            }
            Endpoint::Metrics => self.metrics(req.headers()),
        })
    }

    /// `PUT /v1/services/{name}` (`name` given: create or replace) or `POST /v1/services`
    /// (the name is in the body; 409 if it exists), from a JSON body.
    async fn put_from_body<B>(
        &self,
        req: Request<B>,
        name: Option<&str>,
    ) -> Result<Response<Full<Bytes>>, HttpError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        body::require_json(req.headers())?;
        let (parts, b) = req.into_parts();
        let bytes = body::read(&parts.headers, b, self.settings.body_timeout).await?;
        let create = name.is_none();
        let name = match name {
            Some(name) => name.to_string(),
            None => body::name_in(&bytes)?,
        };
        let config = body::service_config(&name, &bytes)?;
        self.put_service(config, create).await
    }

    /// Every service as `GET /v1/services` shows it.
    fn service_list(&self) -> models::ServiceList {
        let c = &*self.control;
        let services = c
            .services()
            .into_iter()
            .map(|s| crate::persist::shown(c, s))
            .collect();
        models::ServiceList { services }
    }

    /// Every live VM, sorted by id.
    fn vm_list(&self) -> models::VmList {
        let mut vms: Vec<models::Vm> = self.control.vms().into_iter().map(Into::into).collect();
        vms.sort_by(|a, b| a.id.cmp(&b.id));
        models::VmList { vms }
    }

    /// Prometheus text in the format the `Accept` header asks for.
    fn metrics(&self, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
        // A header value that is not visible ASCII cannot name a media type we serve; it is
        // skipped like any other unknown one.
        let format = Format::negotiate(
            headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let mut resp = Response::new(Full::new(Bytes::from(self.control.metrics_text(format))));
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        // The body depends on Accept: a cache in between must not mix them up.
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
        resp
    }
}

fn health() -> models::Health {
    models::Health {
        status: "ok".into(),
    }
}

fn version() -> models::Version {
    models::Version {
        version: env!("CARGO_PKG_VERSION").into(),
        api: "v1".into(),
    }
}

/// One lock per service name: a slow creation (a template boot, a compile) of one service
/// never holds up a change of another.
#[derive(Default, Clone)]
pub(crate) struct ChangeLocks(
    Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
);

impl ChangeLocks {
    /// The lock of service `name`.
    pub(crate) fn of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Drop the locks nobody holds or waits for, so the map stays as small as the
        // changes in flight.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(name.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests;
