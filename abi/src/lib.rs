//! The contract between the dust VMM and its guests (x86_64).
//!
//! One module that both sides read: the host crates (`devices`, `vmm`) and the no_std guest
//! runtime (`guest/dust-guest`) depend on it, so a number here cannot drift between them.
//! See `docs/guest-contract.md` for the prose version.
#![cfg_attr(not(test), no_std)]

/// Formats `n` in decimal into `buf` without `core::fmt` (about 1 ms of emulated instructions
/// on its first use in a fresh VM, and not async-signal-safe on the host): the digits are the
/// returned tail of `buf`.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = n;
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod decimal_tests {
    #[test]
    fn matches_display() {
        for n in [0, 7, 10, 413, 65_535, 1_048_576, u64::MAX] {
            assert_eq!(super::decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }
}

/// Guest-physical memory map.
pub mod layout {
    /// GDT (flat, 64-bit code + data + TSS descriptors).
    pub const GDT: u64 = 0x500;
    /// IDT (empty: limit 0; guests install their own).
    pub const IDT: u64 = 0x520;
    /// Multiprocessor table (written only when vcpus > 1).
    pub const MPTABLE: u64 = 0x9fc00;
    /// Initial stack pointer of the boot CPU (grows down from here).
    pub const BOOT_STACK: u64 = 0x8ff0;
    /// Zero page (`struct boot_params`); RSI points here at entry.
    pub const ZERO_PAGE: u64 = 0x7000;
    /// `hvm_start_info` when dust boots through PVH (`--boot pvh`); EBX points here at
    /// entry. Its module list and memory map follow it, below the zero page.
    pub const PVH_START_INFO: u64 = 0x6000;
    /// PML4 of the identity map (PDPT at +0x1000, four PDs at +0x2000..+0x6000).
    pub const PAGE_TABLES: u64 = 0x9000;
    /// Kernel command line (NUL terminated).
    pub const CMDLINE: u64 = 0x20000;
    /// Largest command line, including the NUL.
    pub const CMDLINE_MAX: usize = 4096;
    /// Lowest address a kernel image may load at (1 MiB, as Linux requires).
    pub const HIMEM_START: u64 = 0x10_0000;
    /// Where unikernel guests are linked.
    pub const UNIKERNEL_BASE: u64 = 0x20_0000;
    /// Where Linux `vmlinux` loads (CONFIG_PHYSICAL_START).
    pub const LINUX_BASE: u64 = 0x100_0000;
    /// The identity map covers the first 4 GiB with 2 MiB pages, so that the MMIO devices
    /// below 4 GiB (boot timer, virtio-mmio) are reachable without the guest mapping them.
    pub const IDENTITY_MAPPED: u64 = 4 << 30;
    /// Start of the MMIO hole below 4 GiB; RAM above it continues at 4 GiB.
    pub const MMIO_HOLE_START: u64 = 0xc000_0000;
    /// End of the MMIO hole.
    pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
}

/// Pseudo devices every dust guest may use.
pub mod devices {
    /// Boot timer (Firecracker compatible): write [`BOOT_READY_MAGIC`] here when ready.
    pub const BOOT_TIMER: u64 = 0xc000_0000;
    /// Size of the boot-timer MMIO window.
    pub const BOOT_TIMER_SIZE: u64 = 0x1000;
    /// The byte that means "guest ready (listening)".
    pub const BOOT_READY_MAGIC: u8 = 123;
    /// Debug exit port (QEMU isa-debug-exit compatible): a u32 write ends the VM.
    pub const DEBUG_EXIT_PORT: u16 = 0xf4;
    /// i8042 command port; writing [`I8042_RESET`] resets (ends) the VM.
    pub const I8042_COMMAND_PORT: u16 = 0x64;
    /// i8042 data port.
    pub const I8042_DATA_PORT: u16 = 0x60;
    /// The i8042 "pulse reset line" command.
    pub const I8042_RESET: u8 = 0xfe;
    /// COM1 (8250 UART) base port.
    pub const COM1: u16 = 0x3f8;
    /// COM1 interrupt line (irqchip mode).
    pub const COM1_IRQ: u32 = 4;
    /// First virtio-mmio device; further ones follow every [`VIRTIO_MMIO_SIZE`] bytes.
    pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
    /// Size of one virtio-mmio window.
    pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
    /// Interrupt line of the first virtio-mmio device (then +1 per device).
    pub const VIRTIO_MMIO_FIRST_IRQ: u32 = 5;
    /// Console-write port (dust only; see [`crate::cpuid`] for how a guest learns it is
    /// there). A u32 written here is the guest-physical address of a [`ConsoleWrite`]; the
    /// VMM copies that many bytes to COM1's output in one exit, where the UART takes one
    /// exit per byte (~10 us each on the emulating KVM).
    pub const CONSOLE_WRITE_PORT: u16 = 0xd057;
    /// Most bytes one console write may carry.
    pub const CONSOLE_WRITE_MAX: u64 = 4096;

    /// What a console write's address points at: 16 bytes, little endian, 8-aligned.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ConsoleWrite {
        /// Guest-physical address of the bytes.
        pub addr: u64,
        /// How many bytes (at most [`CONSOLE_WRITE_MAX`]).
        pub len: u64,
    }
}

/// dust's CPUID leaves, in the hypervisor range but clear of KVM's own leaves at
/// 0x4000_0000 (Linux looks for KVM there, and scans further bases for other signatures).
pub mod cpuid {
    /// Signature leaf: EAX = the last dust leaf, EBX:ECX:EDX = [`SIGNATURE`].
    pub const LEAF_SIGNATURE: u32 = 0x4000_0100;
    /// Feature leaf: EAX = `FEATURE_*` bits.
    pub const LEAF_FEATURES: u32 = 0x4000_0101;
    /// "DustDustDust" as the three registers hold it.
    pub const SIGNATURE: [u8; 12] = *b"DustDustDust";
    /// The console-write port ([`crate::devices::CONSOLE_WRITE_PORT`]) is present.
    pub const FEATURE_CONSOLE_WRITE: u32 = 1 << 0;
}

/// virtio-vsock addressing.
pub mod vsock {
    /// The host's CID.
    pub const HOST_CID: u64 = 2;
    /// Every dust guest's CID.
    pub const GUEST_CID: u64 = 3;

    /// Longest handshake line, newline included (`CONNECT 4294967295\n` is 19 bytes).
    pub const LINE_MAX: usize = 32;

    /// One line of Firecracker's hybrid-vsock handshake on the VM's Unix socket: the host
    /// client writes `CONNECT <guest_port>\n`; once the guest accepted, the device answers
    /// `OK <host_port>\n`, and from then on the stream is the guest socket.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Line {
        buf: [u8; LINE_MAX],
        len: usize,
    }

    impl Line {
        fn new(prefix: &[u8], port: u32) -> Self {
            let mut digits = [0u8; 20];
            let digits = crate::decimal(port.into(), &mut digits);
            let mut buf = [0u8; LINE_MAX];
            let mut len = 0;
            for &b in prefix.iter().chain(digits).chain(b"\n") {
                buf[len] = b;
                len += 1;
            }
            Self { buf, len }
        }

        /// The bytes to write.
        pub fn as_bytes(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }

    /// `CONNECT <port>\n`: what a host client writes to reach guest port `port`.
    pub fn connect_line(port: u32) -> Line {
        Line::new(b"CONNECT ", port)
    }

    /// `OK <port>\n`: the device's answer once the guest accepted; `port` is the host side's.
    pub fn ok_line(port: u32) -> Line {
        Line::new(b"OK ", port)
    }

    /// The guest port of a complete `CONNECT <port>\n` line (exactly that: one space, 1-10
    /// decimal digits that fit a u32, a newline).
    pub fn parse_connect(line: &[u8]) -> Option<u32> {
        parse(b"CONNECT ", line)
    }

    /// The host port of a complete `OK <port>\n` line, in the same strict form.
    pub fn parse_ok(line: &[u8]) -> Option<u32> {
        parse(b"OK ", line)
    }

    fn parse(prefix: &[u8], line: &[u8]) -> Option<u32> {
        let digits = line.strip_prefix(prefix)?.strip_suffix(b"\n")?;
        if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0u32, |acc, d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_are_written() {
            assert_eq!(connect_line(80).as_bytes(), b"CONNECT 80\n");
            assert_eq!(connect_line(u32::MAX).as_bytes(), b"CONNECT 4294967295\n");
            assert_eq!(ok_line(1 << 30).as_bytes(), b"OK 1073741824\n");
            assert_eq!(ok_line(0).as_bytes(), b"OK 0\n");
        }

        #[test]
        fn lines_are_parsed_strictly() {
            assert_eq!(parse_connect(b"CONNECT 80\n"), Some(80));
            assert_eq!(parse_connect(b"CONNECT 0\n"), Some(0));
            assert_eq!(parse_connect(b"CONNECT 4294967295\n"), Some(u32::MAX));
            assert_eq!(parse_ok(b"OK 1073741824\n"), Some(1 << 30));
            for bad in [
                &b"CONNECT 4294967296\n"[..],
                b"CONNECT 99999999999\n",
                b"CONNECT \n",
                b"CONNECT 80",
                b"CONNECT  80\n",
                b"CONNECT -1\n",
                b"CONNECT 8a\n",
                b"connect 80\n",
                b"CONNECT 80 \n",
                b"GET / HTTP/1.1\n",
                b"OK 80\n",
            ] {
                assert_eq!(parse_connect(bad), None, "{:?}", bad);
            }
            assert_eq!(parse_ok(b"OK\n"), None);
            assert_eq!(parse_ok(b"CONNECT 80\n"), None);
        }
    }
}

/// The per-VM info page: written by the VMM into every VM before its vCPU first runs (after a
/// boot's load, after every snapshot restore), so that VMs restored from one snapshot are
/// still different machines. Guests read identity, entropy and time from here, never from
/// state captured in a snapshot; `generation` changes on every restore (the idea of VMGenID).
pub mod vminfo {
    /// Guest-physical address of the page (below the zero page, never used by dust guests).
    pub const ADDR: u64 = 0x5000;
    /// `magic` of a filled page: "dustinfo" little-endian.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"dustinfo");
    /// Longest VM id, bytes.
    pub const ID_MAX: usize = 64;
    /// Fresh random bytes per VM.
    pub const RANDOM_LEN: usize = 32;

    /// The page's layout.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct VmInfo {
        /// [`MAGIC`] once the VMM has filled the page.
        pub magic: u64,
        /// Different for every VM created or restored (nanoseconds of the host's wall clock
        /// at creation, made strictly greater than the snapshot's).
        pub generation: u64,
        /// Host wall clock when the VM was created or restored: nanoseconds since the Unix
        /// epoch.
        pub unix_time_ns: u64,
        /// Bytes of `id` in use.
        pub id_len: u32,
        /// Reserved, zero.
        pub reserved: u32,
        /// The VM id (UTF-8), as in `X-Dust-Vm`.
        pub id: [u8; ID_MAX],
        /// Fresh entropy from the host's getrandom(2).
        pub random: [u8; RANDOM_LEN],
    }
}

/// Process exit statuses of `dust run` (and worker exit reports).
///
/// A guest's debug-exit status below [`GUEST_MAX`] passes through unchanged; the VMM's own
/// outcomes use the reserved values from 240 up, so a script can tell them apart.
pub mod status {
    /// Largest guest status that passes through unchanged.
    pub const GUEST_MAX: u32 = 239;
    /// The guest wrote a status above [`GUEST_MAX`].
    pub const GUEST_OUT_OF_RANGE: u8 = 240;
    /// The guest crashed: triple fault, KVM internal error, failed entry.
    pub const GUEST_CRASH: u8 = 241;
    /// The VM ran past its timeout and was killed.
    pub const TIMEOUT: u8 = 242;
    /// The VMM could not build or run the VM (bad image, bad config, KVM error).
    pub const VMM_ERROR: u8 = 243;
    /// The command line was not understood.
    pub const USAGE: u8 = 244;
    /// The VM was killed on request (signal, API).
    pub const KILLED: u8 = 245;
}

/// HTTP between the summoner and the guest runtime's server (`dust_guest::http`): the
/// request limits the guest enforces, which the summoner's front door enforces first, so
/// that a request the guest would refuse never costs a VM.
pub mod http {
    /// Largest request head (request line, header fields and the blank line), bytes.
    pub const MAX_HEAD: usize = 16 * 1024;
    /// Most header fields in a request.
    pub const MAX_HEADERS: usize = 32;
    /// Largest request body, bytes.
    pub const MAX_BODY: usize = 1024 * 1024;
}

/// The WebAssembly guest/host contract: what the daemon's module check and the wasm guests
/// must agree on.
pub mod wasm {
    /// The module the WASI imports come from.
    pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

    /// The WASI preview 1 functions the wasm guests implement; the host refuses a module
    /// that imports anything else.
    pub const WASI_IMPORTS: &[&str] = &[
        "args_get",
        "args_sizes_get",
        "environ_get",
        "environ_sizes_get",
        "fd_read",
        "fd_write",
        "fd_close",
        "fd_fdstat_get",
        "fd_seek",
        "fd_prestat_get",
        "fd_prestat_dir_name",
        "clock_time_get",
        "random_get",
        "proc_exit",
        "sched_yield",
        "poll_oneoff",
    ];

    /// Guest memory a wasm guest keeps for itself (image, compiled code, request) beyond the
    /// module and its linear memory, MiB.
    pub const OVERHEAD_MIB: u64 = 8;

    /// Fuel (wasm instructions, roughly) a request may burn by default in the interpreter.
    /// On the emulating KVM of the development machines one instruction costs ~24 us, so a
    /// loop burns this in ~24 s, past the default request deadline; lazily compiling a
    /// function costs fuel too. The Rust example uses ~0.3 M on a cold instance.
    pub const DEFAULT_FUEL: u64 = 1_000_000;

    /// Command-line keys of the wasm guests (`key=value` words before `vm=<id>`).
    pub mod cmdline {
        /// Fuel per request (`fuel=N`).
        pub const FUEL: &str = "fuel";
        /// `warmup=1`: run the handler once for `GET /` before ready (snapshot templates).
        pub const WARMUP: &str = "warmup";
        /// `verbose=1`: log what each request used.
        pub const VERBOSE: &str = "verbose";
        /// `env.NAME=value`: an extra environment variable for the handler.
        pub const ENV_PREFIX: &str = "env.";
    }
}
