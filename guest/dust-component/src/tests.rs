//! A handler's calls replayed by hand against a plain memory: what a wasi-crate handler
//! does for `POST /echo?x=1` with a body, byte for byte in the canonical ABI.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::abi::{TestMemory, Trap, Val};
use crate::http::{Host, NoResponse, Request};

const HTTP: &str = "wasi:http/types@0.2.4";
const RET: u32 = 64;

fn mem() -> TestMemory {
    TestMemory {
        bytes: vec![0; 64 * 1024],
        next: 1024,
    }
}

fn i(v: i32) -> Val {
    Val::I32(v)
}

fn call(h: &mut Host, m: &mut TestMemory, iface: &str, name: &str, a: &[Val]) -> Option<Val> {
    h.call(iface, name, a, m).unwrap()
}

fn u32_at(m: &TestMemory, at: u32) -> u32 {
    let b = &m.bytes[at as usize..at as usize + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The (pointer, length) at `at`, as bytes.
fn list_at(m: &TestMemory, at: u32) -> Vec<u8> {
    let (p, l) = (u32_at(m, at) as usize, u32_at(m, at + 4) as usize);
    m.bytes[p..p + l].to_vec()
}

/// Puts `bytes` at `at` and returns (pointer, length) arguments.
fn put(m: &mut TestMemory, at: u32, bytes: &[u8]) -> [Val; 2] {
    m.bytes[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    [i(at as i32), i(bytes.len() as i32)]
}

fn request() -> Request {
    Request {
        method: "POST".into(),
        path_with_query: "/echo?x=1".into(),
        scheme: "http".into(),
        authority: "localhost".into(),
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: b"hello body".to_vec(),
    }
}

#[test]
fn a_handler_reads_the_request_and_sets_a_response() {
    let (mut h, mut m) = (Host::new(request(), 42, 0), mem());
    let [req, out] = h.handle_args();
    let Val::I32(req) = req else { panic!() };
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]incoming-request.path-with-query",
        &[i(req), i(RET as i32)],
    );
    assert_eq!(
        (m.bytes[RET as usize], list_at(&m, RET + 4)),
        (1, b"/echo?x=1".to_vec())
    );
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]incoming-request.method",
        &[i(req), i(RET as i32)],
    );
    assert_eq!(m.bytes[RET as usize], 2, "post");
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]incoming-request.consume",
        &[i(req), i(RET as i32)],
    );
    assert_eq!(m.bytes[RET as usize], 0);
    let body = u32_at(&m, RET + 4) as i32;
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]incoming-request.consume",
        &[i(req), i(RET as i32)],
    );
    assert_eq!(m.bytes[RET as usize], 1, "a body is consumed once");
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]incoming-body.stream",
        &[i(body), i(RET as i32)],
    );
    let stream = u32_at(&m, RET + 4) as i32;
    let mut got = Vec::new();
    loop {
        let a = [i(stream), Val::I64(4), i(RET as i32)];
        call(
            &mut h,
            &mut m,
            "wasi:io/streams@0.2.4",
            "[method]input-stream.blocking-read",
            &a,
        );
        if m.bytes[RET as usize] == 1 {
            assert_eq!(m.bytes[RET as usize + 4], 1, "closed");
            break;
        }
        got.extend(list_at(&m, RET + 4));
    }
    assert_eq!(got, b"hello body");
    h.drop_handle("input-stream", stream).unwrap();
    call(
        &mut h,
        &mut m,
        HTTP,
        "[static]incoming-body.finish",
        &[i(body)],
    );

    let fields = call(&mut h, &mut m, HTTP, "[constructor]fields", &[]).unwrap();
    let [np, nl] = put(&mut m, 200, b"X-Handler");
    let [vp, vl] = put(&mut m, 300, b"test");
    // list<list<u8>> of one element: (300, 4) at 400.
    m.bytes[400..404].copy_from_slice(&300u32.to_le_bytes());
    m.bytes[404..408].copy_from_slice(&4u32.to_le_bytes());
    let _ = (vp, vl);
    let a = [fields, np, nl, i(400), i(1), i(RET as i32)];
    call(&mut h, &mut m, HTTP, "[method]fields.set", &a);
    assert_eq!(m.bytes[RET as usize], 0);
    let [bp, bl] = put(&mut m, 500, b"bad name");
    let a = [fields, bp, bl, i(400), i(1), i(RET as i32)];
    call(&mut h, &mut m, HTTP, "[method]fields.set", &a);
    assert_eq!(
        m.bytes[RET as usize..RET as usize + 2],
        [1, 0],
        "invalid-syntax"
    );

    let resp = call(
        &mut h,
        &mut m,
        HTTP,
        "[constructor]outgoing-response",
        &[fields],
    )
    .unwrap();
    let status = call(
        &mut h,
        &mut m,
        HTTP,
        "[method]outgoing-response.set-status-code",
        &[resp, i(418)],
    );
    assert_eq!(status, Some(i(0)));
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]outgoing-response.body",
        &[resp, i(RET as i32)],
    );
    let obody = u32_at(&m, RET + 4) as i32;
    call(
        &mut h,
        &mut m,
        HTTP,
        "[static]response-outparam.set",
        &[out, i(0), resp],
    );
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]outgoing-body.write",
        &[i(obody), i(RET as i32)],
    );
    let os = u32_at(&m, RET + 4) as i32;
    let [p, l] = put(&mut m, 600, b"teapot\n");
    let a = [i(os), p, l, i(RET as i32)];
    call(
        &mut h,
        &mut m,
        "wasi:io/streams@0.2.4",
        "[method]output-stream.blocking-write-and-flush",
        &a,
    );
    h.drop_handle("output-stream", os).unwrap();
    call(
        &mut h,
        &mut m,
        HTTP,
        "[static]outgoing-body.finish",
        &[i(obody), i(0), i(0), i(RET as i32)],
    );

    let r = h.finish().unwrap();
    assert_eq!(r.status, 418);
    assert_eq!(
        r.headers,
        vec![(String::from("x-handler"), b"test".to_vec())]
    );
    assert_eq!(r.body, b"teapot\n");
}

#[test]
fn handles_are_checked_and_a_missing_response_is_an_error() {
    let (mut h, mut m) = (Host::new(request(), 1, 0), mem());
    let a = [i(7), i(RET as i32)];
    let e = h.call(HTTP, "[method]incoming-request.consume", &a, &mut m);
    assert_eq!(e, Err(Trap::Handle("incoming-request")));
    assert_eq!(h.finish(), Err(NoResponse::NeverSet));
    let e = h.call("wasi:cli/exit@0.2.0", "exit", &[i(1)], &mut m);
    assert_eq!(e, Err(Trap::Exit(1)));
    let e = h.call("wasi:sockets/tcp@0.2.0", "connect", &[], &mut m);
    assert_eq!(e, Err(Trap::Unknown));
}

#[test]
fn random_numbers_depend_on_the_seed() {
    let mut m = mem();
    let mut draw = |seed| {
        let mut h = Host::new(request(), seed, 0);
        h.call("wasi:random/random@0.2.4", "get-random-u64", &[], &mut m)
    };
    assert_ne!(draw(1), draw(2));
    assert_eq!(draw(3), draw(3));
}

#[test]
fn fields_from_a_request_are_immutable() {
    let (mut h, mut m) = (Host::new(request(), 1, 0), mem());
    let [req, _] = h.handle_args();
    let f = call(
        &mut h,
        &mut m,
        HTTP,
        "[method]incoming-request.headers",
        &[req],
    )
    .unwrap();
    let [np, nl] = put(&mut m, 200, b"content-type");
    let got = call(&mut h, &mut m, HTTP, "[method]fields.has", &[f, np, nl]);
    assert_eq!(got, Some(i(1)));
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]fields.delete",
        &[f, np, nl, i(RET as i32)],
    );
    assert_eq!(m.bytes[RET as usize..RET as usize + 2], [1, 2], "immutable");
    call(
        &mut h,
        &mut m,
        HTTP,
        "[method]fields.entries",
        &[f, i(RET as i32)],
    );
    assert_eq!(u32_at(&m, RET + 4), 1);
    let entry = u32_at(&m, RET);
    assert_eq!(list_at(&m, entry), b"content-type");
    assert_eq!(list_at(&m, entry + 8), b"text/plain");
}
