//! [`RunState`]: what the vCPU threads of one VM, its devices and its handle share while it
//! runs: the stop flag and outcome, the wake-up of a parked vCPU, the ready signal, and the
//! counters behind `--timings` and `Server-Timing: guest`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use devices::EventFdInterrupt;

use crate::snapshot::VcpuState;
use crate::vcpu::Kick;
use crate::VmExit;

/// Run on the vCPU thread when the guest signals ready.
pub type ReadyCallback = Box<dyn FnOnce(Instant) + Send>;

/// State shared by the vCPU threads of one VM, its devices and its handle.
pub struct RunState {
    stop: AtomicBool,
    outcome: Mutex<Option<VmExit>>,
    wake: Arc<EventFdInterrupt>,
    ready_at: OnceLock<Instant>,
    first_entry: OnceLock<Instant>,
    guest_ns: AtomicU64,
    /// When the boot vCPU's current KVM_RUN began (ns since [`epoch`]), 0 outside KVM_RUN:
    /// a guest that signals its devices through ioeventfds can run a whole request inside
    /// one KVM_RUN, which must count as guest time before it returns.
    run_since_ns: AtomicU64,
    parked_ns: AtomicU64,
    exits: AtomicU64,
    on_ready: Mutex<Option<ReadyCallback>>,
    kicks: OnceLock<Vec<Kick>>,
    /// Set for a template VM: at ready, the boot vCPU saves its state here and stops.
    capture_at_ready: AtomicBool,
    captured: Mutex<Option<VcpuState>>,
}

impl RunState {
    /// A VM that has not run yet; `wake` resumes a vCPU parked on HLT.
    pub fn new(wake: Arc<EventFdInterrupt>) -> Self {
        Self {
            stop: AtomicBool::new(false),
            outcome: Mutex::new(None),
            wake,
            ready_at: OnceLock::new(),
            first_entry: OnceLock::new(),
            guest_ns: AtomicU64::new(0),
            run_since_ns: AtomicU64::new(0),
            parked_ns: AtomicU64::new(0),
            exits: AtomicU64::new(0),
            on_ready: Mutex::new(None),
            kicks: OnceLock::new(),
            capture_at_ready: AtomicBool::new(false),
            captured: Mutex::new(None),
        }
    }

    /// Record how the VM ended (if nothing did before) and ask every vCPU to stop.
    pub fn finish(&self, exit: VmExit) {
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if outcome.is_none() {
            *outcome = Some(exit);
        }
        drop(outcome);
        self.stop.store(true, Ordering::SeqCst);
        // Resume a vCPU parked on HLT so it sees the flag, and interrupt any in KVM_RUN.
        let _ = devices::Interrupt::trigger(&*self.wake);
        self.kick_all();
    }

    /// Whether the VM must stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The recorded outcome.
    pub fn outcome(&self) -> Option<VmExit> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd a parked vCPU sleeps on.
    pub fn wake(&self) -> &Arc<EventFdInterrupt> {
        &self.wake
    }

    /// The vCPU threads, once started: whoever ends the VM kicks them out of KVM_RUN.
    pub fn set_kicks(&self, kicks: Vec<Kick>) {
        let _ = self.kicks.set(kicks);
    }

    /// Interrupt KVM_RUN on every live vCPU thread.
    pub fn kick_all(&self) {
        for k in self.kicks.get().into_iter().flatten() {
            k.kick();
        }
    }

    /// Run `f` (once) on the vCPU thread when the guest signals ready.
    pub fn set_on_ready(&self, f: ReadyCallback) {
        *self.on_ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// The guest signalled ready (boot timer): timestamp it and run the callback.
    pub fn ready(&self) {
        let now = Instant::now();
        if self.ready_at.set(now).is_ok() {
            let cb = self
                .on_ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(cb) = cb {
                cb(now);
            }
        }
    }

    /// Make this a template VM: stop it at ready with the boot vCPU's state saved.
    pub fn capture_at_ready(&self) {
        self.capture_at_ready.store(true, Ordering::SeqCst);
    }

    /// Whether the boot vCPU must save its state at ready.
    pub fn capture_requested(&self) -> bool {
        self.capture_at_ready.load(Ordering::SeqCst)
    }

    /// The boot vCPU's saved state.
    pub fn store_capture(&self, s: VcpuState) {
        *self.captured.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }

    /// Take the saved vCPU state, if there is one.
    pub fn take_capture(&self) -> Option<VcpuState> {
        self.captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// When the guest signalled ready, if it has.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at.get().copied()
    }

    /// When the boot vCPU first entered KVM_RUN.
    pub fn first_entry(&self) -> Option<Instant> {
        self.first_entry.get().copied()
    }

    /// vCPU `id` is about to enter KVM_RUN; returns the entry time for [`RunState::leave`].
    pub fn enter(&self, id: u8) -> Instant {
        let entered = Instant::now();
        if id == 0 {
            let _ = self.first_entry.set(entered);
            self.run_since_ns.store(since_epoch_ns(), Ordering::Relaxed);
        }
        entered
    }

    /// vCPU `id` left the KVM_RUN it entered at `entered`.
    pub fn leave(&self, id: u8, entered: Instant) {
        let spent = entered.elapsed().as_nanos() as u64;
        if id == 0 {
            self.run_since_ns.store(0, Ordering::Relaxed);
        }
        self.guest_ns.fetch_add(spent, Ordering::Relaxed);
        self.exits.fetch_add(1, Ordering::Relaxed);
    }

    /// A vCPU spent `ns` parked on HLT.
    pub fn add_parked(&self, ns: u64) {
        self.parked_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Guest time so far, including the boot vCPU's KVM_RUN in progress, in nanoseconds.
    pub fn guest_ns_now(&self) -> u64 {
        let done = self.guest_ns.load(Ordering::Relaxed);
        match self.run_since_ns.load(Ordering::Relaxed) {
            0 => done,
            since => done + since_epoch_ns().saturating_sub(since),
        }
    }

    /// Wall time spent inside finished KVM_RUNs, summed over vCPUs, in nanoseconds.
    pub fn guest_ns(&self) -> u64 {
        self.guest_ns.load(Ordering::Relaxed)
    }

    /// Wall time vCPUs spent parked on HLT waiting for a device (no-irqchip mode), ns.
    pub fn parked_ns(&self) -> u64 {
        self.parked_ns.load(Ordering::Relaxed)
    }

    /// VM exits handled in userspace.
    pub fn exits(&self) -> u64 {
        self.exits.load(Ordering::Relaxed)
    }
}

/// A process-wide origin for the nanosecond timestamps kept in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`] (never 0 once the epoch exists).
fn since_epoch_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}
