//! [`serve`]: the accept/parse/respond loop of an HTTP guest, around a handler that turns
//! a [`Request`] into a [`Response`].

use alloc::string::String;
use alloc::vec::Vec;

use super::{Error, Request, read_request, write_response};
use crate::vsock::{self, Vsock};

/// What a handler answers: a status, headers and a body. `Content-Length` and
/// `Connection: close` are added when it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header fields besides `Content-Length` and `Connection`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body.into().into_bytes())
    }

    /// Sets a header field: replaces any field of the same name (case-insensitive) set
    /// before, e.g. the `Content-Type` of [`Response::text`]. For a field that may repeat
    /// (`Set-Cookie`), use [`Response::append_header`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    /// Adds a header field, keeping those of the same name set before.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// The answer to a request that could not be read, if it deserves one.
fn error_response(e: &Error) -> Option<Response> {
    match e {
        Error::Malformed(why) => Some(Response::text(400, alloc::format!("bad request: {why}\n"))),
        Error::HeadTooLarge => Some(Response::text(431, "request header block too large\n")),
        Error::BodyTooLarge => Some(Response::text(413, "request body too large\n")),
        Error::Closed | Error::Vsock(_) => None,
    }
}

/// Serves HTTP/1.1 on vsock `port` for ever: opens the first vsock device, listens,
/// signals [`ready`](crate::ready), then for each connection reads one request, answers it
/// with `handler`'s response and closes the connection. Unreadable requests get 400, a
/// header block over [`MAX_HEAD`](super::MAX_HEAD) 431, a body over
/// [`MAX_BODY`](super::MAX_BODY) 413, without calling the handler; `Transfer-Encoding:
/// chunked` bodies are decoded. Returns only if the device cannot be used.
pub fn serve(port: u32, mut handler: impl FnMut(&Request) -> Response) -> Result<(), vsock::Error> {
    let mut vsock = Vsock::open()?;
    vsock.listen(port);
    crate::ready();
    loop {
        let stream = vsock.accept_wait()?;
        let response = match read_request(&mut vsock, stream) {
            Ok(request) => Some(handler(&request)),
            Err(e) => error_response(&e),
        };
        if let Some(r) = response {
            let headers: Vec<(&str, &str)> = r
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            // A client that went away is its own problem; keep serving the others.
            let _ = write_response(&mut vsock, stream, r.status, &headers, &r.body);
        }
        let _ = vsock.close(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_status() {
        let status = |e| error_response(&e).map(|r| r.status);
        assert_eq!(status(Error::Malformed("x")), Some(400));
        assert_eq!(status(Error::HeadTooLarge), Some(431));
        assert_eq!(status(Error::BodyTooLarge), Some(413));
        assert_eq!(status(Error::Closed), None);
    }

    #[test]
    fn builds_a_text_response() {
        let r = Response::text(200, "hi").header("X-A", "1");
        assert_eq!(r.body, b"hi");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[1], ("X-A".into(), "1".into()));
    }

    #[test]
    fn a_later_header_replaces_one_of_the_same_name() {
        let r = Response::text(200, "{}").header("content-type", "application/json");
        assert_eq!(
            r.headers,
            [("content-type".into(), "application/json".into())]
        );
        let r = Response::new(200)
            .append_header("Set-Cookie", "a=1")
            .append_header("Set-Cookie", "b=2");
        assert_eq!(r.headers.len(), 2);
    }
}
