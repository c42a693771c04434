//! `dust run IMAGE`: one VM in the foreground.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dust_abi::status;
use vmm::{BootProtocol, VmConfig, VsockConfig};

/// Flags of `dust run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Guest image: x86_64 ELF (vmlinux or a dust unikernel) or bzImage. Not with --restore.
    #[arg(required_unless_present_any = ["restore", "wasm"])]
    pub image: Option<PathBuf>,
    /// Boot to the guest's ready(), save the VM into this directory (files `snapshot` and
    /// `memory`, see docs/snapshots.md) and exit 0.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["restore", "wasm"])]
    pub snapshot_out: Option<PathBuf>,
    /// Restore the VM saved in DIR (by --snapshot-out) instead of booting an image; it runs to
    /// its end like any `dust run`. Takes --timeout, --timings, --vsock.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["initrd", "cmdline", "memory_mib", "vcpus", "irqchip", "wasm"])]
    pub restore: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, conflicts_with = "wasm")]
    pub initrd: Option<PathBuf>,
    /// Guest command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long = "mem", default_value_t = vmm::config::DEFAULT_MEMORY_MIB)]
    pub memory_mib: u32,
    /// Number of vCPUs, 1 to 32 (more than one needs --irqchip).
    #[arg(long, default_value_t = 1, value_parser = super::vcpus_range())]
    pub vcpus: u8,
    /// Create the in-kernel irqchip (needed by Linux; unikernels poll without it).
    #[arg(long)]
    pub irqchip: bool,
    /// Kill the VM after this long, e.g. 2s or 500ms (exit status 242).
    #[arg(long, value_parser = summoner::config::service_duration::parse)]
    pub timeout: Option<Duration>,
    /// Add a virtio-vsock device bound to this host Unix socket (Firecracker's protocol).
    #[arg(long)]
    pub vsock: Option<PathBuf>,
    /// Print each phase's duration in microseconds to stderr when the VM ends.
    #[arg(long)]
    pub timings: bool,
    /// Entry: `linux` (the 64-bit entry, zero page in RSI) or `pvh` (the image's PVH note:
    /// 32-bit protected mode, EBX = hvm_start_info, as QEMU microvm and Firecracker boot it).
    #[arg(long, value_enum, default_value_t = Boot::Linux)]
    pub boot: Boot,
    /// Run one request through a WebAssembly handler (see docs/wasm.md).
    #[command(flatten)]
    pub wasm: super::wasm::WasmArgs,
}

/// `--boot`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// The 64-bit entry (Linux boot protocol).
    Linux,
    /// The PVH note's 32-bit entry.
    Pvh,
}

impl RunArgs {
    /// `dust run IMAGE [--cmdline VALUE] [--timings]`, the words in any order, recognised
    /// without clap: the form scripts and `dust bench boot` spawn. Building clap's description
    /// of every flag of `dust run` and parsing against it took ~0.1 ms of a ~1.6 ms spawn ->
    /// greeting (docs/benchmarks.md, "`dust run` linked with LTO, ..., its plain form read
    /// without clap").
    ///
    /// `args` are the words after `run`. Anything else - another flag, a word twice, `--`, an
    /// IMAGE or VALUE that clap would read as a flag or refuse - is None, and clap parses it:
    /// help, usage and every error stay clap's. A test checks that clap reads every accepted
    /// form the same.
    pub fn plain(args: &[OsString]) -> Option<RunArgs> {
        let (mut image, mut cmdline, mut timings) = (None, None, false);
        let mut words = args.iter();
        while let Some(w) = words.next() {
            if w == "--cmdline" && cmdline.is_none() {
                let v = words.next()?.to_str()?;
                if v.starts_with('-') {
                    return None;
                }
                cmdline = Some(v.to_owned());
            } else if w == "--timings" && !timings {
                timings = true;
            } else if image.is_none() && !w.is_empty() && !w.as_encoded_bytes().starts_with(b"-") {
                image = Some(PathBuf::from(w));
            } else {
                return None;
            }
        }
        Some(RunArgs {
            image: Some(image?),
            snapshot_out: None,
            restore: None,
            initrd: None,
            cmdline: cmdline.unwrap_or_default(),
            memory_mib: vmm::config::DEFAULT_MEMORY_MIB,
            vcpus: 1,
            irqchip: false,
            timeout: None,
            vsock: None,
            timings,
            boot: Boot::Linux,
            wasm: super::wasm::WasmArgs::default(),
        })
    }

    fn config(&self) -> VmConfig {
        VmConfig {
            id: format!("run-{}", std::process::id()),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            irqchip: self.irqchip,
            timeout: self.timeout,
            vsock: self.vsock.clone().map(|uds| VsockConfig { uds }),
            boot: match self.boot {
                Boot::Linux => BootProtocol::Linux,
                Boot::Pvh => BootProtocol::Pvh,
            },
            ..VmConfig::new(self.image.clone().unwrap_or_default())
        }
    }
}

/// Block SIGINT/SIGTERM in this thread and every thread it starts after: while vCPU 0 runs
/// on this thread they are unblocked here alone ([`vmm::stop_on`]); one that comes sooner
/// waits, pending, until then.
fn block_stop_signals() {
    // SAFETY: a zeroed sigset_t is a valid argument for sigemptyset, which initialises it;
    // the calls only touch that local set and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// `--snapshot-out`: boot to ready, save into `dir`, report.
fn take_snapshot(config: &vmm::VmConfig, dir: &std::path::Path, timings: bool) -> ExitCode {
    match vmm::snapshot::take(config, dir) {
        Ok(info) => {
            if timings {
                eprintln!(
                    "snapshot: guest {} us to ready, {} us in all, {} bytes of memory",
                    info.guest_us, info.total_us, info.memory_bytes
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dust: {e}");
            ExitCode::from(status::VMM_ERROR)
        }
    }
}

/// Boot, wait, report. SIGINT/SIGTERM kill the VM (status 245) instead of the process, so
/// the VM is torn down and the serial output flushed. vCPU 0 runs on this thread
/// ([`vmm::Vm::run_here`]).
pub fn run(args: RunArgs) -> ExitCode {
    if let Some(module) = &args.wasm.flags.wasm {
        let image = args.image.as_deref();
        return super::wasm::run(image, module, &args.wasm, args.memory_mib, args.timeout);
    }
    block_stop_signals();
    let config = args.config();
    if let Some(dir) = &args.snapshot_out {
        return take_snapshot(&config, dir, args.timings);
    }
    // Taken on this thread while vCPU 0 runs here: no thread of their own.
    if let Err(e) = vmm::stop_on(&[libc::SIGINT, libc::SIGTERM]) {
        eprintln!("dust: stop signals: {e}");
        return ExitCode::from(status::VMM_ERROR);
    }
    let built = match &args.restore {
        Some(dir) => vmm::restore(&config.restore_from(dir)).map_err(|e| e.to_string()),
        None => vmm::build_for_caller(&config).map_err(|e| e.to_string()),
    };
    let report = built.and_then(|vm| vm.run_here().map_err(|e| e.to_string()));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dust: {e}");
            return ExitCode::from(status::VMM_ERROR);
        }
    };
    if args.timings {
        eprint!("{}", report.timings.render());
    }
    let code = report.exit.exit_code();
    if !matches!(report.exit, vmm::VmExit::Status(_) | vmm::VmExit::Reset) || code >= 240 {
        eprintln!("dust: {}", report.exit);
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    #[command(name = "run")]
    struct Clap {
        #[command(flatten)]
        args: RunArgs,
    }

    fn words(w: &[&str]) -> Vec<OsString> {
        w.iter().map(OsString::from).collect()
    }

    /// Where the plain form is recognised, clap reads the same flags.
    fn same_as_clap(args: &[OsString]) -> bool {
        let Some(plain) = RunArgs::plain(args) else {
            return false;
        };
        let argv = std::iter::once(OsString::from("run")).chain(args.iter().cloned());
        let clap = Clap::try_parse_from(argv).expect("clap accepts what the plain form does");
        assert_eq!(format!("{plain:?}"), format!("{:?}", clap.args), "{args:?}");
        true
    }

    #[test]
    fn the_plain_form_reads_as_clap_reads_it() {
        for w in [
            &["hello"][..],
            &["hello", "--cmdline", "bench"],
            &["--cmdline", "a b=c", "./x/hello"],
            &["hello", "--timings"],
            &["--timings", "--cmdline", "", "hello"],
            &["--cmdline", "x", "--timings", "/abs/hello"],
        ] {
            assert!(same_as_clap(&words(w)), "{w:?} is the plain form");
        }
        // A path that is not UTF-8 is a path all the same.
        assert!(same_as_clap(&[OsString::from_vec(b"img\xff".to_vec())]));
    }

    #[test]
    fn anything_else_is_left_to_clap() {
        for w in [
            &[][..],
            &["--timings"],
            &["a", "b"],
            &["-"],
            &[""],
            &["--", "hello"],
            &["hello", "--cmdline"],
            &["hello", "--cmdline", "-x"],
            &["hello", "--cmdline=a"],
            &["hello", "--cmdline", "a", "--cmdline", "b"],
            &["hello", "--timings", "--timings"],
            &["hello", "--mem", "64"],
            &["hello", "--help"],
            &["-h"],
            &["--restore", "dir"],
            &["hello", "--wasm", "m.wasm"],
        ] {
            assert!(RunArgs::plain(&words(w)).is_none(), "{w:?}");
        }
        let bad_utf8 = OsString::from_vec(b"a\xff".to_vec());
        let w = [
            OsString::from("hello"),
            OsString::from("--cmdline"),
            bad_utf8,
        ];
        assert!(RunArgs::plain(&w).is_none());
    }
}
