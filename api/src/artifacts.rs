//! `POST /v1/artifacts`, `GET /v1/artifacts`, `DELETE /v1/artifacts/{digest}`: wasm modules
//! and guest images sent as their bytes, stored by digest in the state directory
//! ([`summoner::state::Artifacts`]), so that a client on another machine can deploy them.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use summoner::state::{Artifacts, Digest};

use crate::body;
use crate::control::Control;
use crate::error::{ErrorCode, HttpError};
use crate::models;
use crate::persist::{artifact_error, state};
use crate::router::{json, Router};

impl<C: Control> Router<C> {
    /// Store the body (checked as a wasm module or guest image): 201, or 200 if it was
    /// already stored.
    pub(crate) async fn upload_artifact<B>(
        &self,
        req: Request<B>,
    ) -> Result<Response<Full<Bytes>>, HttpError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let store = state(&*self.control)?.artifacts.clone();
        body::require_binary(req.headers())?;
        let (parts, b) = req.into_parts();
        let bytes = body::read_upto(
            &parts.headers,
            b,
            self.settings.body_timeout,
            self.settings.max_upload,
        )
        .await?;
        let size = bytes.len() as u64;
        let stored = tokio::task::spawn_blocking(move || store.store(&bytes))
            .await
            .map_err(|e| HttpError::new(ErrorCode::Internal, format!("the upload failed: {e}")))?;
        let (digest, new) = stored.map_err(artifact_error)?;
        tracing::info!(%digest, size, new, "artifact uploaded (control API)");
        let status = if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(json(
            status,
            &models::Uploaded {
                digest: digest.to_string(),
                size,
            },
        ))
    }

    /// Which services use which artifact: the state's records (now and for rollback) and
    /// the running services.
    fn artifact_users(&self) -> Result<BTreeMap<String, Vec<String>>, HttpError> {
        let s = state(&*self.control)?;
        let mut users = s.users();
        for svc in self.control.services() {
            let config = s.artifacts.unresolve(&svc.config);
            for d in Artifacts::references(&config) {
                let names = users.entry(d).or_default();
                if !names.contains(&config.name) {
                    names.push(config.name.clone());
                }
            }
        }
        Ok(users)
    }

    /// Every stored artifact with its size and users.
    pub(crate) fn list_artifacts(&self) -> Result<Response<Full<Bytes>>, HttpError> {
        let s = state(&*self.control)?;
        let mut users = self.artifact_users()?;
        let stored = s.artifacts.list().map_err(|e| artifact_error(e.into()))?;
        let artifacts = stored
            .into_iter()
            .map(|a| {
                let digest = a.digest.to_string();
                let mut names = users.remove(&digest).unwrap_or_default();
                names.sort();
                models::Artifact {
                    digest,
                    size: a.size,
                    users: names,
                }
            })
            .collect();
        Ok(json(StatusCode::OK, &models::ArtifactList { artifacts }))
    }

    /// Remove an artifact no service uses (409 while one does).
    pub(crate) async fn delete_artifact(&self, digest: &str) -> Result<(), HttpError> {
        let s = state(&*self.control)?;
        // A client may percent-encode the colon.
        let digest = digest.replace("%3A", ":").replace("%3a", ":");
        let d = Digest::parse(&digest).ok_or_else(|| {
            HttpError::new(
                ErrorCode::ArtifactNotFound,
                format!("no artifact {digest:?}: digests look like sha256:<64 hex digits>"),
            )
        })?;
        // No service change may start using it meanwhile.
        let _change = self.artifacts_lock.write().await;
        if let Some(names) = self.artifact_users()?.get(&d.to_string()) {
            return Err(HttpError::new(
                ErrorCode::ArtifactInUse,
                format!(
                    "artifact {d} is used by {}; remove or replace them first",
                    names.join(", ")
                ),
            ));
        }
        match s.artifacts.remove(&d) {
            Ok(true) => {
                tracing::info!(digest = %d, "artifact removed (control API)");
                Ok(())
            }
            Ok(false) => Err(artifact_error(summoner::state::ArtifactError::NotFound(d))),
            Err(e) => Err(artifact_error(e.into())),
        }
    }
}
