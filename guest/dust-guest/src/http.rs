//! A minimal HTTP/1.1 server side over [`vsock`](crate::vsock) streams: [`serve`] runs the
//! accept/parse/respond loop around a handler; underneath, [`read_request`] reads one
//! request (head parsed by httparse, then a `Content-Length` or chunked body) and
//! [`write_response`] writes one response.
//!
//! Parsing is the expensive part on an emulating KVM (a few ms for a small head), so the
//! head is parsed once, when its blank line has arrived, never on every partial read.

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::vsock::{self, Stream, Vsock};

mod chunked;
mod serve;

pub use serve::{Response, serve};

/// Largest request head accepted (the summoner's front door refuses larger ones first).
pub const MAX_HEAD: usize = dust_abi::http::MAX_HEAD;
/// Largest request body accepted.
pub const MAX_BODY: usize = dust_abi::http::MAX_BODY;
/// Most headers in a request.
const MAX_HEADERS: usize = dust_abi::http::MAX_HEADERS;

/// Why no request could be read.
#[derive(Debug)]
pub enum Error {
    /// Not valid HTTP/1.x (answer 400).
    Malformed(&'static str),
    /// Head larger than [`MAX_HEAD`], or more than 32 headers (answer 431).
    HeadTooLarge,
    /// Body larger than [`MAX_BODY`] (answer 413).
    BodyTooLarge,
    /// The peer closed the stream before a whole request arrived (nothing to answer).
    Closed,
    /// The stream failed.
    Vsock(vsock::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed request: {why}"),
            Self::HeadTooLarge => f.write_str("request header block too large"),
            Self::BodyTooLarge => f.write_str("request body too large"),
            Self::Closed => f.write_str("connection closed before a whole request arrived"),
            Self::Vsock(e) => write!(f, "{e}"),
        }
    }
}

impl From<vsock::Error> for Error {
    fn from(e: vsock::Error) -> Self {
        Self::Vsock(e)
    }
}

/// One request; its strings borrow from the bytes it was read into.
pub struct Request {
    bytes: Vec<u8>,
    method: Range<usize>,
    path: Range<usize>,
    /// HTTP/1.`minor`.
    minor: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
    body: Range<usize>,
}

impl Request {
    /// `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        self.str(&self.method)
    }

    /// The path of the request target, without its query: `/index.html` for
    /// `/index.html?x=1`.
    pub fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The query of the request target (after the `?`, not decoded), if it has one: `x=1`
    /// for `/index.html?x=1`.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, query)| query)
    }

    /// The request target as the client sent it, e.g. `/index.html?x=1`.
    pub fn target(&self) -> &str {
        self.str(&self.path)
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.minor
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.bytes[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.bytes[v.clone()])
    }

    /// All headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (self.str(n), &self.bytes[v.clone()]))
    }

    /// All headers, in order, names as bytes: [`headers`](Self::headers) without checking
    /// each name is UTF-8 (httparse only hands out ASCII names), a step per byte saved.
    pub fn header_fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.bytes[n.clone()], &self.bytes[v.clone()]))
    }

    /// The body (`Content-Length` bytes, or the decoded chunks).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body.clone()]
    }

    /// A request made from a complete head (through its blank line), without a body: one
    /// the guest makes up itself, e.g. to warm a handler up before `ready()`.
    pub fn from_head(head: &[u8]) -> Result<Self, Error> {
        let len = find_head_end(head, 0).ok_or(Error::Malformed("incomplete head"))?;
        parse_head(head[..len].to_vec(), len)
    }

    fn str(&self, r: &Range<usize>) -> &str {
        // httparse only hands out tokens and header names, which are ASCII.
        core::str::from_utf8(&self.bytes[r.clone()]).unwrap_or("")
    }
}

/// Reads one request from `stream`, waiting for its bytes. A request with
/// `Expect: 100-continue` gets its `100 Continue` before its body is read.
pub fn read_request(vsock: &mut Vsock, stream: Stream) -> Result<Request, Error> {
    let (bytes, head_len) = read_head(vsock, stream)?;
    let mut request = parse_head(bytes, head_len)?;
    let (chunked, body_len) = framing(&request)?;
    let expects_continue = request
        .header("expect")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && request.minor >= 1 && (chunked || body_len > 0) {
        vsock.write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if chunked {
        let pending = request.bytes.split_off(head_len);
        let body = read_chunked(vsock, stream, pending)?;
        request.bytes.extend_from_slice(&body);
        request.body = head_len..request.bytes.len();
        return Ok(request);
    }
    let end = head_len + body_len;
    while request.bytes.len() < end {
        let want = end - request.bytes.len();
        if vsock_read(vsock, stream, &mut request.bytes, want)? == 0 {
            return Err(Error::Malformed("truncated body"));
        }
    }
    // Bytes past the body (a pipelined request) are dropped: responses close the stream.
    request.bytes.truncate(end);
    request.body = head_len..end;
    Ok(request)
}

/// Reads from `stream` until the head's blank line: the bytes read (perhaps with some of
/// the body) and the head's length.
fn read_head(vsock: &mut Vsock, stream: Stream) -> Result<(Vec<u8>, usize), Error> {
    let mut bytes = Vec::new();
    let mut scanned = 0;
    loop {
        if let Some(end) = find_head_end(&bytes, scanned) {
            return Ok((bytes, end));
        }
        if bytes.len() > MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        scanned = bytes.len().saturating_sub(3);
        let room = MAX_HEAD + 1 - bytes.len();
        if vsock_read(vsock, stream, &mut bytes, room)? == 0 {
            return Err(if bytes.is_empty() {
                Error::Closed
            } else {
                Error::Malformed("truncated head")
            });
        }
    }
}

/// How `request`'s body is framed: chunked, or its Content-Length (0 without one).
fn framing(request: &Request) -> Result<(bool, usize), Error> {
    let chunked = match request.header("transfer-encoding") {
        None => false,
        // Only `chunked` alone is supported; with a Content-Length too the framing is
        // ambiguous (RFC 9112 section 6.3), so that is refused as well.
        Some(te) if te.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            if request.header("content-length").is_some() {
                return Err(Error::Malformed(
                    "both Transfer-Encoding and Content-Length",
                ));
            }
            true
        }
        Some(_) => return Err(Error::Malformed("unsupported Transfer-Encoding")),
    };
    let body_len = match request.header("content-length") {
        None => 0,
        Some(v) => core::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or(Error::Malformed("bad Content-Length"))?,
    };
    if body_len > MAX_BODY {
        return Err(Error::BodyTooLarge);
    }
    Ok((chunked, body_len))
}

/// Decodes a chunked body, starting with the bytes that came with the head.
fn read_chunked(vsock: &mut Vsock, stream: Stream, mut pending: Vec<u8>) -> Result<Vec<u8>, Error> {
    let mut decoder = chunked::Decoder::new(MAX_BODY);
    loop {
        let used = decoder.feed(&pending)?;
        pending.drain(..used);
        if decoder.done() {
            return Ok(decoder.into_body());
        }
        // Room for the rest of a chunk line or a good part of a chunk.
        if vsock_read(vsock, stream, &mut pending, 64 * 1024)? == 0 {
            return Err(Error::Malformed("truncated chunked body"));
        }
    }
}

fn vsock_read(
    vsock: &mut Vsock,
    stream: Stream,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, Error> {
    loop {
        match vsock.read_append(stream, out, max) {
            Err(vsock::Error::WouldBlock) => {
                vsock.wait()?;
            }
            other => return Ok(other?),
        }
    }
}

/// The length of the head (through its blank line), searching from `from`.
///
/// Horspool's search for `\r\n\r\n`: the last byte of each 4-byte window says how far
/// the blank line can be, so most windows cost one look (a byte-by-byte search is several
/// emulated steps per byte of every request here).
fn find_head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(&last) = bytes.get(i.checked_add(3)?) {
        match last {
            b'\n' if bytes[i..i + 3] == *b"\r\n\r" => return Some(i + 4),
            b'\n' => i += 2,
            b'\r' => i += 1,
            _ => i += 4,
        }
    }
    None
}

fn parse_head(bytes: Vec<u8>, head_len: usize) -> Result<Request, Error> {
    // Uninitialised slots: filling 100 empty headers first is ~1,000 emulated steps.
    let mut slots =
        [const { core::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(&bytes[..head_len], &mut slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Error::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(_) => return Err(Error::Malformed("bad request head")),
    }
    let base = bytes.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let method = range(parsed.method.unwrap_or("").as_bytes());
    let path = range(parsed.path.unwrap_or("").as_bytes());
    let minor = parsed.version.unwrap_or(1);
    let headers = parsed
        .headers
        .iter()
        .map(|h| (range(h.name.as_bytes()), range(h.value)))
        .collect();
    Ok(Request {
        bytes,
        method,
        path,
        minor,
        headers,
        body: head_len..head_len,
    })
}

/// The reason phrase of a registered status code (RFC 9110 and the other RFCs in the IANA
/// registry); empty for any other code. Clients read the code, not the phrase, but an empty
/// phrase where a standard one exists reads as a broken server.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400..=431 => reason_4xx(status),
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

fn reason_4xx(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        _ => "",
    }
}

/// Writes a whole response (head with `Content-Length` and `Connection: close`, then
/// `body`) in as few packets as possible. The caller then closes the stream.
pub fn write_response(
    vsock: &mut Vsock,
    stream: Stream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), vsock::Error> {
    let mut out = Vec::with_capacity(128 + body.len());
    push_head(&mut out, status, headers, body.len());
    out.extend_from_slice(body);
    vsock.write_all(stream, &out)
}

/// Appends a response head through its blank line. Built from byte slices, not `write!`:
/// `core::fmt` costs about a millisecond per response in a fresh VM on an emulating KVM.
fn push_head(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body_len: usize) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status.into());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_decimal(out, body_len);
    out.extend_from_slice(b"\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(dust_abi::decimal(n as u64, &mut [0; 20]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_blank_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        assert_eq!(find_head_end(b"ab", 5), None);
    }

    #[test]
    fn the_head_end_is_where_a_plain_search_finds_it() {
        let plain = |b: &[u8], from: usize| {
            b.get(from..)?
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| from + i + 4)
        };
        // Every string of up to 9 bytes over `\r`, `\n` and `a`, from every start.
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=9u32 {
            for n in 0..3usize.pow(len) {
                let b: Vec<u8> = (0..len).map(|i| alphabet[n / 3usize.pow(i) % 3]).collect();
                for from in 0..=b.len() + 1 {
                    assert_eq!(find_head_end(&b, from), plain(&b, from), "{b:?} {from}");
                }
            }
        }
    }

    #[test]
    fn parses_a_head() {
        let raw = b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n".to_vec();
        let n = raw.len();
        let r = parse_head(raw, n).unwrap();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.path(), "/x");
        assert_eq!(r.query(), Some("y=1"));
        assert_eq!(r.target(), "/x?y=1");
        assert_eq!(r.minor_version(), 1);
        assert_eq!(r.header("content-length"), Some(&b"3"[..]));
        assert_eq!(r.header("HOST"), Some(&b"a"[..]));
        assert_eq!(r.headers().count(), 2);
        let names: Vec<&[u8]> = r.header_fields().map(|(n, _)| n).collect();
        let strs: Vec<&[u8]> = r.headers().map(|(n, _)| n.as_bytes()).collect();
        assert_eq!(names, strs);
        assert!(r.body().is_empty());
    }

    #[test]
    fn writes_a_head() {
        let mut out = Vec::new();
        push_head(
            &mut out,
            200,
            &[("Content-Type", "text/plain"), ("X-A", "1")],
            1234,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nConnection: close\r\n\
              Content-Type: text/plain\r\nX-A: 1\r\n\r\n"
        );
        let mut out = Vec::new();
        push_head(&mut out, 599, &[], 0);
        assert_eq!(
            out,
            b"HTTP/1.1 599 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn writes_decimals() {
        for n in [0, 7, 10, 413, 1_048_576, usize::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, alloc::format!("{n}").into_bytes());
        }
    }

    #[test]
    fn path_and_query_come_apart() {
        let r = Request::from_head(b"GET /a/b HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.path(), r.query()), ("/a/b", None));
        let r = Request::from_head(b"GET /a?b?c= HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.path(), r.query()), ("/a", Some("b?c=")));
        let r = Request::from_head(b"GET /? HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.path(), r.query()), ("/", Some("")));
    }

    #[test]
    fn every_standard_status_has_its_reason() {
        assert_eq!(reason(507), "Insufficient Storage");
        assert_eq!(reason(418), "I'm a teapot");
        assert_eq!(reason(429), "Too Many Requests");
        assert_eq!(reason(599), "");
        let mut out = Vec::new();
        push_head(&mut out, 507, &[], 0);
        assert!(out.starts_with(b"HTTP/1.1 507 Insufficient Storage\r\n"));
    }

    #[test]
    fn rejects_garbage() {
        let raw = b"\x01\x02 nonsense\r\n\r\n".to_vec();
        let n = raw.len();
        assert!(matches!(parse_head(raw, n), Err(Error::Malformed(_))));
    }
}
