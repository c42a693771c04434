//! `dust bench [URL]`: N requests at concurrency C after a warm-up, each on a new connection,
//! timing connect -> last byte on the client and reading the server's `Server-Timing`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// One measured request.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Client-side connect -> last byte, ms.
    pub client_ms: f64,
    /// HTTP status (0: transport error).
    pub status: u16,
    /// Server-Timing phases, ms.
    pub phases: BTreeMap<String, f64>,
    /// Whether the server had a pre-built shell waiting (from Server-Timing spawn desc).
    pub warm: Option<bool>,
}

/// Parse `name;dur=1.5;desc="x", ...`.
pub fn parse_server_timing(v: &str) -> (BTreeMap<String, f64>, Option<bool>) {
    let mut phases = BTreeMap::new();
    let mut warm = None;
    for metric in v.split(',') {
        let mut parts = metric.trim().split(';');
        let Some(name) = parts.next().map(str::trim).filter(|n| !n.is_empty()) else {
            continue;
        };
        for p in parts {
            let p = p.trim();
            if let Some(d) = p.strip_prefix("dur=") {
                if let Ok(d) = d.parse::<f64>() {
                    phases.insert(name.to_string(), d);
                }
            } else if let Some(desc) = p.strip_prefix("desc=") {
                if name == "spawn" {
                    warm = Some(desc.trim_matches('"') == "warm");
                }
            }
        }
    }
    (phases, warm)
}

/// Where to send requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// host:port.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Parse an `http://host:port/path` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("bad URL {url:?}: only http:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("bad URL {url:?}: no host"))?
            .to_string();
        let authority = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:80")
        };
        let path = uri.path_and_query().map_or("/".into(), |p| p.to_string());
        Ok(Self { authority, path })
    }
}

async fn one(target: &Target) -> Sample {
    let t0 = Instant::now();
    let result: Result<(u16, Option<String>), String> = async {
        let tcp = tokio::net::TcpStream::connect(&target.authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(target.path.as_str())
            .header(hyper::header::HOST, target.authority.as_str())
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let timing = resp
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, timing))
    }
    .await;
    let client_ms = t0.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok((status, timing)) => {
            let (phases, warm) = timing
                .as_deref()
                .map(parse_server_timing)
                .unwrap_or_default();
            Sample {
                client_ms,
                status,
                phases,
                warm,
            }
        }
        Err(e) => {
            tracing::debug!("request failed: {e}");
            Sample {
                client_ms,
                status: 0,
                phases: BTreeMap::new(),
                warm: None,
            }
        }
    }
}

/// Run `n` requests at concurrency `c`; `progress` is told after each.
pub async fn drive(
    target: Arc<Target>,
    n: usize,
    c: usize,
    progress: impl Fn() + Send + Sync + 'static,
) -> (Vec<Sample>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c.max(1) {
        let (target, next, progress) = (target.clone(), next.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                out.push(one(&target).await);
                progress();
            }
            out
        }));
    }
    let mut samples = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(s) = t.await {
            samples.extend(s);
        }
    }
    (samples, t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_timing() {
        let (p, warm) = parse_server_timing(
            "queue;dur=0.010, spawn;dur=0.002;desc=\"warm\", boot;dur=1.5, total;dur=3",
        );
        assert_eq!(p["boot"], 1.5);
        assert_eq!(p["total"], 3.0);
        assert_eq!(p.len(), 4);
        assert_eq!(warm, Some(true));
    }

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/x?y=1").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/x?y=1")
        );
        assert!(Target::parse("https://a/").is_err());
        assert_eq!(Target::parse("http://a").unwrap().authority, "a:80");
    }
}
