//! `wasi:http/types` for one incoming request, fully buffered, and the state every host
//! function shares ([`Host`]).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::abi::{self, Memory, Trap, Val, i32_arg as arg};
use crate::table::Table;

/// Most bytes of response body a handler may write.
pub const MAX_BODY: usize = 1024 * 1024;

/// The request as the handler sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, as sent.
    pub path_with_query: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The `Host` header's value.
    pub authority: String,
    /// Headers without the hop-by-hop ones.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// What the handler answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Its headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// A set of header fields; `fields` handles point at one.
pub(crate) struct Fields {
    pub entries: Vec<(String, Vec<u8>)>,
    pub immutable: bool,
}

/// An outgoing response before it is handed over.
pub(crate) struct OutResponse {
    pub status: u16,
    pub headers: usize,
    pub body_taken: bool,
}

/// Where an input stream reads from.
#[derive(Clone, Copy)]
pub(crate) enum Input {
    Body,
    Stdin,
}

/// Where an output stream writes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Body,
    Stdout,
    Stderr,
}

/// Everything the host functions of one handler run share.
pub struct Host {
    pub(crate) request: Request,
    pub(crate) consumed: bool,
    pub(crate) streamed: bool,
    pub(crate) body_pos: usize,
    pub(crate) sets: Vec<Fields>,
    pub(crate) fields: Table<usize>,
    pub(crate) requests: Table<()>,
    pub(crate) in_bodies: Table<()>,
    pub(crate) trailers: Table<()>,
    pub(crate) responses: Table<OutResponse>,
    pub(crate) out_bodies: Table<()>,
    pub(crate) outparams: Table<()>,
    pub(crate) inputs: Table<Input>,
    pub(crate) outputs: Table<Output>,
    pub(crate) pollables: Table<()>,
    pub(crate) errors: Table<()>,
    /// The response handed over by `response-outparam.set`: `Err` if the handler set
    /// an error.
    pub(crate) answer: Option<Result<OutResponse, ()>>,
    pub(crate) body: Vec<u8>,
    /// What the handler wrote to stdout and stderr, for the log.
    pub log: Vec<u8>,
    pub(crate) rng: u64,
    pub(crate) clock_ns: u64,
    pub(crate) wall_ns: u64,
}

/// Why there is no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoResponse {
    /// `response-outparam.set` was never called.
    NeverSet,
    /// The handler set an error instead of a response.
    Error,
}

impl Host {
    /// State for one request; `seed` is this VM's entropy, `wall_ns` the time of day.
    pub fn new(request: Request, seed: u64, wall_ns: u64) -> Self {
        Self {
            request,
            consumed: false,
            streamed: false,
            body_pos: 0,
            sets: Vec::new(),
            fields: Table::new("fields"),
            requests: Table::new("incoming-request"),
            in_bodies: Table::new("incoming-body"),
            trailers: Table::new("future-trailers"),
            responses: Table::new("outgoing-response"),
            out_bodies: Table::new("outgoing-body"),
            outparams: Table::new("response-outparam"),
            inputs: Table::new("input-stream"),
            outputs: Table::new("output-stream"),
            pollables: Table::new("pollable"),
            errors: Table::new("error"),
            answer: None,
            body: Vec::new(),
            log: Vec::new(),
            rng: seed | 1,
            clock_ns: 0,
            wall_ns,
        }
    }

    /// The two arguments of `incoming-handler.handle`: own handles of the request and of
    /// the response outparam.
    pub fn handle_args(&mut self) -> [Val; 2] {
        let req = self.requests.insert(());
        let out = self.outparams.insert(());
        [Val::I32(req as i32), Val::I32(out as i32)]
    }

    /// The response once the handler returned.
    pub fn finish(&mut self) -> Result<Response, NoResponse> {
        match self.answer.take() {
            None => Err(NoResponse::NeverSet),
            Some(Err(())) => Err(NoResponse::Error),
            Some(Ok(r)) => Ok(Response {
                status: r.status,
                headers: core::mem::take(&mut self.sets[r.headers].entries),
                body: core::mem::take(&mut self.body),
            }),
        }
    }

    /// Calls the host function `name` of `interface` (with or without its `@version`).
    pub fn call(
        &mut self,
        interface: &str,
        name: &str,
        args: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        let base = interface.split('@').next().unwrap_or(interface);
        match base {
            "wasi:http/types" => self.http(name, args, mem),
            _ => self.wasi(base, name, args, mem),
        }
    }

    /// `resource.drop` of `resource` in `interface`.
    pub fn drop_handle(&mut self, resource: &str, handle: i32) -> Result<(), Trap> {
        match resource {
            "fields" => self.fields.take(handle).map(drop),
            "incoming-request" => self.requests.take(handle),
            "incoming-body" => self.in_bodies.take(handle),
            "future-trailers" => self.trailers.take(handle),
            "outgoing-response" => self.responses.take(handle).map(drop),
            "outgoing-body" => self.out_bodies.take(handle),
            "response-outparam" => self.outparams.take(handle),
            "input-stream" => self.inputs.take(handle).map(drop),
            "output-stream" => self.outputs.take(handle).map(drop),
            "pollable" => self.pollables.take(handle),
            "error" => self.errors.take(handle),
            _ => Err(Trap::Unknown),
        }
    }

    pub(crate) fn new_fields(&mut self, entries: Vec<(String, Vec<u8>)>, immutable: bool) -> i32 {
        self.sets.push(Fields { entries, immutable });
        self.fields.insert(self.sets.len() - 1) as i32
    }

    pub(crate) fn set_mut(&mut self, handle: i32) -> Result<&mut Fields, Trap> {
        let id = *self.fields.get(handle)?;
        self.sets.get_mut(id).ok_or(Trap::Handle("fields"))
    }

    pub(crate) fn set_entries(&mut self, handle: i32) -> Result<&Vec<(String, Vec<u8>)>, Trap> {
        Ok(&self.set_mut(handle)?.entries)
    }

    fn http(&mut self, name: &str, a: &[Val], mem: &mut dyn Memory) -> Result<Option<Val>, Trap> {
        let name = name.strip_prefix("[method]").unwrap_or(name);
        match name {
            "[constructor]fields" => return Ok(Some(Val::I32(self.new_fields(vec![], false)))),
            "[static]fields.from-list" => self.fields_from_list(a, mem)?,
            "fields.get" | "fields.has" | "fields.entries" | "fields.clone" => {
                return self.fields_read(name, a, mem);
            }
            "fields.set" | "fields.append" | "fields.delete" => self.fields_write(name, a, mem)?,
            "incoming-request.method" => self.method(arg(a, 1)?, mem)?,
            "incoming-request.path-with-query" => {
                let p = self.request.path_with_query.clone();
                some_string(mem, arg(a, 1)?, &p)?;
            }
            "incoming-request.authority" => {
                let p = self.request.authority.clone();
                some_string(mem, arg(a, 1)?, &p)?;
            }
            "incoming-request.scheme" => self.scheme(arg(a, 1)?, mem)?,
            "incoming-request.headers" => {
                self.requests.get(arg(a, 0)?)?;
                let h = self.request.headers.clone();
                return Ok(Some(Val::I32(self.new_fields(h, true))));
            }
            "incoming-request.consume" => {
                self.requests.get(arg(a, 0)?)?;
                let first = !core::mem::replace(&mut self.consumed, true);
                let h = first.then(|| self.in_bodies.insert(()));
                result_handle(mem, arg(a, 1)?, h)?;
            }
            "incoming-body.stream" => {
                self.in_bodies.get(arg(a, 0)?)?;
                let first = !core::mem::replace(&mut self.streamed, true);
                let h = first.then(|| self.inputs.insert(Input::Body));
                result_handle(mem, arg(a, 1)?, h)?;
            }
            "[static]incoming-body.finish" => {
                self.in_bodies.take(arg(a, 0)?)?;
                return Ok(Some(Val::I32(self.trailers.insert(()) as i32)));
            }
            "future-trailers.subscribe" => return Ok(Some(self.pollable())),
            "future-trailers.get" => {
                // some(ok(ok(none))): the request had no trailers.
                let at = arg(a, 1)? as u32;
                abi::store_u8(mem, at, 1)?;
                abi::store_u8(mem, at + 8, 0)?;
                abi::store_u8(mem, at + 16, 0)?;
                abi::store_u8(mem, at + 24, 0)?;
            }
            _ => return self.http_out(name, a, mem),
        }
        Ok(None)
    }

    /// The response side: its body and handing it back; the response itself is
    /// [`Self::outgoing_response`].
    fn http_out(
        &mut self,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        match name {
            "outgoing-body.write" => {
                self.out_bodies.get(arg(a, 0)?)?;
                let h = self.outputs.insert(Output::Body);
                result_handle(mem, arg(a, 1)?, Some(h))?;
            }
            "[static]outgoing-body.finish" => {
                self.out_bodies.take(arg(a, 0)?)?;
                let ret = a.last().copied().ok_or(Trap::Args)?;
                let Val::I32(at) = ret else {
                    return Err(Trap::Args);
                };
                abi::store_u8(mem, at as u32, 0)?;
            }
            "[static]response-outparam.set" => {
                self.outparams.take(arg(a, 0)?)?;
                let answer = match arg(a, 1)? {
                    0 => Ok(self.responses.take(arg(a, 2)?)?),
                    _ => Err(()),
                };
                self.answer = Some(answer);
            }
            "http-error-code" => abi::store_u8(mem, arg(a, 1)? as u32, 0)?,
            _ => return self.outgoing_response(name, a, mem),
        }
        Ok(None)
    }

    /// `outgoing-response`: made from its headers, with a status and one body.
    fn outgoing_response(
        &mut self,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        match name {
            "[constructor]outgoing-response" => {
                let headers = self.fields.take(arg(a, 0)?)?;
                let r = OutResponse {
                    status: 200,
                    headers,
                    body_taken: false,
                };
                return Ok(Some(Val::I32(self.responses.insert(r) as i32)));
            }
            "outgoing-response.status-code" => {
                let s = self.responses.get(arg(a, 0)?)?.status;
                return Ok(Some(Val::I32(i32::from(s))));
            }
            "outgoing-response.set-status-code" => {
                let status = arg(a, 1)?;
                let r = self.responses.get_mut(arg(a, 0)?)?;
                let ok = (100..=999).contains(&status);
                if ok {
                    r.status = status as u16;
                }
                return Ok(Some(Val::I32(i32::from(!ok))));
            }
            "outgoing-response.headers" => {
                let id = self.responses.get(arg(a, 0)?)?.headers;
                return Ok(Some(Val::I32(self.fields.insert(id) as i32)));
            }
            "outgoing-response.body" => {
                let r = self.responses.get_mut(arg(a, 0)?)?;
                let first = !core::mem::replace(&mut r.body_taken, true);
                let h = first.then(|| self.out_bodies.insert(()));
                result_handle(mem, arg(a, 1)?, h)?;
            }
            _ => return Err(Trap::Unknown),
        }
        Ok(None)
    }

    fn method(&self, at: i32, mem: &mut dyn Memory) -> Result<(), Trap> {
        const CASES: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let at = at as u32;
        match CASES.iter().position(|m| *m == self.request.method) {
            Some(i) => abi::store_u8(mem, at, i as u8),
            None => {
                abi::store_u8(mem, at, 9)?;
                abi::store_list_u8(mem, at + 4, self.request.method.as_bytes())
            }
        }
    }

    fn scheme(&self, at: i32, mem: &mut dyn Memory) -> Result<(), Trap> {
        let at = at as u32;
        abi::store_u8(mem, at, 1)?;
        match self.request.scheme.as_str() {
            "http" => abi::store_u8(mem, at + 4, 0),
            "https" => abi::store_u8(mem, at + 4, 1),
            other => {
                abi::store_u8(mem, at + 4, 2)?;
                abi::store_list_u8(mem, at + 8, other.as_bytes())
            }
        }
    }

    pub(crate) fn pollable(&mut self) -> Val {
        Val::I32(self.pollables.insert(()) as i32)
    }

    /// Appends to an output stream's destination.
    pub(crate) fn write_out(&mut self, out: Output, bytes: &[u8]) -> Result<(), Trap> {
        match out {
            Output::Body => {
                if self.body.len() + bytes.len() > MAX_BODY {
                    return Err(Trap::Misuse("response body over the 1 MiB limit"));
                }
                self.body.extend_from_slice(bytes);
            }
            Output::Stdout | Output::Stderr => {
                if self.log.len() + bytes.len() <= 64 * 1024 {
                    self.log.extend_from_slice(bytes);
                }
            }
        }
        Ok(())
    }
}

/// `option<string>` = some(`s`) at `at`.
fn some_string(mem: &mut dyn Memory, at: i32, s: &str) -> Result<(), Trap> {
    abi::store_u8(mem, at as u32, 1)?;
    abi::store_list_u8(mem, at as u32 + 4, s.as_bytes())
}

/// `result<own<T>>` at `at`: ok(handle), or err when `None`.
pub(crate) fn result_handle(mem: &mut dyn Memory, at: i32, h: Option<u32>) -> Result<(), Trap> {
    match h {
        Some(h) => {
            abi::store_u8(mem, at as u32, 0)?;
            abi::store_u32(mem, at as u32 + 4, h)
        }
        None => abi::store_u8(mem, at as u32, 1),
    }
}
