//! dust's control API: HTTP/1.1 (hyper) with JSON bodies, on a Unix socket (mode 0600) and,
//! optionally, on TCP with a bearer token. `docs/api/openapi.yaml` is the contract; a test
//! holds [`routes::ROUTES`] and the spec to each other.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/health` | `{"status":"ok"}` |
//! | `GET /v1/version` | `{"version":"0.1.0","api":"v1"}` |
//! | `GET /v1/services` | `{"services":[...]}`: config, bound `address`, live `stats` |
//! | `POST /v1/services` | create only: 201, or 409 `already_exists` if the name exists |
//! | `GET /v1/services/{name}` | one service (404 `service_not_found`) |
//! | `PUT /v1/services/{name}` | create (201) or replace live (200); body = service config, `name` optional |
//! | `DELETE /v1/services/{name}` | drain and stop (204); the port is closed when it answers |
//! | `POST /v1/services/{name}/rollback` | bring back the definition before the last replacement |
//! | `POST /v1/artifacts` | store a wasm module or image (raw bytes): 201 `{"digest":"sha256:..."}` |
//! | `GET /v1/artifacts` | `{"artifacts":[...]}`: digest, size, users |
//! | `DELETE /v1/artifacts/{digest}` | remove it (204; 409 while a service uses it) |
//! | `GET /v1/vms` | `{"vms":[...]}`: id, service, phase, age_ms, pid |
//! | `GET /v1/vms/{id}` | one VM (404 `vm_not_found`) |
//! | `DELETE /v1/vms/{id}` | kill it (204; its client gets 502) |
//! | `GET /metrics` | Prometheus text 0.0.4, or OpenMetrics 1.0.0 when `Accept` prefers it |
//! | `POST /v1/drain` | 202: drain and stop the daemon, as SIGTERM does (`/healthz` turns 503 at once) |
//!
//! Every error is `{"error":{"code":"snake_case","message":"a sentence"}}`.
//!
//! Every service change is written to the daemon's state directory before the answer
//! (`persist.rs`, [`summoner::state`]); a service may name an uploaded artifact as
//! `sha256:<hex>` in `wasm` or `image` (`artifacts.rs`).
//!
//! - [`control`]: the [`Control`] trait, the seam to the summoner ([`summoner_impl`]).
//! - [`server`]: [`ApiServer`], the listeners and graceful stop.
//! - [`router`], [`routes`], [`services`]: dispatch, the route table, create/replace.
//! - [`body`], [`auth`], [`error`], [`models`]: bodies, tokens, errors, JSON types.

pub(crate) mod artifacts;
pub mod auth;
pub mod body;
pub mod control;
pub mod error;
pub mod models;
pub(crate) mod persist;
pub mod router;
pub mod routes;
pub mod server;
pub mod services;
pub mod summoner_impl;

#[cfg(test)]
mod fake;

pub use control::{Control, ServiceStatus};
pub use error::{ApiError, ErrorCode, HttpError};
pub use router::{Router, Settings};
pub use routes::{Endpoint, Route, ROUTES};
pub use server::{default_socket_path, ApiServer};
