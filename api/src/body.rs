//! Request bodies: Content-Type, size limit, read deadline, JSON, and the `PUT` service
//! config (whose `name` may be left out: the path supplies it).
//!
//! The split of status codes: 415 wrong media type, 413 too large, 408 too slow, 400 when
//! serde refuses the body (bad JSON, unknown or missing field, wrong type), 422 when serde
//! accepts it but the config does not hold up ([`ServiceConfig::validate`], name mismatch).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use summoner::ServiceConfig;

use crate::error::{ErrorCode, HttpError};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// 415 unless the Content-Type is `application/json` (parameters such as charset allowed).
pub fn require_json(headers: &HeaderMap) -> Result<(), HttpError> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let is_json = got.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if is_json {
        return Ok(());
    }
    let got = match got {
        Some(ct) => format!("got {ct:?}"),
        None => "got none".to_string(),
    };
    Err(HttpError::new(
        ErrorCode::UnsupportedMediaType,
        format!("the request body must be JSON: send Content-Type: application/json ({got})"),
    ))
}

/// Largest artifact upload accepted by default (`--max-upload`).
pub const MAX_UPLOAD_BYTES: usize = 64 * 1024 * 1024;

fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than {limit} bytes"),
    )
}

/// 415 unless the Content-Type is `application/wasm` or `application/octet-stream` (an
/// artifact upload).
pub fn require_binary(headers: &HeaderMap) -> Result<(), HttpError> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media = got
        .as_deref()
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    if matches!(
        media.as_deref(),
        Some("application/wasm" | "application/octet-stream")
    ) {
        return Ok(());
    }
    Err(HttpError::new(
        ErrorCode::UnsupportedMediaType,
        "an artifact is sent as its raw bytes: use Content-Type: application/wasm or \
         application/octet-stream",
    ))
}

/// The whole body, at most [`MAX_BODY_BYTES`], within `timeout`.
pub async fn read<B>(headers: &HeaderMap, body: B, timeout: Duration) -> Result<Bytes, HttpError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_upto(headers, body, timeout, MAX_BODY_BYTES).await
}

/// The whole body, at most `limit` bytes (else 413), within `timeout`.
pub async fn read_upto<B>(
    headers: &HeaderMap,
    body: B,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, HttpError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(HttpError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => Err(HttpError::new(
            ErrorCode::UnreadableBody,
            format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The service config of `PUT /v1/services/{name}`: JSON, `name` filled from the path when
/// missing, a different `name` refused (422). Not yet validated.
/// The `name` a `POST /v1/services` body must carry.
pub fn name_in(bytes: &[u8]) -> Result<String, HttpError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    match value.get("name") {
        Some(Value::String(n)) => Ok(n.clone()),
        _ => Err(HttpError::new(
            ErrorCode::InvalidBody,
            "the body must name the service: \"name\" is a required string".to_string(),
        )),
    }
}

pub fn service_config(path_name: &str, bytes: &[u8]) -> Result<ServiceConfig, HttpError> {
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    let Some(obj) = value.as_object_mut() else {
        return Err(HttpError::new(
            ErrorCode::InvalidBody,
            format!(
                "the request body must be a JSON object (a service config), not {}",
                kind(&value)
            ),
        ));
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), Value::String(path_name.to_string()));
        }
        Some(Value::String(n)) if n != path_name => {
            return Err(HttpError::new(
                ErrorCode::NameMismatch,
                format!(
                    "the body names service {n:?} but the path names {path_name:?}; \
                     leave \"name\" out or make them match"
                ),
            ));
        }
        Some(_) => {}
    }
    integral_numbers_as_integers(obj);
    serde_json::from_value(value).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidBody,
            format!("the request body is not a valid service config: {e}"),
        )
    })
}

/// JSON Schema, and so the API spec, counts a number with a zero fraction (`4159.0`,
/// `4.159e3`) as an integer; serde would refuse it for an integer field. Such numbers among
/// the config's fields (all its numbers are top-level) become the integers they equal, so
/// that the server takes what the spec admits. Other fractions are left for serde to refuse.
fn integral_numbers_as_integers(obj: &mut serde_json::Map<String, Value>) {
    // 2^64: every integral f64 below it converts to u64 exactly.
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    for v in obj.values_mut() {
        let Value::Number(n) = v else { continue };
        if !n.is_f64() {
            continue;
        }
        if let Some(f) = n.as_f64() {
            if f.fract() == 0.0 && (0.0..U64_END).contains(&f) {
                *v = Value::from(f as u64);
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};
    use http_body_util::Full;

    fn headers(ct: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h
    }

    #[test]
    fn content_type_must_be_json() {
        assert!(require_json(&headers(Some("application/json"))).is_ok());
        assert!(require_json(&headers(Some("Application/JSON; charset=utf-8"))).is_ok());
        for ct in [None, Some("text/plain"), Some("application/jsonx")] {
            let e = require_json(&headers(ct)).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        }
    }

    #[tokio::test]
    async fn body_limit_is_enforced_with_and_without_content_length() {
        let big = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
        let e = read(&HeaderMap::new(), Full::new(big.clone()), BODY_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999999"));
        let e = read(&h, Full::new(Bytes::new()), BODY_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let ok = Bytes::from(vec![b' '; MAX_BODY_BYTES]);
        assert_eq!(
            read(&HeaderMap::new(), Full::new(ok), BODY_TIMEOUT)
                .await
                .unwrap()
                .len(),
            MAX_BODY_BYTES
        );
    }

    #[test]
    fn name_comes_from_the_path_when_missing() {
        let c = service_config("hello", br#"{"listen":"127.0.0.1:1","image":"/x"}"#).unwrap();
        assert_eq!(c.name, "hello");
        let c = service_config(
            "hello",
            br#"{"name":"hello","listen":"127.0.0.1:1","image":"/x"}"#,
        )
        .unwrap();
        assert_eq!(c.name, "hello");
        let e = service_config(
            "hello",
            br#"{"name":"other","listen":"127.0.0.1:1","image":"/x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code(), ErrorCode::NameMismatch);
    }

    #[test]
    fn integral_numbers_count_as_integers_as_in_json_schema() {
        let c = service_config(
            "a",
            br#"{"listen":"127.0.0.1:1","wasm":"/h.wasm","memory_mib":4159.0,"max_connections":4.159e3,"fuel":1e19}"#,
        )
        .unwrap();
        assert_eq!((c.memory_mib, c.max_connections), (4159, 4159));
        let fuel = c.wasm_workload().and_then(|w| w.fuel);
        assert_eq!(fuel, Some(10_000_000_000_000_000_000));
        for bad in [
            r#"{"listen":"127.0.0.1:1","memory_mib":4159.5}"#,
            r#"{"listen":"127.0.0.1:1","memory_mib":-1.0}"#,
            r#"{"listen":"127.0.0.1:1","fuel":1.8446744073709552e19}"#,
            r#"{"listen":"127.0.0.1:1","irqchip":1.0}"#,
        ] {
            let e = service_config("a", bad.as_bytes()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidBody, "{bad}: {}", e.message);
        }
    }

    #[test]
    fn serde_errors_are_400_with_serdes_message() {
        let e = service_config("a", b"{\"listen\": ").unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidJson);
        assert!(e.message.contains("line 1"), "{}", e.message);
        let e =
            service_config("a", br#"{"listen":"127.0.0.1:1","image":"/x","port":3}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidBody);
        assert!(e.message.contains("unknown field `port`"), "{}", e.message);
        let e = service_config("a", br#"{"image":"/x"}"#).unwrap_err();
        assert!(e.message.contains("listen"), "{}", e.message);
        let e = service_config("a", b"[1]").unwrap_err();
        assert!(e.message.contains("an array"), "{}", e.message);
    }
}
