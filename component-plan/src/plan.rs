//! The plan of a component: the core modules in it, the core instances to create in
//! order, and for each core import either an export of an earlier instance or a host
//! function (a `canon lower` of an imported WASI function, or a resource built-in) with
//! its canonical options. The guest replays it; nothing in it needs the component model.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentInstance, ComponentTypeRef, ExternalKind,
    Instance, Parser, Payload,
};

mod canon;

use crate::shim::Shim;
use crate::PlanError as ComponentError;

/// A core export of an earlier core instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreRef {
    /// The core instance (index into [`Plan::instances`]).
    pub instance: u32,
    /// Its export's name.
    pub name: String,
}

/// Canonical ABI options of a lowered or lifted function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The memory strings and lists live in.
    pub memory: Option<CoreRef>,
    /// `cabi_realloc`, for values the host hands to the guest.
    pub realloc: Option<CoreRef>,
    /// Called after a lifted function's results were read.
    pub post_return: Option<CoreRef>,
}

/// What a host function does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// An imported WASI function, lowered (`canon lower`).
    Lower,
    /// `resource.drop` of an imported resource type.
    ResourceDrop,
}

/// A function the guest provides to a core instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFunc {
    /// The interface, with its version: `wasi:http/types@0.2.4`.
    pub interface: String,
    /// The function (`[method]fields.set`) or the resource (`fields`).
    pub name: String,
    /// Lower or resource drop.
    pub kind: HostKind,
    /// Its canonical options.
    pub options: Options,
}

/// One import of a core instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An export of an earlier core instance (a function, table, memory or global).
    Export(CoreRef),
    /// A host function.
    Host(HostFunc),
}

/// A core instance, in instantiation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreInstance {
    /// Instantiate core module `module`; each import module name is another instance.
    Module {
        /// Index into [`Plan::modules`].
        module: u32,
        /// Import module name -> core instance.
        args: Vec<(String, u32)>,
    },
    /// A bag of items, used as another instance's imports.
    Items(Vec<(String, Item)>),
}

/// How to run a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Each core module's bytes, as a range of the component binary.
    pub modules: Vec<Range<usize>>,
    /// The core instances in the order to create them.
    pub instances: Vec<CoreInstance>,
    /// The exported `handle` function: a core export, lifted with these options.
    pub handler: (CoreRef, Options),
    /// The interface the handler is exported as (`wasi:http/incoming-handler@0.2.4`).
    pub handler_interface: String,
    /// Every top-level import's name (interfaces, with versions).
    pub imports: Vec<String>,
}

/// A core function, table, memory or global: from an instance, or made by the host.
#[derive(Debug, Clone)]
enum CoreItem {
    Export(CoreRef),
    Host(HostFunc),
}

/// A component-level function.
#[derive(Debug, Clone)]
enum Func {
    /// `interface`'s function `name`.
    Imported {
        interface: String,
        name: String,
    },
    /// A lifted core function.
    Lifted(CoreRef, Options),
    Other,
}

/// A component-level instance.
#[derive(Debug, Clone)]
enum CompInstance {
    Imported(String),
    Exports(Vec<(String, ComponentExternalKind, u32)>),
    Other,
}

/// A component-level type: a resource of an imported interface, or something else.
#[derive(Debug, Clone)]
enum Type {
    Resource { interface: String, name: String },
    Other,
}

/// The index spaces while the component is read.
#[derive(Default)]
struct Spaces {
    modules: Vec<Range<usize>>,
    instances: Vec<CoreInstance>,
    funcs: Vec<CoreItem>,
    tables: Vec<CoreRef>,
    memories: Vec<CoreRef>,
    globals: Vec<CoreRef>,
    cfuncs: Vec<Func>,
    cinstances: Vec<CompInstance>,
    ctypes: Vec<Type>,
    /// Nested components: what each re-exports (`None`: it does more).
    components: Vec<Option<Vec<(String, String)>>>,
    imports: Vec<String>,
    exports: Vec<(String, ComponentExternalKind, u32)>,
    unsupported: Vec<String>,
}

fn invalid(e: impl core::fmt::Display) -> ComponentError {
    ComponentError::Invalid(e.to_string())
}

fn get<T: Clone>(v: &[T], i: u32, what: &str) -> Result<T, ComponentError> {
    v.get(i as usize)
        .cloned()
        .ok_or_else(|| invalid(format!("{what} index {i} out of range")))
}

/// What is being read: a core module, or a nested component.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Module,
    Component,
}

/// Reads the component's structure into a plan (the component is already validated).
pub fn plan(bytes: &[u8]) -> Result<Plan, ComponentError> {
    let mut s = Spaces::default();
    let mut open: Vec<Open> = Vec::new();
    let mut shim = Shim::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        let opens = match payload {
            Payload::ModuleSection { .. } => Some(Open::Module),
            Payload::ComponentSection { .. } => Some(Open::Component),
            _ => None,
        };
        let ends = matches!(payload, Payload::End(_));
        match (open.as_slice(), &payload) {
            ([], _) => s.section(payload)?,
            ([Open::Component], Payload::End(_)) => {
                s.components.push(core::mem::take(&mut shim).exports());
            }
            ([Open::Component], _) => shim.section(payload).map_err(invalid)?,
            _ => {}
        }
        if let Some(kind) = opens {
            open.push(kind);
        } else if ends {
            open.pop();
        }
    }
    s.finish()
}

impl Spaces {
    fn section(&mut self, payload: Payload<'_>) -> Result<(), ComponentError> {
        match payload {
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                self.modules.push(unchecked_range);
            }
            Payload::InstanceSection(reader) => {
                for instance in reader {
                    self.core_instance(instance.map_err(invalid)?)?;
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader {
                    self.alias(alias.map_err(invalid)?)?;
                }
            }
            Payload::ComponentCanonicalSection(reader) => {
                for canon in reader {
                    self.canon(canon.map_err(invalid)?)?;
                }
            }
            Payload::ComponentTypeSection(reader) => {
                for _ in reader {
                    self.ctypes.push(Type::Other);
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(invalid)?;
                    self.import(import.name.0, import.ty);
                }
            }
            Payload::ComponentInstanceSection(reader) => {
                for instance in reader {
                    self.component_instance(instance.map_err(invalid)?)?;
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    let e = export.map_err(invalid)?;
                    self.exports.push((e.name.0.to_string(), e.kind, e.index));
                    // An export is a new index in its kind's space, aliasing the item.
                    self.reindex(e.kind, e.index)?;
                }
            }
            Payload::ComponentStartSection { .. } => {
                self.unsupported.push("a component start function".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// A component instance: a bundle of exports, or a nested component instantiated.
    fn component_instance(
        &mut self,
        instance: ComponentInstance<'_>,
    ) -> Result<(), ComponentError> {
        let instance = match instance {
            ComponentInstance::FromExports(items) => CompInstance::Exports(
                items
                    .iter()
                    .map(|e| (e.name.0.to_string(), e.kind, e.index))
                    .collect(),
            ),
            ComponentInstance::Instantiate {
                component_index,
                args,
            } => self.instantiate(component_index, &args)?,
        };
        self.cinstances.push(instance);
        Ok(())
    }

    /// An instance of a nested component that re-exports the functions it is given.
    fn instantiate(
        &self,
        component: u32,
        args: &[wasmparser::ComponentInstantiationArg<'_>],
    ) -> Result<CompInstance, ComponentError> {
        let shim = get(&self.components, component, "component")?.ok_or(ComponentError::Nested)?;
        let mut exports = Vec::new();
        for (export, import) in shim {
            let arg = args
                .iter()
                .find(|a| a.name == import && a.kind == ComponentExternalKind::Func)
                .ok_or(ComponentError::Nested)?;
            exports.push((export, ComponentExternalKind::Func, arg.index));
        }
        Ok(CompInstance::Exports(exports))
    }

    fn import(&mut self, name: &str, ty: ComponentTypeRef) {
        self.imports.push(name.to_string());
        match ty {
            ComponentTypeRef::Instance(_) => self
                .cinstances
                .push(CompInstance::Imported(name.to_string())),
            ComponentTypeRef::Func(_) => self.cfuncs.push(Func::Other),
            ComponentTypeRef::Type(_) => self.ctypes.push(Type::Other),
            ComponentTypeRef::Module(_)
            | ComponentTypeRef::Component(_)
            | ComponentTypeRef::Value(_) => {}
        }
    }

    fn reindex(&mut self, kind: ComponentExternalKind, index: u32) -> Result<(), ComponentError> {
        match kind {
            ComponentExternalKind::Func => {
                let f = get(&self.cfuncs, index, "function")?;
                self.cfuncs.push(f);
            }
            ComponentExternalKind::Instance => {
                let i = get(&self.cinstances, index, "instance")?;
                self.cinstances.push(i);
            }
            ComponentExternalKind::Type => {
                let t = get(&self.ctypes, index, "type")?;
                self.ctypes.push(t);
            }
            ComponentExternalKind::Component => {
                let c = get(&self.components, index, "component")?;
                self.components.push(c);
            }
            _ => {}
        }
        Ok(())
    }

    fn core_instance(&mut self, instance: Instance<'_>) -> Result<(), ComponentError> {
        let instance = match instance {
            Instance::Instantiate { module_index, args } => CoreInstance::Module {
                module: module_index,
                args: args.iter().map(|a| (a.name.to_string(), a.index)).collect(),
            },
            Instance::FromExports(items) => {
                let mut out = Vec::new();
                for e in items.iter() {
                    let item = match e.kind {
                        ExternalKind::Func => match get(&self.funcs, e.index, "core function")? {
                            CoreItem::Export(r) => Item::Export(r),
                            CoreItem::Host(h) => Item::Host(h),
                        },
                        ExternalKind::Table => Item::Export(get(&self.tables, e.index, "table")?),
                        ExternalKind::Memory => {
                            Item::Export(get(&self.memories, e.index, "memory")?)
                        }
                        ExternalKind::Global => {
                            Item::Export(get(&self.globals, e.index, "global")?)
                        }
                        ExternalKind::Tag => {
                            return Err(ComponentError::Unsupported(vec!["exception tags".into()]))
                        }
                    };
                    out.push((e.name.to_string(), item));
                }
                CoreInstance::Items(out)
            }
        };
        self.instances.push(instance);
        Ok(())
    }

    fn alias(&mut self, alias: ComponentAlias<'_>) -> Result<(), ComponentError> {
        match alias {
            ComponentAlias::CoreInstanceExport {
                kind,
                instance_index,
                name,
            } => {
                let r = CoreRef {
                    instance: instance_index,
                    name: name.to_string(),
                };
                match kind {
                    ExternalKind::Func => self.funcs.push(CoreItem::Export(r)),
                    ExternalKind::Table => self.tables.push(r),
                    ExternalKind::Memory => self.memories.push(r),
                    ExternalKind::Global => self.globals.push(r),
                    ExternalKind::Tag => {}
                }
            }
            ComponentAlias::InstanceExport {
                kind,
                instance_index,
                name,
            } => {
                let interface = match get(&self.cinstances, instance_index, "instance")? {
                    CompInstance::Imported(i) => Some(i),
                    _ => None,
                };
                match (kind, interface) {
                    (ComponentExternalKind::Func, Some(interface)) => {
                        self.cfuncs.push(Func::Imported {
                            interface,
                            name: name.to_string(),
                        })
                    }
                    (ComponentExternalKind::Type, Some(interface)) => {
                        self.ctypes.push(Type::Resource {
                            interface,
                            name: name.to_string(),
                        })
                    }
                    (ComponentExternalKind::Func, None) => self.cfuncs.push(Func::Other),
                    (ComponentExternalKind::Type, None) => self.ctypes.push(Type::Other),
                    (ComponentExternalKind::Instance, _) => {
                        self.cinstances.push(CompInstance::Other)
                    }
                    _ => {}
                }
            }
            ComponentAlias::Outer { kind, .. } => {
                if kind == wasmparser::ComponentOuterAliasKind::Type {
                    self.ctypes.push(Type::Other);
                }
            }
        }
        Ok(())
    }

    /// The exported handler, or the error naming what the component exports instead.
    fn handler(&self) -> Result<(String, CoreRef, Options), ComponentError> {
        let wrong =
            || ComponentError::WrongWorld(self.exports.iter().map(|e| e.0.clone()).collect());
        let (name, _, index) = self
            .exports
            .iter()
            .find(|(n, k, _)| {
                *k == ComponentExternalKind::Instance
                    && crate::names::unversioned(n) == Some(crate::names::HANDLER)
            })
            .ok_or_else(wrong)?;
        let CompInstance::Exports(items) = get(&self.cinstances, *index, "instance")? else {
            return Err(wrong());
        };
        let (_, _, f) = items
            .iter()
            .find(|(n, k, _)| n == crate::names::HANDLE && *k == ComponentExternalKind::Func)
            .ok_or_else(wrong)?;
        match get(&self.cfuncs, *f, "function")? {
            Func::Lifted(r, o) => Ok((name.clone(), r, o)),
            _ => Err(wrong()),
        }
    }

    /// Every name dust does not provide: interfaces outside the allowed set, then the
    /// functions and resources the guest does not implement.
    fn missing(&self) -> Vec<String> {
        use crate::names::{provides, unversioned, FUNCTIONS, INTERFACES, RESOURCES};
        let mut missing: Vec<String> = self
            .imports
            .iter()
            .filter(|i| !unversioned(i).is_some_and(|b| INTERFACES.contains(&b)))
            .cloned()
            .collect();
        for instance in &self.instances {
            let CoreInstance::Items(items) = instance else {
                continue;
            };
            for (_, item) in items {
                let Item::Host(h) = item else { continue };
                if !unversioned(&h.interface).is_some_and(|b| INTERFACES.contains(&b)) {
                    continue; // already listed as an interface
                }
                let (known, shown) = match h.kind {
                    HostKind::Lower => (FUNCTIONS, h.name.clone()),
                    HostKind::ResourceDrop => (RESOURCES, format!("[resource-drop]{}", h.name)),
                };
                if !provides(known, &h.interface, &h.name) {
                    missing.push(format!("{}#{shown}", h.interface));
                }
            }
        }
        missing.extend(self.unsupported.iter().cloned());
        let mut seen = alloc::collections::BTreeSet::new();
        missing.retain(|m| seen.insert(m.clone()));
        missing
    }

    fn finish(self) -> Result<Plan, ComponentError> {
        let (handler_interface, func, options) = self.handler()?;
        let missing = self.missing();
        if !missing.is_empty() {
            return Err(ComponentError::Unsupported(missing));
        }
        Ok(Plan {
            modules: self.modules,
            instances: self.instances,
            handler: (func, options),
            handler_interface,
            imports: self.imports,
        })
    }
}
