//! The WAGI convention (CGI/1.1, RFC 3875, over WASI): a request becomes the handler's
//! environment, argv and stdin; the handler's stdout becomes the response.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use dust_guest::http::{Request, Response};

use crate::strings::Strings;

/// The handler's view of one request.
pub struct Invocation {
    /// argv: the module name, then the query's `+`-separated words, percent-decoded.
    pub args: Vec<Vec<u8>>,
    /// `NAME=value` entries.
    pub env: Strings,
}

/// argv[0] of every handler.
pub const PROGRAM: &str = "handler.wasm";

/// The environment and argv of `req` in VM `vm`, plus `extra` variables (from the command
/// line; `dust run --wasm --env`).
pub fn invocation(req: &Request, vm: &str, extra: &[(&str, &str)]) -> Invocation {
    let (target, path) = (req.target(), req.path());
    let query = req.query().unwrap_or("");
    let host = req
        .header("host")
        .and_then(|h| core::str::from_utf8(h).ok())
        .unwrap_or("localhost");
    let (server, port) = server_and_port(host);
    // Built from byte slices, without `core::fmt`, and each entry allocated once: in a
    // restored VM on an emulating KVM every instruction counts (docs/benchmarks.md,
    // "guestcost"). Each name comes with its `=` as one piece, and constant entries are
    // one piece: every piece is a copy of its own.
    let mut env = Strings::with_capacity(24 + extra.len(), 1024);
    let mut digits = [0u8; 20];
    env.push(&[b"GATEWAY_INTERFACE=CGI/1.1"]);
    env.push(&[b"REQUEST_METHOD=", req.method().as_bytes()]);
    env.push(&[b"SCRIPT_NAME="]);
    env.push(&[b"PATH_INFO=", path.as_bytes()]);
    env.push(&[b"QUERY_STRING=", query.as_bytes()]);
    let content_type = req.header("content-type").unwrap_or(b"");
    env.push(&[b"CONTENT_TYPE=", content_type]);
    let length = dust_abi::decimal(req.body().len() as u64, &mut digits);
    env.push(&[b"CONTENT_LENGTH=", length]);
    env.push(&[b"SERVER_NAME=", server.as_bytes()]);
    env.push(&[b"SERVER_PORT=", port.as_bytes()]);
    let minor = dust_abi::decimal(req.minor_version().into(), &mut digits);
    env.push(&[b"SERVER_PROTOCOL=HTTP/1.", minor]);
    env.push(&[b"SERVER_SOFTWARE=dust"]);
    env.push(&[b"REMOTE_ADDR=", remote_addr(req).as_bytes()]);
    env.push(&[b"X_FULL_URL=http://", host.as_bytes(), target.as_bytes()]);
    env.push(&[b"X_DUST_VM=", vm.as_bytes()]);
    header_variables(req, &mut env);
    for (k, v) in extra {
        env.push(&[k.as_bytes(), b"=", v.as_bytes()]);
    }
    let mut args = alloc::vec![PROGRAM.as_bytes().to_vec()];
    if !query.is_empty() {
        args.extend(query.split('+').map(percent_decode));
    }
    Invocation { args, env }
}

/// `SERVER_NAME` and `SERVER_PORT` from a `Host` header (port 80 when it names none).
fn server_and_port(host: &str) -> (&str, &str) {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (host, "80"),
    }
}

/// `REMOTE_ADDR`: the first address of `X-Forwarded-For` (the front door sets it).
fn remote_addr(req: &Request) -> &str {
    req.header("x-forwarded-for")
        .and_then(|h| core::str::from_utf8(h).ok())
        .and_then(|h| h.split(',').next())
        .map_or("0.0.0.0", str::trim)
}

/// An `HTTP_<NAME>=value` entry in `env` for each request header (upper case, `-` as `_`).
fn header_variables(req: &Request, env: &mut Strings) {
    const PREFIX: &[u8] = b"HTTP_";
    for (name, value) in req.header_fields() {
        // `HTTP_`, the name, `=`: one piece.
        let mut k = [0u8; 72];
        let mut long = Vec::new();
        let key = match k.get_mut(..PREFIX.len() + name.len() + 1) {
            Some(k) => k,
            None => {
                long.resize(PREFIX.len() + name.len() + 1, 0);
                &mut long[..]
            }
        };
        let (prefix, rest) = key.split_at_mut(PREFIX.len());
        prefix.copy_from_slice(PREFIX);
        for (u, &c) in rest.iter_mut().zip(name) {
            *u = match c {
                b'-' => b'_',
                c => c.to_ascii_uppercase(),
            };
        }
        if let Some(eq) = rest.last_mut() {
            *eq = b'=';
        }
        env.push(&[key, value]);
    }
}

/// `%XX` escapes decoded; a malformed escape is kept as it is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Why a handler's stdout is not a CGI response.
#[derive(Debug, PartialEq, Eq)]
pub enum CgiError {
    /// No blank line after the header block.
    NoHeaderEnd,
    /// A header line without a colon, or not UTF-8.
    BadHeader(String),
    /// `Status:` without a three-digit code.
    BadStatus(String),
}

impl core::fmt::Display for CgiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoHeaderEnd => f.write_str("no blank line after the CGI header block"),
            Self::BadHeader(l) => write!(f, "malformed CGI header line {l:?}"),
            Self::BadStatus(s) => write!(f, "malformed CGI Status {s:?}"),
        }
    }
}

/// The response a handler wrote: header lines (`Status`, `Content-Type`, `Location`, any
/// other header passed through), a blank line, the body. Without `Status`, 302 when there
/// is a `Location`, else 200.
pub fn response(stdout: &[u8]) -> Result<Response, CgiError> {
    let (head, body) = split_head(stdout).ok_or(CgiError::NoHeaderEnd)?;
    let head = core::str::from_utf8(head).map_err(|_| CgiError::BadHeader("(not UTF-8)".into()))?;
    let mut status = None;
    let mut location = false;
    let mut headers = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .filter(|(n, _)| !n.is_empty() && !n.contains(' '))
            .ok_or_else(|| CgiError::BadHeader(line.into()))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.get(..3).and_then(|c| c.parse::<u16>().ok());
            match code {
                Some(c @ 100..=999) if value.len() == 3 || value.as_bytes()[3] == b' ' => {
                    status = Some(c)
                }
                _ => return Err(CgiError::BadStatus(value.into())),
            }
            continue;
        }
        if name.eq_ignore_ascii_case("location") {
            location = true;
        }
        // Framing is the server's: the guest writes its own Content-Length.
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let status = status.unwrap_or(if location { 302 } else { 200 });
    Ok(Response {
        status,
        headers,
        body: body.to_vec(),
    })
}

/// Header block and body, split at the first blank line (`\n\n` or `\r\n\r\n`).
fn split_head(out: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(body) = out
        .strip_prefix(b"\r\n")
        .or_else(|| out.strip_prefix(b"\n"))
    {
        return Some((&[], body));
    }
    // From one line feed to the next (a tight search: each byte is an emulated step here).
    let mut i = out.iter().position(|&b| b == b'\n')?;
    loop {
        let rest = &out[i + 1..];
        match rest {
            [b'\n', ..] => return Some((&out[..i], &out[i + 2..])),
            [b'\r', b'\n', ..] => return Some((&out[..i], &out[i + 3..])),
            _ => i += 1 + rest.iter().position(|&b| b == b'\n')?,
        }
    }
}

#[cfg(test)]
mod tests;
