//! The nested components wit-component makes to give an export its type: they import
//! functions (and types) and export them again under the interface's names.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use wasmparser::{ComponentExternalKind, ComponentTypeRef, Payload};

/// A nested component as wit-component makes them to give an export its type: it only
/// imports functions (and types) and exports them again.
#[derive(Default)]
pub struct Shim {
    /// Its function index space: the import each one is, if any.
    funcs: Vec<Option<String>>,
    /// Export name -> import name.
    exports: Vec<(String, String)>,
    /// It does something else.
    other: bool,
}

impl Shim {
    pub fn section(&mut self, payload: Payload<'_>) -> wasmparser::Result<()> {
        match payload {
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import?;
                    if matches!(import.ty, ComponentTypeRef::Func(_)) {
                        self.funcs.push(Some(import.name.0.to_string()));
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    let e = export?;
                    if e.kind == ComponentExternalKind::Func {
                        let import = self.funcs.get(e.index as usize).cloned().flatten();
                        match import {
                            Some(i) => self.exports.push((e.name.0.to_string(), i.clone())),
                            None => self.other = true,
                        }
                        self.funcs.push(None);
                    }
                }
            }
            Payload::ComponentTypeSection(_)
            | Payload::ComponentAliasSection(_)
            | Payload::CustomSection(_)
            | Payload::Version { .. }
            | Payload::End(_) => {}
            _ => self.other = true,
        }
        Ok(())
    }

    /// Export -> import, or `None` for a component that does more than re-export.
    pub fn exports(self) -> Option<Vec<(String, String)>> {
        (!self.other).then_some(self.exports)
    }
}
