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

/// One request's error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code for programs.
    pub code: &'static str,
    /// A sentence for people, naming the problem.
    pub message: String,
    /// `Allow` header value (405 only).
    pub allow: Option<String>,
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
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        )
    }

    /// 405 with the methods the path accepts.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &[&str]) -> Self {
        let allow = allowed.join(", ");
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: format!("{method} is not allowed on {path}; use {allow}"),
            allow: Some(allow),
        }
    }

    /// 401 for a missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this listener needs an \"Authorization: Bearer <token>\" header with the daemon's API token",
        )
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: &self.message,
            },
        };
        let mut text = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.to_vec()
        });
        text.push(b'\n');
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
