//! The ahead-of-time engine's host side (docs/wasm.md, "Ahead-of-time engine"): a module
//! becomes a guest image of its own. wasm2c (Debian `wabt`) translates it to C, clang
//! compiles that with the freestanding runtime (`guest/dust-aot/c/runtime.c`) for an
//! SSE-free, soft-float target, and ld.lld links the object with the `dust-aot` archive
//! (`libdust_aot.a`, built by scripts/build-guests) and the guest linker script.
//!
//! The tools parse untrusted input, so each runs confined ([`jail`]) in a private
//! directory that is removed afterwards; the daemon takes nothing from it but the image,
//! checked. Images are cached by content ([`cache`]): a second service, or a restart,
//! compiles nothing.

mod cache;
pub mod jail;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use jail::CompileLimits;

use cache::{Entry, Lookup};

/// The C runtime compiled with every module.
pub const RUNTIME_C: &str = include_str!("../../../../guest/dust-aot/c/runtime.c");
/// 4-byte linear-memory stores as typed stores (included before the module's code).
pub const ACCESS_H: &str = include_str!("../../../../guest/dust-aot/c/access.h");
/// The guest linker script (its load address filled in from dust-abi).
const LINK_LD_IN: &str = include_str!("../../../../guest/dust-guest/link.ld.in");
/// The Rust half of every image (scripts/build-guests).
pub const ARCHIVE: &str = "libdust_aot.a";
/// clang flags: SSE-free and freestanding (soft-float through compiler_builtins), with
/// explicit bounds checks and the stack-depth counter instead of signal handlers.
pub const CFLAGS: &[&str] = &[
    "--target=x86_64-linux-gnu",
    "-O2",
    "-mgeneral-regs-only",
    "-mno-red-zone",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-stack-protector",
    "-fno-pic",
    "-fno-pie",
    "-fno-asynchronous-unwind-tables",
    "-fno-exceptions",
    "-DWASM_RT_MEMCHECK_SIGNAL_HANDLER=0",
    "-DWASM_RT_USE_STACK_DEPTH_COUNT=1",
    "-DWASM_RT_MAX_CALL_STACK_DEPTH=1000",
    "-DNDEBUG",
    "-w",
];
/// ld.lld flags (as the guests' own build).
pub const LDFLAGS: &[&str] = &["-static", "--gc-sections", "--build-id=none"];

/// A tool of the pipeline: the names tried, in order, and the Debian packages that have it.
struct Tool {
    /// What the error for a missing tool calls it.
    name: &'static str,
    names: &'static [&'static str],
    /// How the error for a missing tool names the packages.
    packages: &'static str,
}

const WASM2C: Tool = Tool {
    name: "wasm2c",
    names: &["wasm2c"],
    packages: "`wabt`",
};
/// The newest clang first: clang 19 compiles a request's code into ~2 % fewer guest
/// instructions than clang 14 (Debian 12's `clang`), in less time (docs/benchmarks.md).
/// The unversioned name comes next, as it is the distribution's default. Any of them
/// works; the cache key covers which one compiled an image ([`tool_identity`]).
const CLANG: Tool = Tool {
    name: "clang",
    names: &["clang-19", "clang", "clang-16", "clang-15", "clang-14"],
    packages: "`clang-19`, or `clang`",
};
/// In the same order as [`CLANG`], so that a host with both gets a matching pair.
const LLD: Tool = Tool {
    name: "ld.lld",
    names: &["ld.lld-19", "ld.lld", "ld.lld-16", "ld.lld-15", "ld.lld-14"],
    packages: "`lld-19`, or `lld`",
};

/// What [`build_image`] needs.
#[derive(Debug, Clone)]
pub struct AotOptions {
    /// The cache of compiled images (made if missing); compiles happen in private
    /// directories below it.
    pub cache_dir: PathBuf,
    /// The runtime archive; `None`: found like the built-in guests ([`find_runtime`]).
    pub archive: Option<PathBuf>,
    /// Limits of the compiler tools.
    pub limits: CompileLimits,
}

impl AotOptions {
    /// Defaults with `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            archive: None,
            limits: CompileLimits::default(),
        }
    }
}

/// A module's guest image.
#[derive(Debug, Clone)]
pub struct CompiledImage {
    /// The image (in the cache).
    pub path: PathBuf,
    /// Its cache key.
    pub key: String,
    /// Whether it came from the cache.
    pub cached: bool,
    /// How long each step took (translate, compile, link), when it was built.
    pub phases: Phases,
    /// Bytes of C that wasm2c wrote.
    pub c_bytes: u64,
}

/// Why a module has no image.
#[derive(Debug, thiserror::Error)]
pub enum AotError {
    /// A tool is not installed.
    #[error(
        "the ahead-of-time engine needs `{tool}` (Debian package {packages}), which is not \
         installed: install it (scripts/install-deps), or run this module with \
         engine = \"interpreter\" (`--engine interpreter`)"
    )]
    MissingTool {
        /// The tool.
        tool: &'static str,
        /// Its Debian packages.
        packages: &'static str,
    },
    /// No runtime archive.
    #[error(
        "the ahead-of-time runtime ({ARCHIVE}) is missing: run scripts/build-guests (or set \
         DUST_GUEST_DIR), or use engine = \"interpreter\""
    )]
    NoRuntime,
    /// A file operation.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A tool failed on this module.
    #[error(
        "{tool} failed on the module ({status}): {stderr}; engine = \"interpreter\" runs it \
         without compiling"
    )]
    ToolFailed {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// The compile ran out of time.
    #[error(
        "compiling the module took longer than {secs} s ({tool} was killed); engine = \
         \"interpreter\" runs it without compiling"
    )]
    TimedOut {
        /// The tool that was running.
        tool: &'static str,
        /// The limit.
        secs: u64,
    },
    /// The linker's output is not a guest image.
    #[error("the compiled image is not a valid guest image: {0}")]
    BadImage(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AotError {
    let what = what.into();
    move |source| AotError::Io { what, source }
}

/// The first of `tool`'s names found in PATH (or /usr/bin).
fn find_tool(tool: &Tool) -> Result<PathBuf, AotError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .collect();
    tool.names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
        .ok_or(AotError::MissingTool {
            tool: tool.name,
            packages: tool.packages,
        })
}

/// Whether all three tools are installed (the first missing one as the error).
pub fn check_tools() -> Result<(), AotError> {
    [WASM2C, CLANG, LLD]
        .iter()
        .try_for_each(|t| find_tool(t).map(|_| ()))
}

/// Where the runtime archive is: beside the built-in `dust-wasm` guest's directories.
pub fn find_runtime() -> Option<PathBuf> {
    super::guest_dirs()
        .into_iter()
        .map(|d| d.join(ARCHIVE))
        .find(|p| p.is_file())
}

/// Where compiled images are cached when no daemon names the place (`dust run --wasm`):
/// `$DUST_AOT_CACHE`, else `cache/aot` in the default state directory, where `dust serve`
/// keeps them too ([`crate::state::default_state_dir`]).
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("DUST_AOT_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => crate::state::default_state_dir().join("cache/aot"),
    }
}

/// The linker script of every image.
fn link_script() -> String {
    LINK_LD_IN.replace(
        "@UNIKERNEL_BASE@",
        &format!("{:#x}", dust_abi::layout::UNIKERNEL_BASE),
    )
}

/// The translation unit clang compiles: the module's C, then the runtime.
///
/// wasm2c's loads end in an empty `asm` that takes the loaded value (`wasm_asm`, defined
/// only `#ifdef __GNUC__`): its signal-handler mode needs every load to happen, since the
/// load is what traps. Our bounds checks are explicit, so the check traps whether or not
/// the value is used, and the `asm` only costs: clang must keep every load and cannot
/// reuse the memory's base and size across it (~8 % more guest instructions per request
/// for hello-rust, docs/benchmarks.md). So m.c is compiled with `__GNUC__` undefined,
/// after the headers it includes (which see the compiler as it is); its `wasm_asm` is
/// then empty. Nothing else in wasm2c 1.0.32's output looks at `__GNUC__`.
///
/// The call-depth counter (wasm2c's `FUNC_PROLOGUE`, `if (++wasm_rt_call_stack_depth >
/// WASM_RT_MAX_CALL_STACK_DEPTH) TRAP(EXHAUSTION)`) counts the same frames, but m.c sees
/// the limit as `0x7fffffff` and the counter starts that far below it (`DUST_AOT_DEPTH_BASE`
/// in runtime.c): the test is then the sign of the incremented counter, which clang emits
/// as `addl $1, depth; js` (2 instructions) instead of load, add, store, compare and
/// branch (5). The limit in frames stays `WASM_RT_MAX_CALL_STACK_DEPTH` (wasmi's).
///
/// `access.h`, between the header and the code, makes each 4-byte store into linear
/// memory a typed store that cannot alias the instance, so it no longer makes clang reload
/// the memory's base and size and the globals (~4 % fewer guest instructions per request
/// for hello-rust, docs/benchmarks.md); only one width, so that all accesses to linear
/// memory still alias one another.
fn unit_c(exports_memory: bool) -> String {
    let memory = if exports_memory {
        "#define DUST_AOT_HAS_MEMORY 1\n"
    } else {
        ""
    };
    let headers = [
        "<assert.h>",
        "<math.h>",
        "<stddef.h>",
        "<string.h>",
        "<alloca.h>",
    ]
    .map(|h| format!("#include {h}\n"))
    .concat();
    format!(
        "{memory}{headers}#include \"m.h\"\n#include \"access.h\"\n\
         #pragma push_macro(\"__GNUC__\")\n#undef __GNUC__\n\
         #pragma push_macro(\"WASM_RT_MAX_CALL_STACK_DEPTH\")\n\
         #undef WASM_RT_MAX_CALL_STACK_DEPTH\n#define WASM_RT_MAX_CALL_STACK_DEPTH 0x7fffffffu\n\
         #include \"m.c\"\n\
         #pragma pop_macro(\"WASM_RT_MAX_CALL_STACK_DEPTH\")\n\
         #pragma pop_macro(\"__GNUC__\")\n#include \"runtime.c\"\n"
    )
}

/// Whether the module exports a memory named `memory` (what the WASI imports use).
fn exports_memory(module: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .filter_map(Result::ok)
        .any(|p| match p {
            wasmparser::Payload::ExportSection(r) => r
                .into_iter()
                .filter_map(Result::ok)
                .any(|e| e.name == "memory" && e.kind == wasmparser::ExternalKind::Memory),
            _ => false,
        })
}

/// Checks that `image` is a static x86_64 ELF executable entered inside its load range.
pub fn check_image(image: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| {
        image
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(image.get(o..o + 8)?);
        Some(u64::from_le_bytes(w))
    };
    if image.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    if u16_at(16) != Some(2) || u16_at(18) != Some(62) {
        return Err("not an x86_64 executable".into());
    }
    let base = dust_abi::layout::UNIKERNEL_BASE;
    match u64_at(24) {
        Some(entry) if (base..base + image.len() as u64).contains(&entry) => Ok(()),
        _ => Err("entry point outside the image".into()),
    }
}

/// Which build of a tool `path` is, without running it: the file it resolves to (e.g.
/// `/usr/lib/llvm-19/bin/clang`), its size and modification time. Another version, or an
/// upgrade of the same package, gives another identity, so images are compiled again.
fn tool_identity(path: &Path) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let (len, mtime) = std::fs::metadata(&real).map_or((0, 0), |m| {
        use std::os::unix::fs::MetadataExt;
        (
            m.len(),
            m.mtime_nsec() as i128 + i128::from(m.mtime()) * 1_000_000_000,
        )
    });
    format!("{} {len} {mtime}", real.display())
}

/// The key of `module`'s image with `archive`: module, dust version, the tools, flags,
/// runtime.
fn image_key(module: &[u8], tools: &[PathBuf; 3], unit: &str, archive: &[u8]) -> String {
    let tools = tools.each_ref().map(|t| tool_identity(t)).join("\n");
    cache::key(&[
        module,
        tools.as_bytes(),
        env!("CARGO_PKG_VERSION").as_bytes(),
        CFLAGS.join(" ").as_bytes(),
        LDFLAGS.join(" ").as_bytes(),
        unit.as_bytes(),
        RUNTIME_C.as_bytes(),
        ACCESS_H.as_bytes(),
        link_script().as_bytes(),
        archive,
    ])
}

/// The guest image of `module` (already checked with [`super::check`]): from the cache
/// if a sound entry is there, else compiled (and cached).
pub fn build_image(module: &[u8], opts: &AotOptions) -> Result<CompiledImage, AotError> {
    let tools = [find_tool(&WASM2C)?, find_tool(&CLANG)?, find_tool(&LLD)?];
    let archive_path = match &opts.archive {
        Some(a) => a.clone(),
        None => find_runtime().ok_or(AotError::NoRuntime)?,
    };
    let archive =
        std::fs::read(&archive_path).map_err(io(format!("reading {}", archive_path.display())))?;
    let unit = unit_c(exports_memory(module));
    let key = image_key(module, &tools, &unit, &archive);
    let dir = &opts.cache_dir;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let entry = Entry::new(dir, &key);
    let module_sha = cache::sha256_hex(module);
    match entry.lookup(check_image) {
        Lookup::Hit => {
            tracing::info!(module = %module_sha, image = %entry.image.display(), "aot: reusing the cached image");
            return Ok(CompiledImage {
                path: entry.image,
                key,
                cached: true,
                phases: Vec::new(),
                c_bytes: 0,
            });
        }
        Lookup::Corrupt(why) => {
            tracing::warn!(module = %module_sha, "aot: cached image {} removed ({why}); compiling again", entry.image.display());
        }
        Lookup::Miss => {}
    }
    let work = PrivateDir::new(dir, opts.limits.uid)?;
    let script = link_script();
    let inputs: [(&str, &[u8]); 6] = [
        ("module.wasm", module),
        ("unit.c", unit.as_bytes()),
        ("access.h", ACCESS_H.as_bytes()),
        ("runtime.c", RUNTIME_C.as_bytes()),
        ("link.ld", script.as_bytes()),
        (ARCHIVE, &archive),
    ];
    for (name, bytes) in inputs {
        std::fs::write(work.0.join(name), bytes).map_err(io(format!("writing {name}")))?;
    }
    let (phases, c_bytes) = compile(&tools, &work.0, &opts.limits)?;
    let image = std::fs::read(work.0.join("image")).map_err(io("reading the linked image"))?;
    check_image(&image).map_err(AotError::BadImage)?;
    entry
        .store(dir, &image)
        .map_err(io(format!("storing {}", entry.image.display())))?;
    tracing::info!(module = %module_sha, image = %entry.image.display(), c_bytes, "aot: compiled ({})", describe(&phases));
    Ok(CompiledImage {
        path: entry.image,
        key,
        cached: false,
        phases,
        c_bytes,
    })
}

/// `translate 0.02 s, compile 2.1 s, link 0.05 s`.
pub fn describe(phases: &[(&str, Duration)]) -> String {
    phases
        .iter()
        .map(|(p, d)| format!("{p} {:.2} s", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long each step of a compile took.
pub type Phases = Vec<(&'static str, Duration)>;

/// Runs the three tools in `dir`; returns the phases and the size of the C.
fn compile(
    tools: &[PathBuf; 3],
    dir: &Path,
    limits: &CompileLimits,
) -> Result<(Phases, u64), AotError> {
    let deadline = Instant::now() + limits.wall;
    let mut cflags: Vec<&str> = CFLAGS.to_vec();
    cflags.extend(["-c", "unit.c", "-o", "unit.o"]);
    let mut ldflags: Vec<&str> = LDFLAGS.to_vec();
    ldflags.extend(["-T", "link.ld", "-o", "image", "unit.o", ARCHIVE]);
    let steps: [(&'static str, &'static str, &PathBuf, Vec<&str>); 3] = [
        (
            "translate",
            "wasm2c",
            &tools[0],
            vec!["-n", "m", "module.wasm", "-o", "m.c"],
        ),
        ("compile", "clang", &tools[1], cflags),
        ("link", "ld.lld", &tools[2], ldflags),
    ];
    let mut phases = Vec::new();
    for (phase, tool, path, args) in steps {
        let start = Instant::now();
        jail::run(path, &args, dir, limits, deadline).map_err(|e| match e {
            jail::RunError::Spawn(source) => AotError::Io {
                what: format!("starting {}", path.display()),
                source,
            },
            jail::RunError::TimedOut => AotError::TimedOut {
                tool,
                secs: limits.wall.as_secs(),
            },
            jail::RunError::Failed(status, stderr) => AotError::ToolFailed {
                tool,
                status,
                stderr,
            },
        })?;
        phases.push((phase, start.elapsed()));
    }
    let c_bytes = std::fs::metadata(dir.join("m.c")).map_or(0, |m| m.len());
    Ok((phases, c_bytes))
}

/// A directory only the compile uses (owned by the tools' uid when dust is root),
/// removed with everything in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(parent: &Path, uid: u32) -> Result<Self, AotError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(".build-{}-{n}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        let dir = Self(path);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&dir.0, Some(uid), Some(uid))
                .map_err(io(format!("handing {} to uid {uid}", dir.0.display())))?;
        }
        Ok(dir)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_with_its_package_and_the_alternative() {
        let missing = Tool {
            name: "no-such-wasm2c",
            names: &["no-such-wasm2c"],
            packages: "`wabt`",
        };
        let e = find_tool(&missing).unwrap_err().to_string();
        assert!(
            e.contains("`no-such-wasm2c` (Debian package `wabt`)"),
            "{e}"
        );
        assert!(e.contains("engine = \"interpreter\""), "{e}");
    }

    #[test]
    fn the_image_key_covers_which_tools_compile() {
        let dir = tempfile::tempdir().unwrap();
        let tool = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let (a, b) = (tool("clang-a", b"a"), tool("clang-b", b"bb"));
        let key =
            |clang: &PathBuf| image_key(b"m", &[a.clone(), clang.clone(), a.clone()], "u", b"r");
        assert_eq!(key(&a), key(&a));
        assert_ne!(key(&a), key(&b));
        // The same path upgraded in place (another size) is another tool.
        std::fs::write(&b, b"bbb").unwrap();
        let upgraded = key(&b);
        assert_ne!(upgraded, key(&a));
        std::fs::write(&b, b"bb").unwrap();
        assert_ne!(upgraded, key(&b));
    }

    #[test]
    fn only_a_static_x86_64_executable_inside_itself_passes_as_an_image() {
        let base = dust_abi::layout::UNIKERNEL_BASE;
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[16] = 2;
        elf[18] = 62;
        elf[24..32].copy_from_slice(&(base + 8).to_le_bytes());
        assert_eq!(check_image(&elf), Ok(()));
        let mut far = elf.clone();
        far[24..32].copy_from_slice(&(base + 4096).to_le_bytes());
        assert!(check_image(&far).is_err());
        let mut arm = elf.clone();
        arm[18] = 183;
        assert!(check_image(&arm).is_err());
        assert!(check_image(b"#!/bin/sh").is_err());
    }
}
