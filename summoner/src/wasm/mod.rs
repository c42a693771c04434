//! WebAssembly services: a `wasm32-wasip1` module run per request, either compiled ahead
//! of time into a guest image of its own ([`aot`], the default engine) or interpreted by
//! the built-in `dust-wasm` guest, which gets the module as its VM's initrd (see
//! docs/wasm.md).
//!
//! A module is checked here, on the host, when its service is created: the `\0asm` magic,
//! the version (a component is refused as such), wasmparser validation with the features
//! the guest's wasmi runs, every import (only the WASI preview 1 functions the guest
//! implements), a `_start` export, and memory that fits the VM. A bad module is an error
//! at creation, never a service that fails every request.

pub mod aot;
mod signatures;

use std::path::{Path, PathBuf};

use wasmparser::{Parser, Payload, TypeRef, Validator, WasmFeatures};

pub use dust_abi::wasm::{DEFAULT_FUEL, OVERHEAD_MIB, WASI_IMPORTS as IMPORTS, WASI_MODULE};

/// The name of the built-in guest image.
pub const GUEST: &str = "dust-wasm";

const PAGE: u64 = 64 * 1024;

/// Why a module cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WasmError {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Read(String),
    /// No `\0asm` magic.
    #[error("not a WebAssembly module (it does not start with the \\0asm magic)")]
    NotWasm,
    /// A component (the component model, wasip2): checked by [`crate::component`].
    #[error("{0}")]
    Component(#[from] crate::component::ComponentError),
    /// An unknown binary version.
    #[error("unsupported WebAssembly binary version {0:#x} (dust runs version 1 core modules)")]
    Version(u32),
    /// wasmparser refused it.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// Imports the guest does not provide.
    #[error(
        "imports {} that dust does not provide (supported: the WASI preview 1 functions {})",
        .0.join(", "),
        IMPORTS.join(", ")
    )]
    Imports(Vec<String>),
    /// No `_start` function.
    #[error("exports no `_start` function: a handler is a WASI command (a `main`)")]
    NoStart,
    /// Memory larger than the VM can give.
    #[error(
        "its memory ({what} {pages} pages, {mib} MiB) does not fit a {memory_mib} MiB VM \
         ({usable} MiB usable); raise memory_mib"
    )]
    Memory {
        /// `initial` or `maximum`.
        what: &'static str,
        /// Pages of 64 KiB.
        pages: u64,
        /// The same in MiB (rounded up).
        mib: u64,
        /// The VM's memory.
        memory_mib: u32,
        /// What is left for wasm memory.
        usable: u64,
    },
}

/// What the check found out about a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// File size.
    pub bytes: usize,
    /// Imported functions, `module::name`.
    pub imports: Vec<String>,
    /// Initial memory, pages.
    pub initial_pages: u64,
    /// Declared maximum memory, pages.
    pub maximum_pages: Option<u64>,
}

/// The features the guest's wasmi accepts: WebAssembly 2.0 without SIMD, plus tail calls
/// and extended constant expressions.
fn features() -> WasmFeatures {
    WasmFeatures::WASM2.difference(WasmFeatures::SIMD)
        | WasmFeatures::TAIL_CALL
        | WasmFeatures::EXTENDED_CONST
}

/// Reads and checks the module at `path` for a VM of `memory_mib`.
pub fn check_file(path: &Path, memory_mib: u32) -> Result<ModuleInfo, WasmError> {
    let bytes = std::fs::read(path).map_err(|e| WasmError::Read(e.to_string()))?;
    check(&bytes, memory_mib)
}

/// Checks `bytes` as a handler module for a VM of `memory_mib`.
pub fn check(bytes: &[u8], memory_mib: u32) -> Result<ModuleInfo, WasmError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(WasmError::NotWasm);
    }
    if Parser::is_component(bytes) {
        let plan = crate::component::check(bytes)?;
        return Ok(ModuleInfo {
            bytes: bytes.len(),
            imports: plan.imports,
            initial_pages: 0,
            maximum_pages: None,
        });
    }
    if !Parser::is_core_wasm(bytes) {
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[4..8]);
        return Err(WasmError::Version(u32::from_le_bytes(v)));
    }
    Validator::new_with_features(features())
        .validate_all(bytes)
        .map_err(|e| WasmError::Invalid(e.to_string()))?;
    let info = scan_core(bytes)?;
    check_memory(&info, memory_mib)?;
    Ok(info)
}

fn invalid(e: wasmparser::BinaryReaderError) -> WasmError {
    WasmError::Invalid(e.to_string())
}

/// A valid core module's imports (each one dust provides, with its signature), memory and
/// `_start` export; refused if it imports anything else or exports no `_start`.
fn scan_core(bytes: &[u8]) -> Result<ModuleInfo, WasmError> {
    let mut info = ModuleInfo {
        bytes: bytes.len(),
        imports: Vec::new(),
        initial_pages: 0,
        maximum_pages: None,
    };
    let mut unsupported = Vec::new();
    let mut start = false;
    let mut types: Vec<wasmparser::FuncType> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::TypeSection(reader) => {
                for group in reader.into_iter_err_on_gc_types() {
                    types.push(group.map_err(invalid)?);
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader {
                    match provided(&import.map_err(invalid)?, &types) {
                        Ok(name) => info.imports.push(name),
                        Err(why) => unsupported.push(why),
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(invalid)?;
                    info.initial_pages = memory.initial;
                    info.maximum_pages = memory.maximum;
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    start |=
                        export.name == "_start" && export.kind == wasmparser::ExternalKind::Func;
                }
            }
            _ => {}
        }
    }
    if !unsupported.is_empty() {
        return Err(WasmError::Imports(unsupported));
    }
    if !start {
        return Err(WasmError::NoStart);
    }
    Ok(info)
}

/// `module::name` of an import dust provides with the signature it has, or why not.
fn provided(
    import: &wasmparser::Import<'_>,
    types: &[wasmparser::FuncType],
) -> Result<String, String> {
    let name = format!("{}::{}", import.module, import.name);
    let provided = import.module == WASI_MODULE && IMPORTS.contains(&import.name);
    match import.ty {
        TypeRef::Func(t) if provided => {
            match signatures::mismatch(import.name, types.get(t as usize)) {
                None => Ok(name),
                Some(why) => Err(format!("{name} ({why})")),
            }
        }
        TypeRef::Func(_) => Err(name),
        _ => Err(format!("{name} (not a function)")),
    }
}

/// Refused if the module's initial or maximum memory does not fit a VM of `memory_mib`.
fn check_memory(info: &ModuleInfo, memory_mib: u32) -> Result<(), WasmError> {
    let usable = usable_bytes(memory_mib, info.bytes);
    let pages = [
        ("initial", Some(info.initial_pages)),
        ("maximum", info.maximum_pages),
    ];
    for (what, pages) in pages {
        let Some(pages) = pages else { continue };
        if pages.saturating_mul(PAGE) > usable {
            return Err(WasmError::Memory {
                what,
                pages,
                mib: (pages * PAGE).div_ceil(1 << 20),
                memory_mib,
                usable: usable >> 20,
            });
        }
    }
    Ok(())
}

/// Bytes of wasm memory a VM of `memory_mib` can give a module of `module_len` bytes.
pub fn usable_bytes(memory_mib: u32, module_len: usize) -> u64 {
    (u64::from(memory_mib) << 20)
        .saturating_sub(module_len as u64)
        .saturating_sub(OVERHEAD_MIB << 20)
}

/// Where the built-in `dust-wasm` guest is (see [`guest_dirs`]). Found once per process:
/// services ask on every spawn.
pub fn find_guest() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = FOUND.get() {
        return Some(p.clone());
    }
    let found = search_guest(GUEST)?;
    Some(FOUND.get_or_init(|| found).clone())
}

/// The built-in guest for the module at `path`: `dust-component` for a component (see
/// [`crate::component`]), else `dust-wasm`.
pub fn find_guest_for(path: &Path) -> Option<PathBuf> {
    if !crate::component::is_component_file(path) {
        return find_guest();
    }
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = FOUND.get() {
        return Some(p.clone());
    }
    let found = search_guest(crate::component::GUEST)?;
    Some(FOUND.get_or_init(|| found).clone())
}

fn search_guest(name: &str) -> Option<PathBuf> {
    guest_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where built-in guests are looked for, in order: `$DUST_GUEST_DIR`, next to the running
/// executable (or its `../lib/dust/guests`), the guest build tree of this checkout, then
/// `/usr/lib/dust/guests`.
pub fn guest_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DUST_GUEST_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir.join("../lib/dust/guests"));
        dirs.push(dir);
    }
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/target/x86_64-unknown-none/release"),
    );
    dirs.push(PathBuf::from("/usr/lib/dust/guests"));
    dirs
}

/// The command-line words that configure the guest: the fuel, and a warm-up run when the
/// VM is a snapshot template.
pub fn cmdline(fuel: Option<u64>, snapshot: bool) -> String {
    use dust_abi::wasm::cmdline::{FUEL, WARMUP};
    let mut words = format!("{FUEL}={}", fuel.unwrap_or(DEFAULT_FUEL));
    if snapshot {
        words.push_str(&format!(" {WARMUP}=1"));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with one import of type `ty` (encoded) and an exported `_start`.
    fn module_with(import_module: &str, import_name: &str, ty: &[u8]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        // type section: type 0 = `ty`, type 1 = () -> ()
        m.extend_from_slice(&[1, 5 + ty.len() as u8, 2, 0x60]);
        m.extend_from_slice(ty);
        m.extend_from_slice(&[0x60, 0, 0]);
        // import section: one function of type 0
        let mut imp = vec![1, import_module.len() as u8];
        imp.extend_from_slice(import_module.as_bytes());
        imp.push(import_name.len() as u8);
        imp.extend_from_slice(import_name.as_bytes());
        imp.extend_from_slice(&[0, 0]);
        m.push(2);
        m.push(imp.len() as u8);
        m.extend_from_slice(&imp);
        // function section: one function of type 1
        m.extend_from_slice(&[3, 2, 1, 1]);
        // export section: "_start" = function 1
        m.extend_from_slice(&[7, 10, 1, 6]);
        m.extend_from_slice(b"_start");
        m.extend_from_slice(&[0, 1]);
        // code section: one empty body
        m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]);
        m
    }

    /// A module importing `import_name` as `(i32, i32, i32, i32) -> i32` (fd_write's type).
    fn module(import_module: &str, import_name: &str) -> Vec<u8> {
        module_with(
            import_module,
            import_name,
            &[4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f],
        )
    }

    #[test]
    fn refuses_a_wasi_import_with_another_signature() {
        let e = check(&module_with(WASI_MODULE, "fd_write", &[0, 0]), 32).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("fd_write (signature () -> ()"), "{text}");
        assert!(text.contains("(i32, i32, i32, i32) -> (i32)"), "{text}");
        let ok = check(&module_with(WASI_MODULE, "proc_exit", &[1, 0x7f, 0]), 32);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn accepts_a_wasi_module_and_names_unsupported_imports() {
        let ok = check(&module(WASI_MODULE, "fd_write"), 32).unwrap();
        assert_eq!(
            ok.imports,
            vec!["wasi_snapshot_preview1::fd_write".to_string()]
        );
        let e = check(&module(WASI_MODULE, "sock_accept"), 32).unwrap_err();
        assert_eq!(
            e,
            WasmError::Imports(vec!["wasi_snapshot_preview1::sock_accept".into()])
        );
        assert!(e.to_string().contains("sock_accept"), "{e}");
        let e = check(&module("env", "host_fn"), 32).unwrap_err();
        assert!(e.to_string().contains("env::host_fn"), "{e}");
    }

    #[test]
    fn refuses_what_is_not_a_core_module() {
        assert_eq!(check(b"\x7fELF\x02\x01\x01\0", 32), Err(WasmError::NotWasm));
        assert!(
            matches!(
                check(b"\0asm\x0d\0\x01\0", 32),
                Err(WasmError::Component(
                    crate::component::ComponentError::WrongWorld { .. }
                ))
            ),
            "an empty component is checked as a component"
        );
        assert_eq!(check(b"\0asm\x02\0\0\0", 32), Err(WasmError::Version(2)));
        let m = module(WASI_MODULE, "fd_write");
        assert!(matches!(
            check(&m[..m.len() - 3], 32),
            Err(WasmError::Invalid(_))
        ));
    }
}
