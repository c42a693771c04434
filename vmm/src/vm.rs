//! Assembling a VM ([`build`]), running it ([`Vm::start`]) and ending it ([`VmHandle`]).

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use devices::legacy::{BootTimer, ConsoleWrite, DebugExit, Serial, SerialSink, I8042};
use devices::virtio::vsock::Vsock;
use devices::virtio::{MmioTransport, NOTIFY_REG_OFFSET};
use devices::{Bus, BusDevice, EventFdInterrupt, Interrupt};
use dust_abi::devices as dev;
use dust_abi::layout::{CMDLINE, CMDLINE_MAX};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::{ConfigError, SerialConfig, VmConfig};
use crate::event_loop::EventLoop;
use crate::loader::{self, ImageError};
use crate::memory::{self, GuestMem, MemoryError};
use crate::timings::{since, us, Timings};
use crate::vcpu::{install_kick_handler, Kick, Shared, Vcpu, VmExit};
use crate::x86_64::{cpuid, gdt, mptable, regs, zero_page};

/// Why a VM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config is invalid.
    #[error("invalid VM config: {0}")]
    Config(#[from] ConfigError),
    /// The image or initrd was rejected.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Guest RAM could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible to this user?)")]
    OpenKvm(kvm_ioctls::Error),
    /// Writing boot structures into guest memory failed.
    #[error("writing {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The zero page could not be written.
    #[error("writing the zero page: {0}")]
    ZeroPage(#[from] linux_loader::configurator::Error),
    /// The command line was refused.
    #[error("guest command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// vCPU register setup failed.
    #[error("vCPU setup: {0}")]
    Regs(#[from] regs::RegsError),
    /// The serial output file could not be opened.
    #[error("serial output {path}: {source}")]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A device could not be created or placed.
    #[error("devices: {0}")]
    Devices(String),
    /// A thread could not be started.
    #[error("starting a vCPU thread: {0}")]
    Thread(std::io::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

fn mem_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> BuildError {
    move |source| BuildError::GuestMemory { what, source }
}

/// /dev/kvm, opened once per process (a pre-started worker has it open before any request).
pub(crate) fn kvm() -> Result<&'static Kvm, BuildError> {
    static KVM: OnceLock<Kvm> = OnceLock::new();
    if let Some(k) = KVM.get() {
        return Ok(k);
    }
    let k = Kvm::new().map_err(BuildError::OpenKvm)?;
    Ok(KVM.get_or_init(|| k))
}

/// A built VM that has not run any guest code yet.
pub struct Vm {
    vm_fd: VmFd,
    mem: GuestMem,
    vcpus: Vec<Vcpu>,
    threads: VcpuThreads,
    shared: Arc<Shared>,
    serial: Arc<Mutex<Serial>>,
    events: Option<EventLoop>,
    timeout: Option<Duration>,
    timings: Timings,
}

/// Build the VM `config` describes, with serial output to `serial` (overriding
/// `config.serial`, e.g. to capture it) or, if `None`, where the config says.
///
/// The order is the boot order: KVM VM, memory, image and boot data, devices, vCPUs.
pub fn build(config: &VmConfig, serial: Option<SerialSink>) -> Result<Vm, BuildError> {
    config.validate()?;
    let kvm = kvm()?;
    let mut timings = Timings::default();
    // The vCPU threads start now and wait for their vCPUs: a thread's start-up (stack,
    // signal stack, TLS) then overlaps the build instead of delaying the first guest entry.
    let threads = VcpuThreads::spawn(config.vcpus)?;

    let t = Instant::now();
    let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    timings.create_vm_us = since(t);

    // Memory before the irqchip: with an irqchip (its PIT thread) in place,
    // KVM_SET_USER_MEMORY_REGION waits out an SRCU grace period (measured ~5 ms, against
    // ~20 us before it).
    let t = Instant::now();
    let mem = memory::create(config.memory_mib)?;
    register_memory(&vm_fd, &mem)?;
    timings.memory_us = since(t);

    if config.irqchip {
        let t = Instant::now();
        create_irqchip(&vm_fd)?;
        timings.create_vm_us += since(t);
    }

    let t = Instant::now();
    let cmdline = guest_cmdline(config)?;
    let entry = load_guest(config, &mem, &cmdline)?;
    timings.load_us = since(t);

    let t = Instant::now();
    let wake = Arc::new(EventFdInterrupt::new().map_err(|e| BuildError::Devices(e.to_string()))?);
    let shared = Arc::new(Shared::new(wake));
    let serial_sink = match serial {
        Some(s) => s,
        None => sink_from_config(&config.serial)?,
    };
    let (pio, mmio, serial, events) = create_devices(&vm_fd, config, &mem, &shared, serial_sink)?;
    timings.devices_us = since(t);

    let t = Instant::now();
    let seg = gdt::write_gdt(&mem).map_err(mem_err("the GDT"))?;
    let base_cpuid = cpuid::supported(kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let fd = vm_fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&cpuid::for_vcpu(base_cpuid, id, config.vcpus))
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        regs::setup_msrs(&fd)?;
        if id == 0 {
            regs::setup_sregs(&fd, &seg)?;
            regs::setup_regs(&fd, entry)?;
            regs::setup_fpu(&fd)?;
        }
        if config.irqchip {
            regs::setup_lint(&fd)?;
        }
        vcpus.push(Vcpu {
            fd,
            id,
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            irqchip: config.irqchip,
        });
    }
    timings.vcpu_setup_us = since(t);

    Ok(Vm {
        vm_fd,
        mem,
        vcpus,
        threads,
        shared,
        serial,
        events,
        timeout: config.timeout,
        timings,
    })
}

fn create_irqchip(vm_fd: &VmFd) -> Result<(), BuildError> {
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMem) -> Result<(), BuildError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM fd in
        // every path: `Vm`/`VmHandle` drop the VM fd and vCPUs before the memory.
        unsafe { vm_fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn guest_cmdline(config: &VmConfig) -> Result<Cmdline, BuildError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX)?;
    if !config.cmdline.trim().is_empty() {
        cmdline.insert_str(config.cmdline.trim())?;
    }
    if config.vsock.is_some() {
        cmdline.add_virtio_mmio_device(
            dev::VIRTIO_MMIO_SIZE,
            GuestAddress(dev::VIRTIO_MMIO_BASE),
            dev::VIRTIO_MMIO_FIRST_IRQ,
            None,
        )?;
    }
    Ok(cmdline)
}

fn load_guest(config: &VmConfig, mem: &GuestMem, cmdline: &Cmdline) -> Result<u64, BuildError> {
    let ram_end = memory::low_ram_end(config.memory_mib);
    let kernel = loader::load_kernel(mem, &config.image, ram_end)?;
    let initrd = match &config.initrd {
        Some(path) => {
            let i = loader::load_initrd(mem, path, kernel.end, ram_end)?;
            Some((i.addr, i.size))
        }
        None => None,
    };
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE), cmdline)
        .map_err(|e| BuildError::Devices(format!("loading the command line: {e}")))?;
    let cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len() as u32)?;
    zero_page::write(
        mem,
        &zero_page::BootInfo {
            setup_header: kernel.setup_header.as_ref(),
            cmdline_size,
            initrd,
            memory_mib: config.memory_mib,
        },
    )?;
    gdt::write_page_tables(mem).map_err(mem_err("the page tables"))?;
    if config.vcpus > 1 {
        mptable::write(mem, config.vcpus).map_err(mem_err("the MP table"))?;
    }
    Ok(kernel.entry)
}

fn sink_from_config(serial: &SerialConfig) -> Result<SerialSink, BuildError> {
    Ok(match serial {
        SerialConfig::Stdout => SerialSink::Stdout,
        SerialConfig::None => SerialSink::Discard,
        SerialConfig::File(path) => {
            SerialSink::File(File::create(path).map_err(|source| BuildError::SerialFile {
                path: path.clone(),
                source,
            })?)
        }
    })
}

type Devices = (Arc<Bus>, Arc<Bus>, Arc<Mutex<Serial>>, Option<EventLoop>);

/// The interrupt of a device on `gsi`: an irqfd with the in-kernel irqchip, else the
/// polling guest's wake-up.
fn device_irq(
    vm_fd: &VmFd,
    config: &VmConfig,
    shared: &Shared,
    gsi: u32,
) -> Result<Arc<dyn Interrupt>, BuildError> {
    if config.irqchip {
        let irq = EventFdInterrupt::new().map_err(|e| BuildError::Devices(e.to_string()))?;
        vm_fd
            .register_irqfd(irq.eventfd(), gsi)
            .map_err(kvm_err("KVM_IRQFD"))?;
        Ok(Arc::new(irq))
    } else {
        Ok(shared.wake.clone())
    }
}

fn create_devices(
    vm_fd: &VmFd,
    config: &VmConfig,
    mem: &GuestMem,
    shared: &Arc<Shared>,
    sink: SerialSink,
) -> Result<Devices, BuildError> {
    let dev_err = |e: devices::BusError| BuildError::Devices(e.to_string());
    // Unikernels do not take serial interrupts; without an irqchip the wake-up is harmless.
    let serial_irq = device_irq(vm_fd, config, shared, dev::COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, sink)));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), u64::from(dev::COM1), 8)
        .map_err(dev_err)?;
    let i8042: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(I8042::new()));
    pio.insert(i8042, u64::from(dev::I8042_DATA_PORT), 5)
        .map_err(dev_err)?;
    let debug_exit: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(DebugExit));
    pio.insert(debug_exit, u64::from(dev::DEBUG_EXIT_PORT), 4)
        .map_err(dev_err)?;
    let console: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(ConsoleWrite::new(mem.clone(), serial.clone())));
    pio.insert(console, u64::from(dev::CONSOLE_WRITE_PORT), 4)
        .map_err(dev_err)?;
    let mut mmio = Bus::new();
    let timer: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(BootTimer));
    mmio.insert(timer, dev::BOOT_TIMER, dev::BOOT_TIMER_SIZE)
        .map_err(dev_err)?;
    let events = match &config.vsock {
        Some(v) => Some(create_vsock(vm_fd, config, mem, shared, &mut mmio, &v.uds)?),
        None => None,
    };
    Ok((Arc::new(pio), Arc::new(mmio), serial, events))
}

/// The vsock device at the first virtio-mmio slot, served by its own event loop.
fn create_vsock(
    vm_fd: &VmFd,
    config: &VmConfig,
    mem: &GuestMem,
    shared: &Arc<Shared>,
    mmio: &mut Bus,
    uds: &std::path::Path,
) -> Result<EventLoop, BuildError> {
    let dev_err = |e: String| BuildError::Devices(format!("vsock: {e}"));
    let on_error: devices::virtio::ErrorHandler = {
        let shared = shared.clone();
        Arc::new(move |msg: &str| shared.finish(VmExit::DeviceError(format!("vsock: {msg}"))))
    };
    let vsock = Arc::new(Mutex::new(
        Vsock::new(uds.to_path_buf(), on_error).map_err(|e| dev_err(e.to_string()))?,
    ));
    let irq = device_irq(vm_fd, config, shared, dev::VIRTIO_MMIO_FIRST_IRQ)?;
    let transport =
        MmioTransport::new(mem.clone(), vsock.clone(), irq).map_err(|e| dev_err(e.to_string()))?;
    let notify = IoEventAddress::Mmio(dev::VIRTIO_MMIO_BASE + NOTIFY_REG_OFFSET);
    for (index, evt) in transport.queue_evts().iter().enumerate() {
        vm_fd
            .register_ioevent(evt, &notify, index as u32)
            .map_err(kvm_err("KVM_IOEVENTFD (vsock queue)"))?;
    }
    let transport: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(transport));
    mmio.insert(transport, dev::VIRTIO_MMIO_BASE, dev::VIRTIO_MMIO_SIZE)
        .map_err(|e| dev_err(e.to_string()))?;
    EventLoop::start(vec![vsock]).map_err(|e| dev_err(e.to_string()))
}

/// Stops a running VM from any thread.
#[derive(Clone)]
pub struct Killer {
    shared: Arc<Shared>,
    kicks: Arc<Vec<Kick>>,
}

impl Killer {
    /// Stop the VM, recording `exit` as its outcome unless it already ended.
    pub fn stop(&self, exit: VmExit) {
        self.shared.finish(exit);
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
        self.shared.guest_ns_now() / 1000
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
    done: Receiver<()>,
    deadline: Option<Instant>,
    started: Instant,
    timings: Timings,
    resources: Option<Resources>,
}

/// What a running VM owns besides its vCPU threads; dropped at teardown (event loop first,
/// so every vsock connection closes and the socket file goes, then the VM, then its RAM).
/// Fields drop in declaration order.
struct Resources {
    _events: Option<EventLoop>,
    _vm_fd: VmFd,
    _mem: GuestMem,
    serial: Arc<Mutex<Serial>>,
}

impl Vm {
    /// Build-phase durations so far.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Run `f` (once) on the vCPU thread when the guest signals ready.
    pub fn on_ready(&self, f: impl FnOnce(Instant) + Send + 'static) {
        *self
            .shared
            .on_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    /// Start the vCPUs.
    pub fn start(mut self) -> Result<VmHandle, BuildError> {
        install_kick_handler()
            .map_err(|e| BuildError::Thread(std::io::Error::from_raw_os_error(e.errno())))?;
        let started = Instant::now();
        let deadline = self.timeout.map(|t| started + t);
        let (done_tx, done) = mpsc::channel();
        let mut joins = Vec::with_capacity(self.vcpus.len());
        let mut kicks = Vec::with_capacity(self.vcpus.len());
        let threads = self.threads.0.drain(..);
        for ((join, go), vcpu) in threads.zip(self.vcpus.drain(..)) {
            use std::os::unix::thread::JoinHandleExt;
            let alive = Arc::new(Mutex::new(true));
            kicks.push(Kick {
                thread: join.as_pthread_t(),
                alive: alive.clone(),
            });
            joins.push(join);
            // The thread waits for exactly this; it cannot have gone.
            let _ = go.send(Launch {
                vcpu,
                shared: self.shared.clone(),
                alive,
                done: done_tx.clone(),
            });
        }
        let _ = self.shared.kicks.set(kicks.clone());
        Ok(VmHandle {
            killer: Killer {
                shared: self.shared,
                kicks: Arc::new(kicks),
            },
            joins,
            done,
            deadline,
            started,
            timings: self.timings,
            resources: Some(Resources {
                _events: self.events,
                _vm_fd: self.vm_fd,
                _mem: self.mem,
                serial: self.serial,
            }),
        })
    }
}

/// What a vCPU thread needs to run, handed over when the VM starts.
struct Launch {
    vcpu: Vcpu,
    shared: Arc<Shared>,
    alive: Arc<Mutex<bool>>,
    done: mpsc::Sender<()>,
}

/// vCPU threads started ahead of their vCPUs. Dropped before the VM starts (a failed build,
/// a VM never started), their channels close, the threads end and are joined.
#[derive(Default)]
struct VcpuThreads(Vec<(std::thread::JoinHandle<()>, mpsc::Sender<Launch>)>);

impl VcpuThreads {
    fn spawn(count: u8) -> Result<Self, BuildError> {
        let mut this = Self::default();
        for id in 0..count {
            let (go, wait) = mpsc::channel::<Launch>();
            let join = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    // Filtered before the thread can see a vCPU (docs/security.md).
                    let filtered = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu);
                    if let Ok(l) = wait.recv() {
                        let exit = match filtered {
                            Ok(()) => l.vcpu.run(&l.shared),
                            Err(e) => VmExit::VmmError(e.to_string()),
                        };
                        l.shared.finish(exit);
                        *l.alive.lock().unwrap_or_else(|p| p.into_inner()) = false;
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

    /// When the guest signalled ready, if it has.
    pub fn ready_at(&self) -> Option<Instant> {
        self.killer.shared.ready_at.get().copied()
    }

    /// Wait until the VM ends (or its timeout passes and it is killed), then free it.
    pub fn wait(mut self) -> VmReport {
        let mut finished = 0;
        let timed_out = loop {
            let res = match self.deadline {
                Some(d) => self
                    .done
                    .recv_timeout(d.saturating_duration_since(Instant::now())),
                None => self.done.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match res {
                Ok(()) => {
                    finished += 1;
                    break false;
                }
                Err(RecvTimeoutError::Disconnected) => break false,
                Err(RecvTimeoutError::Timeout) => {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        break true;
                    }
                }
            }
        };
        let run_end = Instant::now();
        self.killer.stop(if timed_out {
            VmExit::Timeout
        } else {
            VmExit::Killed
        });
        let t = Instant::now();
        // A kick that lands just before a thread enters KVM_RUN is lost; kick until all leave.
        while finished < self.joins.len() {
            match self.done.recv_timeout(Duration::from_millis(1)) {
                Ok(()) => finished += 1,
                Err(RecvTimeoutError::Timeout) => self.killer.kicks.iter().for_each(Kick::kick),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
        let shared = &self.killer.shared;
        let first = shared.first_entry.get().copied();
        let mut timings = self.timings.clone();
        if let Some(first) = first {
            timings.first_entry_us = us(first.saturating_duration_since(self.started));
            timings.ready_us = shared
                .ready_at
                .get()
                .map(|r| us(r.saturating_duration_since(first)));
            timings.run_us = us(run_end.saturating_duration_since(first));
        }
        timings.guest_us = shared.guest_ns.load(Ordering::Relaxed) / 1000;
        timings.parked_us = shared.parked_ns.load(Ordering::Relaxed) / 1000;
        timings.exits = shared.exits.load(Ordering::Relaxed);
        if let Some(r) = self.resources.take() {
            let _ = r.serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
            drop(r);
        }
        timings.teardown_us = since(t);
        let exit = shared
            .outcome()
            .unwrap_or_else(|| VmExit::VmmError("VM ended without an outcome".into()));
        VmReport { exit, timings }
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
