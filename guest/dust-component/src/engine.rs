//! Runs a component's plan in wasmi: compiles its core modules, creates the core
//! instances in order (each import either another instance's export or a host function of
//! [`Host`]), and calls the exported `handle`.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use dust_component_plan::{CoreInstance, CoreRef, HostFunc, HostKind, Item, Plan};
use wasmi::{
    AsContextMut, Caller, Engine, Extern, ExternType, Func, FuncType, Instance, Linker, Memory,
    Module, Store,
};

use crate::abi::{self, Trap, Val};
use crate::http::{Host, NoResponse, Request, Response};

/// Most core parameters of a lowered function: 16 flat values and a return pointer.
const MAX_FLAT_PARAMS: usize = 17;

/// What a store holds: the host state of the request being served.
#[derive(Default)]
pub struct Ctx {
    /// `None` while a host function runs (it holds the state then).
    pub host: Option<Box<Host>>,
    /// Memory and table limits.
    pub limits: wasmi::StoreLimits,
}

/// Why a component could not be prepared or answered.
#[derive(Debug)]
pub enum Error {
    /// wasmi refused a module, an instance or the call.
    Wasm(wasmi::Error),
    /// The plan names an instance or export that is not there.
    Plan(String),
    /// The handler returned without a response, or set an error.
    NoResponse(NoResponse),
}

impl From<wasmi::Error> for Error {
    fn from(e: wasmi::Error) -> Self {
        Self::Wasm(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Wasm(e) => write!(f, "{e}"),
            Self::Plan(what) => write!(f, "the component's plan: {what}"),
            Self::NoResponse(NoResponse::NeverSet) => f.write_str("the handler set no response"),
            Self::NoResponse(NoResponse::Error) => f.write_str("the handler answered an error"),
        }
    }
}

/// A core instance while the plan is replayed.
enum Slot {
    Real(Instance),
    Items(Vec<(String, Item)>),
}

/// The compiled modules of a component.
pub struct Component {
    modules: Vec<Module>,
    plan: Plan,
}

/// A component instantiated in its own store, ready for one request.
pub struct Instantiated {
    /// The store (its data is the request's [`Host`] state).
    pub store: Store<Ctx>,
    handle: Func,
}

impl Component {
    /// Compiles the core modules of `bytes` (planned as `plan`).
    pub fn new(engine: &Engine, bytes: &[u8], plan: Plan) -> Result<Self, Error> {
        let mut modules = Vec::new();
        for range in &plan.modules {
            let code = bytes
                .get(range.clone())
                .ok_or(Error::Plan("module range".into()))?;
            modules.push(Module::new(engine, code)?);
        }
        Ok(Self { modules, plan })
    }

    /// Creates every core instance in a new store.
    pub fn instantiate(&self, mut store: Store<Ctx>) -> Result<Instantiated, Error> {
        let mut slots: Vec<Slot> = Vec::new();
        for instance in &self.plan.instances {
            let slot = match instance {
                CoreInstance::Items(items) => Slot::Items(items.clone()),
                CoreInstance::Module { module, args } => {
                    let module = self
                        .modules
                        .get(*module as usize)
                        .ok_or(Error::Plan("module index".into()))?;
                    Slot::Real(link(&mut store, &slots, module, args)?)
                }
            };
            slots.push(slot);
        }
        let handle = match export(&store, &slots, &self.plan.handler.0)? {
            Extern::Func(f) => f,
            _ => return Err(Error::Plan("handle is not a function".into())),
        };
        Ok(Instantiated { store, handle })
    }
}

impl Instantiated {
    /// Runs `handle` for `request`; `seed` and `wall_ns` are this VM's entropy and time.
    pub fn serve(
        &mut self,
        request: Request,
        seed: u64,
        wall_ns: u64,
    ) -> (Result<Response, Error>, Vec<u8>) {
        let mut host = Box::new(Host::new(request, seed, wall_ns));
        let args = host.handle_args().map(to_wasmi);
        self.store.data_mut().host = Some(host);
        let called = self.handle.call(&mut self.store, &args, &mut []);
        let Some(mut host) = self.store.data_mut().host.take() else {
            return (Err(Error::Plan("host state lost".into())), Vec::new());
        };
        let log = core::mem::take(&mut host.log);
        let result = match called {
            Err(e) => Err(Error::Wasm(e)),
            Ok(()) => host.finish().map_err(Error::NoResponse),
        };
        (result, log)
    }
}

fn to_wasmi(v: Val) -> wasmi::Val {
    match v {
        Val::I32(v) => wasmi::Val::I32(v),
        Val::I64(v) => wasmi::Val::I64(v),
    }
}

/// An export of an earlier instance (or of a bag of items).
fn export(store: &Store<Ctx>, slots: &[Slot], r: &CoreRef) -> Result<Extern, Error> {
    let missing = || Error::Plan(format!("no export {} of instance {}", r.name, r.instance));
    match slots.get(r.instance as usize).ok_or_else(missing)? {
        Slot::Real(i) => i.get_export(store, &r.name).ok_or_else(missing),
        Slot::Items(items) => match items.iter().find(|(n, _)| *n == r.name) {
            Some((_, Item::Export(inner))) => export(store, slots, inner),
            _ => Err(missing()),
        },
    }
}

/// Instantiates `module` with each import from the instance its module name names.
fn link(
    store: &mut Store<Ctx>,
    slots: &[Slot],
    module: &Module,
    args: &[(String, u32)],
) -> Result<Instance, Error> {
    let mut linker = Linker::<Ctx>::new(store.engine());
    let imports: Vec<(String, String, ExternType)> = module
        .imports()
        .map(|i| (i.module().to_string(), i.name().to_string(), i.ty().clone()))
        .collect();
    for (from, name, ty) in imports {
        let missing = || Error::Plan(format!("import {from}::{name} has no source"));
        let (_, index) = args.iter().find(|(n, _)| *n == from).ok_or_else(missing)?;
        let item = match slots.get(*index as usize).ok_or_else(missing)? {
            Slot::Real(i) => i.get_export(&*store, &name).ok_or_else(missing)?,
            Slot::Items(items) => match items.iter().find(|(n, _)| *n == name) {
                Some((_, Item::Export(r))) => export(store, slots, r)?,
                Some((_, Item::Host(h))) => {
                    let ExternType::Func(fty) = ty else {
                        return Err(missing());
                    };
                    Extern::Func(host_func(store, slots, h, fty)?)
                }
                None => return Err(missing()),
            },
        };
        linker
            .define(&from, &name, item)
            .map_err(|e| Error::Plan(format!("{e}")))?;
    }
    Ok(linker.instantiate_and_start(store, module)?)
}

/// The memory and `cabi_realloc` of a host function's canonical options.
fn options(
    store: &Store<Ctx>,
    slots: &[Slot],
    h: &HostFunc,
) -> Result<(Option<Memory>, Option<Func>), Error> {
    let memory = match &h.options.memory {
        Some(r) => export(store, slots, r)?.into_memory(),
        None => None,
    };
    let realloc = match &h.options.realloc {
        Some(r) => export(store, slots, r)?.into_func(),
        None => None,
    };
    Ok((memory, realloc))
}

/// A wasmi function that calls [`Host`] for `h`, with the core type the module imports.
fn host_func(
    store: &mut Store<Ctx>,
    slots: &[Slot],
    h: &HostFunc,
    ty: FuncType,
) -> Result<Func, Error> {
    let (memory, realloc) = options(store, slots, h)?;
    let (interface, name, kind) = (h.interface.clone(), h.name.clone(), h.kind);
    let func =
        move |mut caller: Caller<'_, Ctx>, params: &[wasmi::Val], results: &mut [wasmi::Val]| {
            // No heap allocation per call: the guest's allocator is slow to search.
            let mut flat = [Val::I32(0); MAX_FLAT_PARAMS];
            for (slot, p) in flat.iter_mut().zip(params) {
                *slot = match p {
                    wasmi::Val::I64(v) => Val::I64(*v),
                    wasmi::Val::I32(v) => Val::I32(*v),
                    _ => Val::I32(0),
                };
            }
            let args = &flat[..params.len().min(MAX_FLAT_PARAMS)];
            let mut host = caller
                .data_mut()
                .host
                .take()
                .ok_or_else(|| wasmi::Error::new("host function called outside a request"))?;
            let out = {
                let mut mem = Mem {
                    caller: &mut caller,
                    memory,
                    realloc,
                };
                match kind {
                    HostKind::Lower => host.call(&interface, &name, args, &mut mem),
                    HostKind::ResourceDrop => {
                        let handle = abi::i32_arg(args, 0);
                        handle
                            .and_then(|h| host.drop_handle(&name, h))
                            .map(|()| None)
                    }
                }
            };
            caller.data_mut().host = Some(host);
            match out {
                Ok(Some(v)) => {
                    if let Some(slot) = results.first_mut() {
                        *slot = to_wasmi(v);
                    }
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(Trap::Exit(status)) => Err(wasmi::Error::i32_exit(status)),
                Err(t) => Err(wasmi::Error::new(format!("{interface}#{name}: {t}"))),
            }
        };
    Ok(Func::new(store.as_context_mut(), ty, func))
}

/// The instance's memory and `cabi_realloc` as the ABI code sees them.
struct Mem<'a, 'b> {
    caller: &'a mut Caller<'b, Ctx>,
    memory: Option<Memory>,
    realloc: Option<Func>,
}

impl crate::abi::Memory for Mem<'_, '_> {
    fn data(&self) -> &[u8] {
        match self.memory {
            Some(m) => m.data(&*self.caller),
            None => &[],
        }
    }

    fn data_mut(&mut self) -> &mut [u8] {
        match self.memory {
            Some(m) => m.data_mut(&mut *self.caller),
            None => &mut [],
        }
    }

    fn realloc(&mut self, align: u32, size: u32) -> Result<u32, Trap> {
        let f = self.realloc.ok_or(Trap::Realloc)?;
        let args = [0, 0, align as i32, size as i32].map(wasmi::Val::I32);
        let mut out = [wasmi::Val::I32(0)];
        f.call(&mut *self.caller, &args, &mut out)
            .map_err(|_| Trap::Realloc)?;
        match out[0] {
            wasmi::Val::I32(p) if p != 0 => Ok(p as u32),
            _ => Err(Trap::Realloc),
        }
    }
}
