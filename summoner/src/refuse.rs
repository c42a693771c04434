//! Refusing a connection over a service's or the daemon's connection limits: a 503 on the
//! wire, in the protocol the client speaks (HTTP/2 when it opens with the preface, else
//! HTTP/1.1), then close. No VM is involved.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// What a refused connection is told.
const REFUSED_BODY: &str = "dust: too many open connections\n";
/// How long a refused connection may take to be answered.
const REFUSE_TIME: Duration = Duration::from_secs(1);
/// How long a refused connection's first bytes are waited for, to tell HTTP/2 from HTTP/1.1;
/// a client that has sent nothing by then is answered in HTTP/1.1.
const PREFACE_TIME: Duration = Duration::from_millis(250);

/// Answer a connection over the limits with a 503 and close it: in HTTP/2 if it opens with
/// the HTTP/2 preface, else in HTTP/1.1.
pub(crate) async fn refuse(tcp: TcpStream, _slot: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSE_TIME, async {
        let h2 = tokio::time::timeout(PREFACE_TIME, opens_with_h2_preface(&tcp)).await;
        if h2 == Ok(true) {
            refuse_h2(tcp).await;
        } else {
            refuse_h1(tcp).await;
        }
    })
    .await;
}

/// Whether the client's first bytes are the HTTP/2 preface (looked at, not consumed).
async fn opens_with_h2_preface(tcp: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    let mut seen = 0;
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        if n == seen {
            // peek returns what is queued at once: wait a moment for the rest.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen = n;
    }
}

async fn refuse_h1(mut tcp: TcpStream) {
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{REFUSED_BODY}",
        REFUSED_BODY.len()
    );
    // Answer, then read what the client sent until it closes: closing with unread data
    // would reset the connection before the client reads the 503.
    let answer = async {
        tcp.write_all(resp.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = answer.await;
}

/// Every stream the client opens before the connection goes away is answered 503; the
/// connection is told GOAWAY as soon as the first answer is sent.
async fn refuse_h2(tcp: TcpStream) {
    use http_body_util::Full;

    let answered = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let answered = answered.clone();
        hyper::service::service_fn(move |_req| {
            answered.notify_one();
            let body = Full::new(bytes::Bytes::from_static(REFUSED_BODY.as_bytes()));
            let resp = http::Response::builder()
                .status(http::StatusCode::SERVICE_UNAVAILABLE)
                .header(http::header::CONTENT_TYPE, "text/plain")
                .header(http::header::RETRY_AFTER, "1")
                .body(body);
            async move { resp }
        })
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(1)
        .serve_connection(TokioIo::new(tcp), handler);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = answered.notified() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
