//! The canonical functions of a component (`canon lift`, `canon lower`, resource built-ins)
//! and their options, as the plan records them.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use wasmparser::{CanonicalFunction, CanonicalOption};

use super::{get, CoreItem, CoreRef, Func, HostFunc, HostKind, Options, Spaces, Type};
use crate::PlanError as ComponentError;

impl Spaces {
    /// A component function lifted from a core one; lifting a host function is unsupported.
    fn lift(&mut self, core_func: u32, options: &[CanonicalOption]) -> Result<(), ComponentError> {
        let func = match get(&self.funcs, core_func, "core function")? {
            CoreItem::Export(r) => r,
            CoreItem::Host(h) => {
                self.unsupported
                    .push(format!("lifting a host function ({})", h.name));
                CoreRef {
                    instance: u32::MAX,
                    name: h.name,
                }
            }
        };
        let options = self.options_or_default(options);
        self.cfuncs.push(Func::Lifted(func, options));
        Ok(())
    }

    /// [`Self::options`], or the defaults with what is wrong with them recorded as unsupported.
    fn options_or_default(&mut self, options: &[CanonicalOption]) -> Options {
        self.options(options).unwrap_or_else(|bad| {
            self.unsupported.extend(bad);
            Options::default()
        })
    }

    /// The canonical options dust supports, or what it does not among them.
    fn options(&self, options: &[CanonicalOption]) -> Result<Options, Vec<String>> {
        let mut out = Options::default();
        let mut bad = Vec::new();
        let export = |i: u32| match self.funcs.get(i as usize) {
            Some(CoreItem::Export(r)) => Some(r.clone()),
            _ => None,
        };
        for o in options {
            match *o {
                CanonicalOption::UTF8 => {}
                CanonicalOption::UTF16 | CanonicalOption::CompactUTF16 => {
                    bad.push("UTF-16 strings (string-encoding=utf16)".to_string())
                }
                CanonicalOption::Memory(i) => out.memory = self.memories.get(i as usize).cloned(),
                CanonicalOption::Realloc(i) => out.realloc = export(i),
                CanonicalOption::PostReturn(i) => out.post_return = export(i),
                CanonicalOption::Async | CanonicalOption::Callback(_) => {
                    bad.push("the async canonical ABI".to_string())
                }
            }
        }
        if bad.is_empty() {
            Ok(out)
        } else {
            Err(bad)
        }
    }

    /// One canonical function: a lifted export, a lowered import or a resource built-in.
    pub(super) fn canon(&mut self, canon: CanonicalFunction) -> Result<(), ComponentError> {
        match canon {
            CanonicalFunction::Lift {
                core_func_index,
                options,
                ..
            } => self.lift(core_func_index, &options)?,
            CanonicalFunction::Lower {
                func_index,
                options,
            } => {
                let host = match get(&self.cfuncs, func_index, "function")? {
                    Func::Imported { interface, name } => {
                        let options = self.options_or_default(&options);
                        Some(HostFunc {
                            interface,
                            name,
                            kind: HostKind::Lower,
                            options,
                        })
                    }
                    _ => None,
                };
                self.host(host, "lowering a function that is not imported");
            }
            CanonicalFunction::ResourceDrop { resource } => {
                let host = match get(&self.ctypes, resource, "type")? {
                    Type::Resource { interface, name } => Some(HostFunc {
                        interface,
                        name,
                        kind: HostKind::ResourceDrop,
                        options: Options::default(),
                    }),
                    Type::Other => None,
                };
                self.host(host, "resources the component defines (resource.drop)");
            }
            other => {
                let what = format!("{other:?}");
                let what = what.split([' ', '{', '(']).next().unwrap_or("").to_string();
                self.host(None, &format!("the canonical built-in {what}"));
            }
        }
        Ok(())
    }

    /// A new core function made by the host; `None` is one dust cannot make (`why`).
    fn host(&mut self, host: Option<HostFunc>, why: &str) {
        match host {
            Some(h) => self.funcs.push(CoreItem::Host(h)),
            None => {
                self.unsupported.push(why.to_string());
                self.funcs.push(CoreItem::Export(CoreRef {
                    instance: u32::MAX,
                    name: why.to_string(),
                }));
            }
        }
    }
}
