//! `wasi:io`, `wasi:random`, `wasi:clocks` and the `wasi:cli` pieces Rust std imports.
//! Streams never block: the request body is all there, writes are buffered, and every
//! pollable is ready at once.

use alloc::vec::Vec;

use crate::abi::{self, Memory, Trap, Val, i32_arg as arg, i64_arg};
use crate::http::{Host, Input, Output};

/// What `check-write` allows at a time.
const WRITE_BUDGET: u64 = 64 * 1024;

/// `result<_, stream-error>` or `result<list<u8>, stream-error>` = err(closed) at `at`.
fn closed(mem: &mut dyn Memory, at: u32, payload_at: u32) -> Result<(), Trap> {
    abi::store_u8(mem, at, 1)?;
    abi::store_u8(mem, at + payload_at, 1)
}

impl Host {
    pub(crate) fn wasi(
        &mut self,
        iface: &str,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        let name = name.strip_prefix("[method]").unwrap_or(name);
        match iface {
            "wasi:io/streams" => self.streams(name, a, mem),
            "wasi:io/poll" => match name {
                "pollable.ready" => Ok(Some(Val::I32(1))),
                "pollable.block" => self.pollables.get(arg(a, 0)?).map(|_| None),
                "poll" => {
                    let n = arg(a, 1)? as u32;
                    let ready: Vec<u32> = (0..n).collect();
                    abi::store_list(mem, arg(a, 2)? as u32, &ready, 4, 4, |m, p, i| {
                        abi::store_u32(m, p, *i)
                    })?;
                    Ok(None)
                }
                _ => Err(Trap::Unknown),
            },
            "wasi:io/error" if name == "error.to-debug-string" => {
                self.errors.get(arg(a, 0)?)?;
                abi::store_list_u8(mem, arg(a, 1)? as u32, b"stream error")?;
                Ok(None)
            }
            "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => {
                self.random(name, a, mem)
            }
            "wasi:clocks/monotonic-clock" | "wasi:clocks/wall-clock" => {
                self.clocks(iface, name, a, mem)
            }
            _ => self.cli(iface, name, a, mem),
        }
    }

    /// `wasi:io/streams`: the request body in, the response body (or stdout/stderr) out.
    fn streams(
        &mut self,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        match name {
            "input-stream.subscribe" | "output-stream.subscribe" => Ok(Some(self.pollable())),
            _ if name.starts_with("input-stream.") => {
                self.input_stream(name, a, mem).map(|()| None)
            }
            _ => self.output_stream(name, a, mem).map(|()| None),
        }
    }

    fn input_stream(&mut self, name: &str, a: &[Val], mem: &mut dyn Memory) -> Result<(), Trap> {
        match name {
            "input-stream.read" | "input-stream.blocking-read" => {
                let at = arg(a, 2)? as u32;
                let chunk = self.read_in(arg(a, 0)?, i64_arg(a, 1)? as u64)?;
                match chunk {
                    None => closed(mem, at, 4)?,
                    Some(bytes) => {
                        abi::store_u8(mem, at, 0)?;
                        abi::store_list_u8(mem, at + 4, &bytes)?;
                    }
                }
            }
            "input-stream.skip" | "input-stream.blocking-skip" => {
                let at = arg(a, 2)? as u32;
                match self.read_in(arg(a, 0)?, i64_arg(a, 1)? as u64)? {
                    None => closed(mem, at, 8)?,
                    Some(bytes) => {
                        abi::store_u8(mem, at, 0)?;
                        abi::store_u64(mem, at + 8, bytes.len() as u64)?;
                    }
                }
            }
            _ => return Err(Trap::Unknown),
        }
        Ok(())
    }

    fn output_stream(&mut self, name: &str, a: &[Val], mem: &mut dyn Memory) -> Result<(), Trap> {
        match name {
            "output-stream.check-write" => {
                self.outputs.get(arg(a, 0)?)?;
                let at = arg(a, 1)? as u32;
                abi::store_u8(mem, at, 0)?;
                abi::store_u64(mem, at + 8, WRITE_BUDGET)?;
            }
            "output-stream.write" | "output-stream.blocking-write-and-flush" => {
                let out = *self.outputs.get(arg(a, 0)?)?;
                let bytes = abi::bytes(mem, arg(a, 1)?, arg(a, 2)?)?.to_vec();
                self.write_out(out, &bytes)?;
                abi::store_u8(mem, arg(a, 3)? as u32, 0)?;
            }
            "output-stream.flush" | "output-stream.blocking-flush" => {
                self.outputs.get(arg(a, 0)?)?;
                abi::store_u8(mem, arg(a, 1)? as u32, 0)?;
            }
            "output-stream.write-zeroes" | "output-stream.blocking-write-zeroes-and-flush" => {
                let out = *self.outputs.get(arg(a, 0)?)?;
                let n = usize::try_from(i64_arg(a, 1)?).map_err(|_| Trap::Args)?;
                self.write_out(out, &alloc::vec![0; n.min(crate::http::MAX_BODY + 1)])?;
                abi::store_u8(mem, arg(a, 2)? as u32, 0)?;
            }
            "output-stream.splice" | "output-stream.blocking-splice" => {
                let out = *self.outputs.get(arg(a, 0)?)?;
                let at = arg(a, 3)? as u32;
                match self.read_in(arg(a, 1)?, i64_arg(a, 2)? as u64)? {
                    None => closed(mem, at, 8)?,
                    Some(bytes) => {
                        self.write_out(out, &bytes)?;
                        abi::store_u8(mem, at, 0)?;
                        abi::store_u64(mem, at + 8, bytes.len() as u64)?;
                    }
                }
            }
            _ => return Err(Trap::Unknown),
        }
        Ok(())
    }

    /// Up to `len` bytes of input stream `handle`; `None` once it is closed.
    fn read_in(&mut self, handle: i32, len: u64) -> Result<Option<Vec<u8>>, Trap> {
        match *self.inputs.get(handle)? {
            Input::Stdin => Ok(None),
            Input::Body => {
                let rest = &self.request.body[self.body_pos..];
                if rest.is_empty() {
                    return Ok(None);
                }
                let n = rest.len().min(usize::try_from(len).unwrap_or(usize::MAX));
                let chunk = rest[..n].to_vec();
                self.body_pos += n;
                Ok(Some(chunk))
            }
        }
    }

    /// xorshift64* over this VM's seed: every VM restored from a snapshot gets its own.
    pub(crate) fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn random(&mut self, name: &str, a: &[Val], mem: &mut dyn Memory) -> Result<Option<Val>, Trap> {
        match name {
            "get-random-u64" | "get-insecure-random-u64" => {
                Ok(Some(Val::I64(self.next_random() as i64)))
            }
            "get-random-bytes" | "get-insecure-random-bytes" => {
                let n = usize::try_from(i64_arg(a, 0)?).map_err(|_| Trap::Args)?;
                let n = n.min(crate::http::MAX_BODY);
                let bytes: Vec<u8> = (0..n).map(|_| self.next_random() as u8).collect();
                abi::store_list_u8(mem, arg(a, 1)? as u32, &bytes)?;
                Ok(None)
            }
            "insecure-seed" => {
                let at = arg(a, 0)? as u32;
                let (x, y) = (self.next_random(), self.next_random());
                abi::store_u64(mem, at, x)?;
                abi::store_u64(mem, at + 8, y)?;
                Ok(None)
            }
            _ => Err(Trap::Unknown),
        }
    }

    fn clocks(
        &mut self,
        iface: &str,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        let wall = iface.ends_with("wall-clock");
        match name {
            "now" if !wall => {
                // Moves forward on every read; the VM has no timer the handler could see.
                self.clock_ns += 1000;
                Ok(Some(Val::I64(self.clock_ns as i64)))
            }
            "resolution" if !wall => Ok(Some(Val::I64(1000))),
            "subscribe-instant" | "subscribe-duration" => Ok(Some(self.pollable())),
            "now" | "resolution" => {
                let ns = if name == "now" { self.wall_ns } else { 1000 };
                let at = arg(a, 0)? as u32;
                abi::store_u64(mem, at, ns / 1_000_000_000)?;
                abi::store_u32(mem, at + 8, (ns % 1_000_000_000) as u32)?;
                Ok(None)
            }
            _ => Err(Trap::Unknown),
        }
    }

    fn cli(
        &mut self,
        iface: &str,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        let handle = |v: u32| Ok(Some(Val::I32(v as i32)));
        match (iface, name) {
            ("wasi:cli/stdin", "get-stdin") => handle(self.inputs.insert(Input::Stdin)),
            ("wasi:cli/stdout", "get-stdout") => handle(self.outputs.insert(Output::Stdout)),
            ("wasi:cli/stderr", "get-stderr") => handle(self.outputs.insert(Output::Stderr)),
            ("wasi:cli/exit", "exit") => Err(Trap::Exit(i32::from(arg(a, 0)? != 0))),
            ("wasi:cli/environment", "get-environment" | "get-arguments") => {
                // Empty lists: a component's environment is not the request's.
                let at = arg(a, 0)? as u32;
                abi::store_u32(mem, at, 4)?;
                abi::store_u32(mem, at + 4, 0)?;
                Ok(None)
            }
            ("wasi:cli/environment", "initial-cwd")
            | ("wasi:cli/terminal-stdin", "get-terminal-stdin")
            | ("wasi:cli/terminal-stdout", "get-terminal-stdout")
            | ("wasi:cli/terminal-stderr", "get-terminal-stderr") => {
                abi::store_u8(mem, arg(a, 0)? as u32, 0)?;
                Ok(None)
            }
            _ => Err(Trap::Unknown),
        }
    }
}
