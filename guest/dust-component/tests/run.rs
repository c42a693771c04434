//! The example components (built by `scripts/build-examples`) run under wasmi on the host
//! with the plan the host check makes and the guest's canonical ABI: the same code the
//! component guest runs in a VM.

use std::path::PathBuf;

use dust_component::engine::{Component, Ctx, Error};
use dust_component::{Request, Response};
use wasmi::{Config, Engine, Store};

fn example(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/wasm/target")
        .join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-examples", path.display()))
}

fn serve(wasm: &[u8], method: &str, path: &str, body: &[u8], seed: u64) -> Result<Response, Error> {
    let plan = dust_component_plan::plan(wasm).unwrap_or_else(|e| panic!("plan: {e:?}"));
    let engine = Engine::new(&Config::default());
    let component = Component::new(&engine, wasm, plan)?;
    let mut ready = component.instantiate(Store::new(&engine, Ctx::default()))?;
    let request = Request {
        method: method.into(),
        path_with_query: path.into(),
        scheme: "http".into(),
        authority: "localhost".into(),
        headers: vec![("user-agent".into(), b"test".to_vec())],
        body: body.to_vec(),
    };
    ready.serve(request, seed, 0).0
}

fn text(r: &Response) -> &str {
    std::str::from_utf8(&r.body).unwrap_or("(not UTF-8)")
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

#[test]
fn the_wasi_crate_example_answers() {
    let wasm = example("hello-component.wasm");
    let r = serve(&wasm, "GET", "/?name=dust", b"", 1).unwrap();
    assert_eq!(
        (r.status, text(&r)),
        (200, "hello, dust\nGET /?name=dust\n")
    );
    assert_eq!(header(&r, "x-handler"), Some(&b"hello-component"[..]));
    let body: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    let r = serve(&wasm, "POST", "/echo", &body, 1).unwrap();
    assert_eq!(r.body, body);
    let r = serve(&wasm, "POST", "/size", &body, 1).unwrap();
    assert_eq!(text(&r), "65536");
    let r = serve(&wasm, "GET", "/status?code=418", b"", 1).unwrap();
    assert_eq!((r.status, text(&r)), (418, "status\n"));
    let r = serve(&wasm, "GET", "/counter", b"", 1).unwrap();
    assert_eq!(text(&r), "counter 1\n");
    let a = serve(&wasm, "GET", "/random", b"", 1).unwrap();
    let b = serve(&wasm, "GET", "/random", b"", 2).unwrap();
    assert_ne!(a.body, b.body);
}

#[test]
fn failures_are_errors() {
    let wasm = example("hello-component.wasm");
    let e = serve(&wasm, "GET", "/trap", b"", 1).unwrap_err();
    assert!(matches!(e, Error::Wasm(_)), "{e}");
    let e = serve(&wasm, "GET", "/silent", b"", 1).unwrap_err();
    assert!(e.to_string().contains("no response"), "{e}");
}

#[test]
fn the_wstd_example_answers() {
    let wasm = example("hello-wstd.wasm");
    let r = serve(&wasm, "GET", "/?name=dust", b"", 1).unwrap();
    assert_eq!(
        (r.status, text(&r)),
        (200, "hello from wstd, dust\nGET /?name=dust\n")
    );
    let body = vec![b'x'; 65536];
    let r = serve(&wasm, "POST", "/size", &body, 1).unwrap();
    assert_eq!(text(&r), "65536");
    let r = serve(&wasm, "POST", "/echo", &body, 1).unwrap();
    assert_eq!(r.body, body);
    let r = serve(&wasm, "GET", "/status?code=418", b"", 1).unwrap();
    assert_eq!(
        (r.status, header(&r, "x-handler")),
        (418, Some(&b"hello-wstd"[..]))
    );
}
