//! Errors: [`ApiError`] for setting the server up, [`HttpError`] for one request's answer
//! (`{"error": {"code": "...", "message": "..."}}` with its status).

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// Why the API server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not called inside a tokio runtime.
    #[error("the control API must be bound inside a tokio runtime")]
    NoRuntime,
    /// The socket's directory could not be created.
    #[error("control socket directory {path}: {source}")]
    SocketDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process answers on the socket.
    #[error("control socket {0} is in use: another dust daemon answers on it")]
    SocketInUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("control socket {0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// The Unix socket could not be bound.
    #[error("control socket {path}: {source}")]
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TCP address could not be bound.
    #[error("control API on {addr}: {source}")]
    Tcp {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A TCP listener without a usable token.
    #[error("the TCP control listener needs a non-empty bearer token without whitespace")]
    BadToken,
}

/// The `code` of an error answer. Each has one HTTP status; `docs/api/openapi.yaml` lists
/// them all (a test checks that against [`ErrorCode::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 404: no route serves the path.
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 401: TCP request without the right bearer token.
    Unauthorized,
    /// 404: no service of that name.
    ServiceNotFound,
    /// 404: no live VM with that id.
    VmNotFound,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 408: the body came too slowly.
    RequestTimeout,
    /// 400: the body could not be read.
    UnreadableBody,
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: the JSON is not a service config (serde refused it).
    InvalidBody,
    /// 422: the config parses but cannot run.
    InvalidConfig,
    /// 422: the body's name is not the path's.
    NameMismatch,
    /// 409: the service exists (lost a race with another request).
    AlreadyExists,
    /// 409: the listen address is taken.
    AddressInUse,
    /// 409: the listen address cannot be bound for another reason.
    CannotListen,
    /// 404: no stored artifact with that digest.
    ArtifactNotFound,
    /// 409: the artifact is used by a service (or by its rollback).
    ArtifactInUse,
    /// 422: the upload is neither a usable wasm module nor a bootable image.
    InvalidArtifact,
    /// 409: the service has no previous definition to roll back to.
    NoPrevious,
    /// 404: this daemon keeps no state directory (artifacts, rollback).
    NoState,
    /// 500: the change was made but could not be written to the state directory.
    StateWrite,
    /// 500: a bug.
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthorized,
        ErrorCode::ServiceNotFound,
        ErrorCode::VmNotFound,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::UnreadableBody,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidBody,
        ErrorCode::InvalidConfig,
        ErrorCode::NameMismatch,
        ErrorCode::AlreadyExists,
        ErrorCode::AddressInUse,
        ErrorCode::CannotListen,
        ErrorCode::ArtifactNotFound,
        ErrorCode::ArtifactInUse,
        ErrorCode::InvalidArtifact,
        ErrorCode::NoPrevious,
        ErrorCode::NoState,
        ErrorCode::StateWrite,
        ErrorCode::Internal,
    ];

    /// The snake_case word sent as `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ServiceNotFound => "service_not_found",
            ErrorCode::VmNotFound => "vm_not_found",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnreadableBody => "unreadable_body",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::NameMismatch => "name_mismatch",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::AddressInUse => "address_in_use",
            ErrorCode::CannotListen => "cannot_listen",
            ErrorCode::ArtifactNotFound => "artifact_not_found",
            ErrorCode::ArtifactInUse => "artifact_in_use",
            ErrorCode::InvalidArtifact => "invalid_artifact",
            ErrorCode::NoPrevious => "no_previous",
            ErrorCode::NoState => "no_state",
            ErrorCode::StateWrite => "state_write",
            ErrorCode::Internal => "internal",
        }
    }

    /// Its HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NotFound
            | ErrorCode::ServiceNotFound
            | ErrorCode::VmNotFound
            | ErrorCode::ArtifactNotFound
            | ErrorCode::NoState => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::UnreadableBody | ErrorCode::InvalidJson | ErrorCode::InvalidBody => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::InvalidConfig | ErrorCode::NameMismatch | ErrorCode::InvalidArtifact => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::AlreadyExists
            | ErrorCode::AddressInUse
            | ErrorCode::CannotListen
            | ErrorCode::ArtifactInUse
            | ErrorCode::NoPrevious => StatusCode::CONFLICT,
            ErrorCode::Internal | ErrorCode::StateWrite => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One request's error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    code: ErrorCode,
    /// A sentence for people, naming the problem.
    pub message: String,
    /// `Allow` header value (405 only).
    allow: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: &'a str,
    message: &'a str,
}

impl HttpError {
    /// An error with `code` (which sets the status) and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// Its code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The `Allow` header (405 only).
    pub fn allow(&self) -> Option<&str> {
        self.allow.as_deref()
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no such endpoint: {path}"))
    }

    /// 405 with the methods the path accepts.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &[&str]) -> Self {
        let allow = allowed.join(", ");
        Self {
            code: ErrorCode::MethodNotAllowed,
            message: format!("{method} is not allowed on {path}; use {allow}"),
            allow: Some(allow),
        }
    }

    /// 401 for a missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "this listener needs an \"Authorization: Bearer <token>\" header with the daemon's API token",
        )
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code.as_str(),
                message: &self.message,
            },
        };
        let mut text = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.to_vec()
        });
        text.push(b'\n');
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        if self.code == ErrorCode::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "{s}");
            assert!(c.status().is_client_error() || c.status().is_server_error());
        }
    }
}
