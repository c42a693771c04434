//! The client side of remote deploys: reaching the daemon on its socket or over TCP with
//! a bearer token, and uploading a local module or image (`POST /v1/artifacts`) so that a
//! service can name it by digest wherever the client runs.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::client::{send, CliError, Conn};

/// The TCP API's token: `$DUST_API_TOKEN`, else the content of `--token-file`.
fn token(conn: &Conn) -> Result<String, CliError> {
    if let Ok(t) = std::env::var("DUST_API_TOKEN") {
        return Ok(t.trim().to_string());
    }
    let Some(file) = &conn.token_file else {
        return Err(CliError::argument(
            "--api-tcp needs the daemon's token: set $DUST_API_TOKEN or give --token-file".into(),
        ));
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::argument(format!("--token-file {}: {e}", file.display())))?;
    Ok(text.trim().to_string())
}

/// A connection to the daemon, the token to send (TCP only), and where it goes (for
/// messages).
pub(super) async fn connect(
    conn: &Conn,
) -> Result<(SendRequest<Full<Bytes>>, Option<String>, String), CliError> {
    let unreachable = |place: &str, e: &dyn std::fmt::Display| {
        CliError::new(
            "daemon_unreachable",
            format!("cannot reach the dust daemon at {place}: {e} (is `dust serve` running?)"),
        )
    };
    if let Some(addr) = &conn.api_tcp {
        let token = token(conn)?;
        let place = format!("tcp {addr}");
        let stream = tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| unreachable(&place, &e))?;
        let (send, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&place, &e))?;
        tokio::spawn(c);
        return Ok((send, Some(token), place));
    }
    let sock = conn.socket.clone().unwrap_or_else(api::default_socket_path);
    let place = sock.display().to_string();
    let stream = tokio::net::UnixStream::connect(&sock)
        .await
        .map_err(|e| unreachable(&place, &e))?;
    let (send, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&place, &e))?;
    tokio::spawn(c);
    Ok((send, None, place))
}

/// What a service names for the file `path` given as `flag`: a `sha256:<hex>` as is, else
/// the digest the daemon answers for the file's bytes.
pub(super) async fn upload(conn: &Conn, flag: &str, path: &Path) -> Result<PathBuf, CliError> {
    let given = path.to_string_lossy();
    if given.starts_with(summoner::state::artifacts::SCHEME) {
        return Ok(path.to_path_buf());
    }
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::argument(format!("{flag} {}: {e}", path.display())))?;
    let ctype = if bytes.starts_with(b"\0asm") {
        "application/wasm"
    } else {
        "application/octet-stream"
    };
    let r = send(
        conn,
        "POST",
        "/v1/artifacts",
        Some((ctype, Bytes::from(bytes))),
    )
    .await?;
    if r.status != 200 && r.status != 201 {
        let e = CliError::api(&r);
        return Err(CliError::new(
            e.code(),
            format!("{flag} {}: {}", path.display(), e.message()),
        ));
    }
    let up: api::models::Uploaded = serde_json::from_slice(&r.body).map_err(|e| {
        CliError::new(
            "bad_answer",
            format!("cannot read the daemon's answer: {e}"),
        )
    })?;
    Ok(PathBuf::from(up.digest))
}
