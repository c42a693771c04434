//! `wasi:http/types.fields`: header sets, names compared without case.

use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{self, Memory, Trap, Val, i32_arg as arg};
use crate::http::Host;

/// `header-error` cases.
const INVALID_SYNTAX: u8 = 0;
const IMMUTABLE: u8 = 2;

/// A field name as HTTP allows it (a token), lower-cased.
fn field_name(mem: &dyn Memory, ptr: i32, len: i32) -> Result<Option<String>, Trap> {
    let name = abi::string(mem, ptr, len)?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Ok(None);
    }
    Ok(Some(name.to_ascii_lowercase()))
}

/// A field value: no CR, LF or NUL.
fn valid_value(v: &[u8]) -> bool {
    !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// `result<_, header-error>` at `at`.
fn header_result(mem: &mut dyn Memory, at: i32, err: Option<u8>) -> Result<(), Trap> {
    match err {
        None => abi::store_u8(mem, at as u32, 0),
        Some(e) => {
            abi::store_u8(mem, at as u32, 1)?;
            abi::store_u8(mem, at as u32 + 1, e)
        }
    }
}

/// Lowers `entries` as `list<tuple<string, list<u8>>>` at `at`.
fn store_entries(mem: &mut dyn Memory, at: u32, entries: &[(String, Vec<u8>)]) -> Result<(), Trap> {
    abi::store_list(mem, at, entries, 16, 4, |mem, p, (n, v)| {
        abi::store_list_u8(mem, p, n.as_bytes())?;
        abi::store_list_u8(mem, p + 8, v)
    })
}

impl Host {
    pub(crate) fn fields_from_list(&mut self, a: &[Val], mem: &mut dyn Memory) -> Result<(), Trap> {
        let (ptr, len, ret) = (arg(a, 0)?, arg(a, 1)?, arg(a, 2)?);
        let mut entries = Vec::new();
        for i in 0..len as u32 {
            let at = (ptr as u32).checked_add(i * 16).ok_or(Trap::Bounds)?;
            let (np, nl) = (abi::load_u32(mem, at)?, abi::load_u32(mem, at + 4)?);
            let (vp, vl) = (abi::load_u32(mem, at + 8)?, abi::load_u32(mem, at + 12)?);
            let value = abi::bytes(mem, vp as i32, vl as i32)?.to_vec();
            match field_name(mem, np as i32, nl as i32)? {
                Some(n) if valid_value(&value) => entries.push((n, value)),
                _ => return header_result(mem, ret, Some(INVALID_SYNTAX)),
            }
        }
        let h = self.new_fields(entries, false);
        abi::store_u8(mem, ret as u32, 0)?;
        abi::store_u32(mem, ret as u32 + 4, h as u32)
    }

    pub(crate) fn fields_read(
        &mut self,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<Option<Val>, Trap> {
        let handle = arg(a, 0)?;
        let entries = self.set_entries(handle)?.clone();
        match name {
            "fields.entries" => store_entries(mem, arg(a, 1)? as u32, &entries)?,
            "fields.clone" => return Ok(Some(Val::I32(self.new_fields(entries, false)))),
            _ => {
                let key = field_name(mem, arg(a, 1)?, arg(a, 2)?)?.unwrap_or_default();
                let values: Vec<&Vec<u8>> = entries
                    .iter()
                    .filter(|(n, _)| *n == key)
                    .map(|(_, v)| v)
                    .collect();
                if name == "fields.has" {
                    return Ok(Some(Val::I32(i32::from(!values.is_empty()))));
                }
                abi::store_list(mem, arg(a, 3)? as u32, &values, 8, 4, |mem, p, v| {
                    abi::store_list_u8(mem, p, v)
                })?;
            }
        }
        Ok(None)
    }

    pub(crate) fn fields_write(
        &mut self,
        name: &str,
        a: &[Val],
        mem: &mut dyn Memory,
    ) -> Result<(), Trap> {
        let handle = arg(a, 0)?;
        let ret = *a
            .last()
            .and_then(|v| match v {
                Val::I32(r) => Some(r),
                Val::I64(_) => None,
            })
            .ok_or(Trap::Args)?;
        let key = field_name(mem, arg(a, 1)?, arg(a, 2)?)?;
        let values = match name {
            "fields.set" => abi::lists(mem, arg(a, 3)?, arg(a, 4)?)?,
            "fields.append" => alloc::vec![abi::bytes(mem, arg(a, 3)?, arg(a, 4)?)?.to_vec()],
            _ => Vec::new(),
        };
        let set = self.set_mut(handle)?;
        let err = match key {
            _ if set.immutable => Some(IMMUTABLE),
            None => Some(INVALID_SYNTAX),
            Some(_) if !values.iter().all(|v| valid_value(v)) => Some(INVALID_SYNTAX),
            Some(key) => {
                if name != "fields.append" {
                    set.entries.retain(|(n, _)| *n != key);
                }
                set.entries
                    .extend(values.into_iter().map(|v| (key.clone(), v)));
                None
            }
        };
        header_result(mem, ret, err)
    }
}
