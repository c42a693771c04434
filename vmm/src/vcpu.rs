//! The vCPU run loop: enter the guest, dispatch PIO/MMIO exits to the buses, and turn the
//! exits that end a VM into a [`VmExit`].
//!
//! A vCPU thread can be stuck inside KVM_RUN for as long as the guest likes (a loop without
//! exits; on the emulating KVM of our dev machines even a `vmcall`), so stopping it never
//! waits for the next exit: [`kick`] sends signal 35 to the thread, which makes KVM_RUN
//! return EINTR, and the loop then sees the stop flag.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use devices::{Bus, BusAction};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;
use crate::run_state::RunState;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum VmExit {
    /// The guest wrote this status to the debug-exit port.
    Status(u32),
    /// The guest reset the machine (i8042 reset line, or a KVM system event).
    Reset,
    /// The guest crashed (triple fault, emulation failure, failed entry).
    Crash(String),
    /// A device met guest input it cannot tolerate.
    DeviceError(String),
    /// The VM ran past its timeout.
    Timeout,
    /// The VM was killed on request.
    Killed,
    /// The VMM failed while running the VM.
    VmmError(String),
    /// A template VM reached ready and its state was saved (`--snapshot-out`).
    Snapshotted,
}

impl VmExit {
    /// The process exit status `dust run` reports (see `dust_abi::status`).
    pub fn exit_code(&self) -> u8 {
        use dust_abi::status::*;
        match self {
            VmExit::Status(s) if *s <= GUEST_MAX => *s as u8,
            VmExit::Status(_) => GUEST_OUT_OF_RANGE,
            VmExit::Reset => 0,
            VmExit::Crash(_) | VmExit::DeviceError(_) => GUEST_CRASH,
            VmExit::Timeout => TIMEOUT,
            VmExit::Killed => KILLED,
            VmExit::VmmError(_) => VMM_ERROR,
            VmExit::Snapshotted => 0,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Status(s) => write!(f, "guest exited with status {s}"),
            VmExit::Reset => write!(f, "guest reset the machine"),
            VmExit::Crash(why) => write!(f, "guest crashed: {why}"),
            VmExit::DeviceError(why) => write!(f, "device error: {why}"),
            VmExit::Timeout => write!(f, "timed out: VM killed"),
            VmExit::Killed => write!(f, "VM killed"),
            VmExit::VmmError(why) => write!(f, "VMM error: {why}"),
            VmExit::Snapshotted => write!(f, "snapshot taken at ready"),
        }
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that interrupts KVM_RUN: 35, the lowest real-time signal that neither glibc
/// (which keeps 32 and 33) nor musl (32 to 34) keeps for itself, so the same number, named in
/// the jail's seccomp allowlists, whichever libc dust is built with.
pub fn kick_signal() -> libc::c_int {
    KICK_SIGNAL
}

const KICK_SIGNAL: libc::c_int = 35;

/// Install the (empty) handler for the kick signal, once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
    });
    result
}

/// A way to interrupt one vCPU thread while it lives.
#[derive(Clone)]
pub struct Kick {
    /// The thread's id while it may be inside KVM_RUN: set by the thread when it takes its
    /// vCPU, cleared before it exits, so that a kick never targets a thread that is gone.
    /// Before it is set, the thread has yet to check the stop flag, so it needs no kick.
    pub tid: Arc<Mutex<Option<libc::pid_t>>>,
}

impl Kick {
    /// Interrupt KVM_RUN on the thread, if it still runs.
    pub fn kick(&self) {
        let tid = self.tid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tid) = *tid {
            // tgkill itself rather than pthread_kill, which is tkill in musl: the worker's
            // seccomp allowlists name tgkill with the kick signal only, whatever the libc.
            // SAFETY: the thread is alive (it clears `tid` under this lock before it exits);
            // the signal's handler is installed and does nothing.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal()) };
        }
    }
}

/// Everything a vCPU thread owns.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Index (0 = boot CPU).
    pub id: u8,
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Guest memory, to describe crashes.
    pub mem: GuestMem,
    /// Whether the in-kernel irqchip handles HLT.
    pub irqchip: bool,
}

impl Vcpu {
    /// Run until the VM stops; returns how it ended (as seen by this vCPU).
    pub fn run(mut self, state: &RunState) -> VmExit {
        self.run_loop(state)
    }

    /// [`Vcpu::run`] on the thread that takes the stop signals ([`crate::stop`]): they are
    /// unblocked here while the vCPU runs, and blocked again before it is dropped.
    pub fn run_taking_stop_signals(mut self, state: &RunState) -> VmExit {
        let armed = crate::stop::Armed::new(self.fd.get_kvm_run());
        let exit = self.run_loop(state);
        drop(armed);
        exit
    }

    fn run_loop(&mut self, state: &RunState) -> VmExit {
        loop {
            if state.stopping() || crate::stop::requested() {
                return VmExit::Killed;
            }
            let entered = state.enter(self.id);
            let exit = self.fd.run();
            state.leave(self.id, entered);
            let action = match exit {
                Ok(VcpuExit::IoOut(port, data)) => self.pio.write(u64::from(port), data),
                Ok(VcpuExit::IoIn(port, data)) => {
                    data.fill(0xff);
                    self.pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    data.fill(0);
                    self.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => self.mmio.write(addr, data),
                Ok(VcpuExit::Hlt) => {
                    if !self.irqchip {
                        park(state);
                    }
                    None
                }
                Ok(VcpuExit::Shutdown) => return VmExit::Crash("triple fault".into()),
                Ok(VcpuExit::InternalError) => {
                    return VmExit::Crash(self.describe_internal_error());
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return VmExit::Crash(format!(
                        "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    ));
                }
                Ok(VcpuExit::SystemEvent(_, _)) => return VmExit::Reset,
                Ok(VcpuExit::Hypercall(_)) => {
                    return VmExit::Crash("guest made a hypercall".into());
                }
                Ok(VcpuExit::Intr) => None,
                Ok(other) => return VmExit::Crash(format!("unexpected vCPU exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => return VmExit::VmmError(format!("KVM_RUN failed: {e}")),
            };
            match action {
                None | Some(BusAction::None) => {}
                Some(BusAction::Ready) if state.capture_requested() && self.id == 0 => {
                    return self.capture(state);
                }
                Some(BusAction::Ready) => state.ready(),
                Some(BusAction::Exit(s)) => return VmExit::Status(s),
                Some(BusAction::Reset) => return VmExit::Reset,
                Some(BusAction::DeviceError) => {
                    return VmExit::DeviceError("a device stopped on bad guest input".into());
                }
            }
        }
    }

    /// A template VM is at ready: finish the pending exit without running guest code
    /// (KVM_RUN with `immediate_exit`, so that on hardware KVM a pending MMIO/PIO completes),
    /// then save the vCPU's state for the snapshot.
    fn capture(&mut self, state: &RunState) -> VmExit {
        self.fd.set_kvm_immediate_exit(1);
        let r = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        if let Err(e) = r {
            if e.errno() != libc::EINTR {
                return VmExit::VmmError(format!("KVM_RUN (immediate exit): {e}"));
            }
        }
        match crate::snapshot::VcpuState::save(&self.fd) {
            Ok(s) => {
                state.store_capture(s);
                VmExit::Snapshotted
            }
            Err(e) => VmExit::VmmError(format!("saving the vCPU: {e}")),
        }
    }

    /// "emulation failure at rip 0x200123 (0f 57 c0 ...)": what this KVM could not run.
    fn describe_internal_error(&mut self) -> String {
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // member of the exit union.
        let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let what = match sub {
            1 => "emulation failure",
            2 => "simultaneous exception",
            3 => "delivery event failure",
            _ => "internal error",
        };
        let Ok(regs) = self.fd.get_regs() else {
            return format!("KVM {what} (suberror {sub})");
        };
        const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
        let phys = if regs.rip >= KERNEL_MAP {
            regs.rip - KERNEL_MAP
        } else {
            regs.rip
        };
        let mut insn = [0u8; 15];
        let bytes = match self.mem.read_slice(&mut insn, GuestAddress(phys)) {
            Ok(()) => insn
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "unreadable".into(),
        };
        format!(
            "KVM {what} (suberror {sub}) at rip {:#x}, instruction bytes: {bytes}",
            regs.rip
        )
    }
}

/// No irqchip: the guest halted because it has nothing to do; sleep until a device (or a
/// stop request) triggers the wake eventfd.
fn park(state: &RunState) {
    if state.wake().take() || state.stopping() {
        return;
    }
    let parked = Instant::now();
    let mut pfd = libc::pollfd {
        fd: state.wake().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call. EINTR (a kick) just returns.
    unsafe { libc::poll(&mut pfd, 1, -1) };
    state.wake().take();
    state.add_parked(parked.elapsed().as_nanos() as u64);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kick_signal_is_the_one_the_seccomp_allowlist_names() {
        // The jail's allowlist.json allows tgkill and rt_sigaction for signal 35 only.
        assert_eq!(super::kick_signal(), 35);
        assert!(super::kick_signal() >= vmm_sys_util::signal::SIGRTMIN());
    }
}
