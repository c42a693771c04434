//! The WAGI translation both ways: a request into environment and argv, a handler's stdout
//! into a response.

use super::*;

fn request(head: &str) -> Request {
    Request::from_head(head.as_bytes()).unwrap()
}

fn env_of(inv: &Invocation, key: &str) -> Option<String> {
    let prefix = alloc::format!("{key}=");
    inv.env.iter().find_map(|e| {
        e.strip_prefix(prefix.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

#[test]
fn the_request_becomes_the_cgi_environment() {
    let req = request(
        "POST /a/b?x=1+y%20z HTTP/1.1\r\nHost: example.org:8080\r\nContent-Type: text/plain\r\n\
         X-Forwarded-For: 10.0.0.7, 10.0.0.1\r\n\r\n",
    );
    let inv = invocation(&req, "vm-7", &[("GREETING", "hi")]);
    for (k, v) in [
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/a/b"),
        ("QUERY_STRING", "x=1+y%20z"),
        ("SERVER_NAME", "example.org"),
        ("SERVER_PORT", "8080"),
        ("CONTENT_TYPE", "text/plain"),
        ("CONTENT_LENGTH", "0"),
        ("REMOTE_ADDR", "10.0.0.7"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("X_FULL_URL", "http://example.org:8080/a/b?x=1+y%20z"),
        ("X_DUST_VM", "vm-7"),
        ("HTTP_X_FORWARDED_FOR", "10.0.0.7, 10.0.0.1"),
        ("GREETING", "hi"),
    ] {
        assert_eq!(env_of(&inv, k).as_deref(), Some(v), "{k}");
    }
    let args: Vec<&[u8]> = inv.args.iter().map(Vec::as_slice).collect();
    assert_eq!(args, [PROGRAM.as_bytes(), b"x=1", b"y z"]);
}

#[test]
fn without_host_or_query_the_defaults_apply() {
    let inv = invocation(&request("GET / HTTP/1.0\r\n\r\n"), "v", &[]);
    assert_eq!(env_of(&inv, "SERVER_NAME").as_deref(), Some("localhost"));
    assert_eq!(env_of(&inv, "SERVER_PORT").as_deref(), Some("80"));
    assert_eq!(env_of(&inv, "REMOTE_ADDR").as_deref(), Some("0.0.0.0"));
    assert_eq!(env_of(&inv, "SERVER_PROTOCOL").as_deref(), Some("HTTP/1.0"));
    assert_eq!(inv.args, [PROGRAM.as_bytes().to_vec()]);
}

#[test]
fn percent_escapes_decode_and_bad_ones_stay() {
    assert_eq!(percent_decode("a%41%2fb"), b"aA/b");
    assert_eq!(percent_decode("100%"), b"100%");
    assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    assert_eq!(percent_decode("%ff"), [0xff]);
}

#[test]
fn a_plain_response_is_200_with_its_headers() {
    let r = response(b"Content-Type: text/plain\nX-A: 1\n\nhello").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers,
        [
            ("Content-Type".to_string(), "text/plain".to_string()),
            ("X-A".to_string(), "1".to_string())
        ]
    );
    assert_eq!(r.body, b"hello");
}

#[test]
fn status_and_location_set_the_code() {
    let r = response(b"Status: 404 Not Found\r\n\r\n").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.headers.is_empty());
    assert_eq!(response(b"Location: /x\n\n").unwrap().status, 302);
    assert_eq!(
        response(b"Status: 201\nLocation: /x\n\n").unwrap().status,
        201
    );
}

#[test]
fn framing_headers_are_the_servers() {
    let r = response(b"Content-Length: 99\nConnection: keep-alive\nX-B: 2\n\nbody").unwrap();
    assert_eq!(r.headers, [("X-B".to_string(), "2".to_string())]);
    assert_eq!(r.body, b"body");
}

#[test]
fn an_empty_head_is_allowed() {
    let r = response(b"\r\nraw").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"raw"[..]));
}

#[test]
fn malformed_output_is_refused() {
    assert_eq!(response(b"Content-Type: x\n"), Err(CgiError::NoHeaderEnd));
    assert_eq!(response(b""), Err(CgiError::NoHeaderEnd));
    assert!(matches!(
        response(b"no colon\n\n"),
        Err(CgiError::BadHeader(_))
    ));
    assert!(matches!(
        response(b"Bad Name: x\n\n"),
        Err(CgiError::BadHeader(_))
    ));
    assert!(matches!(
        response(b"\xff: x\n\n"),
        Err(CgiError::BadHeader(_))
    ));
    for s in ["Status: abc", "Status: 99", "Status: 2000", "Status: 200x"] {
        let out = alloc::format!("{s}\n\n");
        assert!(
            matches!(response(out.as_bytes()), Err(CgiError::BadStatus(_))),
            "{s}"
        );
    }
}

#[test]
fn a_status_with_its_reason_phrase_keeps_the_code() {
    let r = response(b"Status: 507 Insufficient Storage\r\n\r\nfull").unwrap();
    assert_eq!(r.status, 507);
    // The phrase the guest writes is the standard one for the code.
    assert_eq!(dust_guest::http::reason(r.status), "Insufficient Storage");
}

#[test]
fn the_environment_is_these_bytes_in_this_order() {
    let long = "X-".to_string() + &"a-".repeat(40);
    let head = alloc::format!(
        "PUT /p?q HTTP/1.0\r\nHost: h:81\r\nUser-Agent: t\r\n{long}: l\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    );
    let inv = invocation(&request(&head), "vm-1", &[("K", "v"), ("E", "")]);
    let upper = long.to_ascii_uppercase().replace('-', "_");
    let want = alloc::format!(
        "GATEWAY_INTERFACE=CGI/1.1\0REQUEST_METHOD=PUT\0SCRIPT_NAME=\0PATH_INFO=/p\0\
         QUERY_STRING=q\0CONTENT_TYPE=\0CONTENT_LENGTH=0\0SERVER_NAME=h\0SERVER_PORT=81\0\
         SERVER_PROTOCOL=HTTP/1.0\0SERVER_SOFTWARE=dust\0REMOTE_ADDR=1.2.3.4\0\
         X_FULL_URL=http://h:81/p?q\0X_DUST_VM=vm-1\0HTTP_HOST=h:81\0HTTP_USER_AGENT=t\0\
         HTTP_{upper}=l\0HTTP_X_FORWARDED_FOR=1.2.3.4\0K=v\0E=\0"
    );
    assert_eq!(String::from_utf8_lossy(inv.env.with_nuls()), want.as_str());
    assert_eq!(inv.env.len(), 20);
}
