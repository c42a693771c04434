//! Where `dust serve` puts its control API: the Unix socket, and TCP with a bearer token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use summoner::config::ApiConfig;

/// Where the control API listens, from the flags over the file's `[api]`.
pub struct ApiPlace {
    socket: PathBuf,
    tcp: Option<(SocketAddr, String)>,
    max_upload: usize,
}

impl ApiPlace {
    /// Where `config` (flags over the file) puts the API; reads the token now, so that a
    /// token file the daemon cannot use stops it before anything listens.
    pub fn resolve(config: &ApiConfig) -> Result<Self, String> {
        let socket = config
            .socket
            .clone()
            .unwrap_or_else(api::default_socket_path);
        let tcp = match config.tcp {
            Some(addr) => Some((addr, api_token(config.token_file.as_deref())?)),
            None => None,
        };
        let max_upload = config
            .max_upload_mib
            .map_or(api::body::MAX_UPLOAD_BYTES, |m| m.saturating_mul(1 << 20));
        Ok(Self {
            socket,
            tcp,
            max_upload,
        })
    }
}

/// The TCP API's bearer token: `$DUST_API_TOKEN`, else the content of `token_file`.
fn api_token(token_file: Option<&Path>) -> Result<String, String> {
    if let Ok(t) = std::env::var("DUST_API_TOKEN") {
        return Ok(t);
    }
    let Some(path) = token_file else {
        return Err(
            "the TCP API needs a token: set $DUST_API_TOKEN or [api] token_file".to_string(),
        );
    };
    use std::os::unix::fs::PermissionsExt;
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("token_file {name}: {e}"))?;
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "token_file {name}: readable by every user (mode {:o}); chmod o-r it",
            mode & 0o7777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("token_file {name}: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token_file {name}: empty"));
    }
    Ok(token.to_string())
}

pub fn bind_api(place: ApiPlace, grace: Duration) -> Result<api::ApiServer, String> {
    let settings = api::Settings {
        drain_grace: grace,
        max_upload: place.max_upload,
        ..Default::default()
    };
    api::ApiServer::bind(&place.socket, place.tcp)
        .map(|a| a.with_settings(settings))
        .map_err(|e| e.to_string())
}
