//! Running a built VM: [`Vm::start`] hands each vCPU to its (already started) thread;
//! [`VmHandle`] waits for the end or the timeout, kicks every vCPU out of KVM_RUN, and tears
//! the VM down in order; [`Killer`] stops it from any thread.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::Serial;
use devices::virtio::MmioTransport;
use kvm_ioctls::VmFd;

use super::{BuildError, Vm};
use crate::event_loop::EventLoop;
use crate::memory::GuestMem;
use crate::run_state::RunState;
use crate::timings::{since, us, Timings};
use crate::vcpu::{install_kick_handler, Kick, Vcpu};
use crate::VmExit;

/// Stops a running VM from any thread.
#[derive(Clone)]
pub struct Killer {
    state: Arc<RunState>,
    kicks: Arc<Vec<Kick>>,
}

impl Killer {
    /// Stop the VM, recording `exit` as its outcome unless it already ended.
    pub fn stop(&self, exit: VmExit) {
        self.state.finish(exit);
        for k in self.kicks.iter() {
            k.kick();
        }
    }

    /// Stop the VM as killed.
    pub fn kill(&self) {
        self.stop(VmExit::Killed);
    }

    /// Time the vCPUs have spent inside KVM_RUN so far, including a run in progress, in
    /// microseconds.
    pub fn guest_us(&self) -> u64 {
        self.state.guest_ns_now() / 1000
    }
}

/// How a VM ended and where its time went.
#[derive(Debug, Clone)]
pub struct VmReport {
    /// The outcome.
    pub exit: VmExit,
    /// Phase durations.
    pub timings: Timings,
}

/// A running VM.
pub struct VmHandle {
    killer: Killer,
    joins: Vec<std::thread::JoinHandle<()>>,
    /// vCPUs that report their end on `done`: one per thread in `joins`, and vCPU 0 where
    /// it runs on the caller ([`Vm::run_here`]).
    running: usize,
    done: Receiver<()>,
    deadline: Option<Instant>,
    started: Instant,
    timings: Timings,
    resources: Option<Resources>,
}

/// What a running VM owns besides its vCPU threads; dropped at teardown (event loop first,
/// so every vsock connection closes and the socket file goes, then the VM, then its RAM).
/// Fields drop in declaration order.
pub(crate) struct Resources {
    pub events: Option<EventLoop>,
    pub vm_fd: VmFd,
    pub mem: GuestMem,
    pub serial: Arc<Mutex<Serial>>,
    pub vsock: Option<Arc<Mutex<MmioTransport>>>,
}

impl Vm {
    /// Build-phase durations so far.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Run `f` (once) on the vCPU thread when the guest signals ready.
    pub fn on_ready(&self, f: impl FnOnce(Instant) + Send + 'static) {
        self.state.set_on_ready(Box::new(f));
    }

    /// Start the vCPUs.
    pub fn start(self) -> Result<VmHandle, BuildError> {
        Ok(self.launch(None)?.0)
    }

    /// Run the VM to its end with vCPU 0 on the calling thread (any other vCPU on its own
    /// thread), which saves the hand-over to a thread that has been asleep since the build
    /// began: on a nested host waking it costs tens of microseconds before the guest's
    /// first instruction. The signals named with [`crate::stop_on`] are taken on this thread
    /// while vCPU 0 runs (not where seccomp filters keep vCPU 0 on a thread of its own).
    ///
    /// For a process whose threads are not filtered (`dust run`): where the jail's seccomp
    /// filters are on, vCPU 0 keeps its own filtered thread and this is [`Vm::start`] then
    /// [`VmHandle::wait`].
    pub fn run_here(mut self) -> Result<VmReport, BuildError> {
        if dust_jail::seccomp::enabled() {
            return Ok(self.start()?.wait());
        }
        if self.threads.0.len() == self.vcpus.len() {
            // A thread made for vCPU 0 (a restore makes them all): it ends unused.
            let (join, go) = self.threads.0.remove(0);
            drop(go);
            let _ = join.join();
        }
        let vcpu0 = self.vcpus.remove(0);
        let tid = Arc::new(Mutex::new(None));
        let (handle, done) = self.launch(Some(&tid))?;
        let state = handle.run_state().clone();
        let watchdog = match handle.deadline {
            Some(d) => Some(Watchdog::spawn(d, handle.killer()).map_err(BuildError::Thread)?),
            None => None,
        };
        // SAFETY: gettid has no preconditions.
        *tid.lock().unwrap_or_else(|p| p.into_inner()) = Some(unsafe { libc::gettid() });
        let exit = vcpu0.run_taking_stop_signals(&state);
        state.finish(exit);
        *tid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(w) = watchdog {
            w.end();
        }
        let _ = done.send(());
        Ok(handle.wait())
    }

    /// Hand each vCPU that has a thread to it; `here`: vCPU 0 (already taken out of
    /// `self.vcpus`) runs on the caller, which sets this tid while it does. Returns the
    /// handle and the sender the caller's vCPU reports its end on.
    fn launch(
        mut self,
        here: Option<&Arc<Mutex<Option<libc::pid_t>>>>,
    ) -> Result<(VmHandle, mpsc::Sender<()>), BuildError> {
        install_kick_handler()
            .map_err(|e| BuildError::Thread(std::io::Error::from_raw_os_error(e.errno())))?;
        let started = Instant::now();
        let deadline = self.timeout.map(|t| started + t);
        let (done_tx, done) = mpsc::channel();
        let mut joins = Vec::with_capacity(self.vcpus.len());
        let mut kicks: Vec<Kick> = here
            .map(|tid| Kick { tid: tid.clone() })
            .into_iter()
            .collect();
        let running = self.vcpus.len() + kicks.len();
        let threads = self.threads.0.drain(..);
        for ((join, go), vcpu) in threads.zip(self.vcpus.drain(..)) {
            let tid = Arc::new(Mutex::new(None));
            kicks.push(Kick { tid: tid.clone() });
            joins.push(join);
            // The thread waits for exactly this; it cannot have gone.
            let _ = go.send(Launch {
                vcpu,
                state: self.state.clone(),
                tid,
                done: done_tx.clone(),
            });
        }
        self.state.set_kicks(kicks.clone());
        if self.restored {
            // A restored VM resumes after its guest's ready signal.
            self.state.ready();
        }
        let handle = VmHandle {
            killer: Killer {
                state: self.state,
                kicks: Arc::new(kicks),
            },
            joins,
            running,
            done,
            deadline,
            started,
            timings: self.timings,
            resources: Some(Resources {
                events: self.events,
                vm_fd: self.vm_fd,
                mem: self.mem,
                serial: self.serial,
                vsock: self.vsock,
            }),
        };
        Ok((handle, done_tx))
    }
}

/// The timeout of a VM whose vCPU 0 runs on the caller ([`Vm::run_here`]): a thread that
/// stops the VM at its deadline and kicks until the caller's vCPU has left KVM_RUN (a kick
/// that lands just before KVM_RUN is entered is lost).
struct Watchdog {
    done: Arc<std::sync::atomic::AtomicBool>,
    join: std::thread::JoinHandle<()>,
}

impl Watchdog {
    fn spawn(deadline: Instant, killer: Killer) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        let join = std::thread::Builder::new()
            .name("timeout".into())
            .spawn(move || {
                while !seen.load(Ordering::SeqCst) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        killer.stop(VmExit::Timeout);
                        std::thread::park_timeout(Duration::from_millis(1));
                    } else {
                        std::thread::park_timeout(left);
                    }
                }
            })?;
        Ok(Self { done, join })
    }

    /// The caller's vCPU has ended: stop watching.
    fn end(self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.join.thread().unpark();
        let _ = self.join.join();
    }
}

/// What a vCPU thread needs to run, handed over when the VM starts.
struct Launch {
    vcpu: Vcpu,
    state: Arc<RunState>,
    /// Where the thread says who it is while it runs the vCPU ([`Kick`]).
    tid: Arc<Mutex<Option<libc::pid_t>>>,
    done: mpsc::Sender<()>,
}

/// vCPU threads started ahead of their vCPUs. Dropped before the VM starts (a failed build,
/// a VM never started), their channels close, the threads end and are joined.
#[derive(Default)]
pub(crate) struct VcpuThreads(Vec<(std::thread::JoinHandle<()>, mpsc::Sender<Launch>)>);

impl VcpuThreads {
    pub(crate) fn spawn(count: u8) -> Result<Self, BuildError> {
        Self::spawn_from(0, count)
    }

    /// Threads for vCPUs `first..count` only (vCPU 0 run by the caller, [`Vm::run_here`]).
    pub(crate) fn spawn_from(first: u8, count: u8) -> Result<Self, BuildError> {
        let mut this = Self::default();
        for id in first..count {
            let (go, wait) = mpsc::channel::<Launch>();
            let join = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    // Filtered before the thread can see a vCPU (docs/security.md).
                    let filtered = dust_jail::seccomp::apply(dust_jail::seccomp::ThreadKind::Vcpu);
                    if let Ok(l) = wait.recv() {
                        // SAFETY: gettid has no preconditions.
                        *l.tid.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(unsafe { libc::gettid() });
                        let exit = match filtered {
                            Ok(()) => l.vcpu.run(&l.state),
                            Err(e) => VmExit::VmmError(e.to_string()),
                        };
                        l.state.finish(exit);
                        *l.tid.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        let _ = l.done.send(());
                    }
                })
                .map_err(BuildError::Thread)?;
            this.0.push((join, go));
        }
        Ok(this)
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        for (join, go) in self.0.drain(..) {
            drop(go);
            let _ = join.join();
        }
    }
}

impl VmHandle {
    /// A handle to stop this VM from another thread.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }

    /// The state the VM's threads share.
    pub(crate) fn run_state(&self) -> &Arc<RunState> {
        &self.killer.state
    }

    /// When the guest signalled ready, if it has.
    pub fn ready_at(&self) -> Option<Instant> {
        self.killer.state.ready_at()
    }

    /// Wait until the VM ends (or its timeout passes and it is killed), then free it.
    pub fn wait(self) -> VmReport {
        self.wait_keep(false).0
    }

    /// Wait until the VM ends; with `keep`, hand back what it owned instead of freeing it
    /// (a template VM's memory and devices go into its snapshot).
    pub(crate) fn wait_keep(mut self, keep: bool) -> (VmReport, Option<Resources>) {
        let (timed_out, mut finished) = self.wait_first();
        let run_end = Instant::now();
        self.killer.stop(if timed_out {
            VmExit::Timeout
        } else {
            VmExit::Killed
        });
        let t = Instant::now();
        // A kick that lands just before a thread enters KVM_RUN is lost; kick until all leave.
        while finished < self.running {
            match self.done.recv_timeout(Duration::from_millis(1)) {
                Ok(()) => finished += 1,
                Err(RecvTimeoutError::Timeout) => self.killer.kicks.iter().for_each(Kick::kick),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
        let mut timings = self.run_timings(run_end);
        let mut kept = None;
        if let Some(r) = self.resources.take() {
            let _ = r.serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
            if keep {
                kept = Some(r);
            }
        }
        timings.teardown_us = since(t);
        let exit = self
            .killer
            .state
            .outcome()
            .unwrap_or_else(|| VmExit::VmmError("VM ended without an outcome".into()));
        (VmReport { exit, timings }, kept)
    }

    /// Wait for the first vCPU thread to finish or the deadline to pass: whether it timed
    /// out, and how many threads have finished (0 or 1).
    fn wait_first(&self) -> (bool, usize) {
        loop {
            let res = match self.deadline {
                Some(d) => self
                    .done
                    .recv_timeout(d.saturating_duration_since(Instant::now())),
                None => self.done.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match res {
                Ok(()) => return (false, 1),
                Err(RecvTimeoutError::Disconnected) => return (false, 0),
                Err(RecvTimeoutError::Timeout) => {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        return (true, 0);
                    }
                }
            }
        }
    }

    /// The build's timings with the run's: first entry, ready, run time (to `run_end`),
    /// guest and parked time, exits.
    fn run_timings(&self, run_end: Instant) -> Timings {
        let state = &self.killer.state;
        let mut timings = self.timings.clone();
        if let Some(first) = state.first_entry() {
            timings.first_entry_us = us(first.saturating_duration_since(self.started));
            timings.ready_us = state
                .ready_at()
                .map(|r| us(r.saturating_duration_since(first)));
            timings.run_us = us(run_end.saturating_duration_since(first));
        }
        timings.guest_us = state.guest_ns() / 1000;
        timings.parked_us = state.parked_ns() / 1000;
        timings.exits = state.exits();
        timings
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        if !self.joins.is_empty() {
            self.killer.kill();
            while !self.joins.is_empty() {
                self.killer.kicks.iter().for_each(Kick::kick);
                let _ = self.done.recv_timeout(Duration::from_millis(1));
                if self.joins.iter().all(|j| j.is_finished()) {
                    for j in self.joins.drain(..) {
                        let _ = j.join();
                    }
                }
            }
        }
    }
}
