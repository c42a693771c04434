//! The devices every VM gets (serial, i8042, debug exit, console write, boot timer) and the
//! optional vsock device behind virtio-mmio, with their interrupts and buses.

use std::sync::{Arc, Mutex};

use devices::legacy::{
    BootTimer, ConsoleWrite, DebugExit, Serial, SerialSink, SerialSnapshot, I8042,
};
use devices::virtio::vsock::Vsock;
use devices::virtio::{MmioTransport, NOTIFY_REG_OFFSET};
use devices::{Bus, BusDevice, EventFdInterrupt, Interrupt};
use dust_abi::devices as dev;
use kvm_ioctls::{IoEventAddress, VmFd};

use super::BuildError;
use crate::config::{SerialConfig, VmConfig};
use crate::event_loop::EventLoop;
use crate::kvm::kvm_err;
use crate::memory::GuestMem;
use crate::run_state::RunState;
use crate::VmExit;

/// What [`create_devices`] made.
pub(crate) struct Devices {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub serial: Arc<Mutex<Serial>>,
    /// The device event loop (only when there is a vsock device).
    pub events: Option<EventLoop>,
    /// The vsock device's transport.
    pub vsock: Option<Arc<Mutex<MmioTransport>>>,
}

fn sink_from_config(serial: &SerialConfig) -> Result<SerialSink, BuildError> {
    Ok(match serial {
        // A filtered process (a worker) keeps to its allowlist: no hand-off there.
        SerialConfig::Stdout => SerialSink::Stdout {
            hand_off: !dust_jail::seccomp::enabled(),
        },
        SerialConfig::None => SerialSink::Discard,
        SerialConfig::File(path) => {
            // Appended to: every VM of a service shares its log file.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            SerialSink::File(file.map_err(|source| BuildError::SerialFile {
                path: path.clone(),
                source,
            })?)
        }
    })
}

/// The interrupt of a device on `gsi`: an irqfd with the in-kernel irqchip, else the
/// polling guest's wake-up.
fn device_irq(
    vm_fd: &VmFd,
    config: &VmConfig,
    state: &RunState,
    gsi: u32,
) -> Result<Arc<dyn Interrupt>, BuildError> {
    if config.irqchip {
        let irq = EventFdInterrupt::new().map_err(BuildError::EventFd)?;
        vm_fd
            .register_irqfd(irq.eventfd(), gsi)
            .map_err(kvm_err("KVM_IRQFD"))?;
        Ok(Arc::new(irq))
    } else {
        Ok(state.wake().clone())
    }
}

/// Create the devices and put them on their buses.
pub(crate) fn create_devices(
    vm_fd: &VmFd,
    config: &VmConfig,
    mem: &GuestMem,
    state: &Arc<RunState>,
    serial_snapshot: Option<&SerialSnapshot>,
) -> Result<Devices, BuildError> {
    let sink = sink_from_config(&config.serial)?;
    // Unikernels do not take serial interrupts; without an irqchip the wake-up is harmless.
    let serial_irq = device_irq(vm_fd, config, state, dev::COM1_IRQ)?;
    let serial = match serial_snapshot {
        None => Serial::new(serial_irq, sink),
        Some(snap) => Serial::restored(serial_irq, sink, snap)?,
    };
    let serial = Arc::new(Mutex::new(serial));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), u64::from(dev::COM1), 8)?;
    let i8042: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(I8042::new()));
    pio.insert(i8042, u64::from(dev::I8042_DATA_PORT), 5)?;
    let debug_exit: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(DebugExit));
    pio.insert(debug_exit, u64::from(dev::DEBUG_EXIT_PORT), 4)?;
    let console: Arc<Mutex<dyn BusDevice>> =
        Arc::new(Mutex::new(ConsoleWrite::new(mem.clone(), serial.clone())));
    pio.insert(console, u64::from(dev::CONSOLE_WRITE_PORT), 4)?;
    let mut mmio = Bus::new();
    let timer: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(BootTimer));
    mmio.insert(timer, dev::BOOT_TIMER, dev::BOOT_TIMER_SIZE)?;
    let (events, vsock) = match &config.vsock {
        Some(v) => {
            let (events, transport) = create_vsock(vm_fd, config, mem, state, &mut mmio, &v.uds)?;
            (Some(events), Some(transport))
        }
        None => (None, None),
    };
    Ok(Devices {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        serial,
        events,
        vsock,
    })
}

/// The vsock device at the first virtio-mmio slot, served by its own event loop.
fn create_vsock(
    vm_fd: &VmFd,
    config: &VmConfig,
    mem: &GuestMem,
    state: &Arc<RunState>,
    mmio: &mut Bus,
    uds: &std::path::Path,
) -> Result<(EventLoop, Arc<Mutex<MmioTransport>>), BuildError> {
    let on_error: devices::virtio::ErrorHandler = {
        let state = state.clone();
        Arc::new(move |msg: &str| state.finish(VmExit::DeviceError(format!("vsock: {msg}"))))
    };
    let vsock = Arc::new(Mutex::new(Vsock::new(uds.to_path_buf(), on_error)?));
    let irq = device_irq(vm_fd, config, state, dev::VIRTIO_MMIO_FIRST_IRQ)?;
    let transport = MmioTransport::new(mem.clone(), vsock.clone(), irq)?;
    let notify = IoEventAddress::Mmio(dev::VIRTIO_MMIO_BASE + NOTIFY_REG_OFFSET);
    for (index, evt) in transport.queue_evts().iter().enumerate() {
        vm_fd
            .register_ioevent(evt, &notify, index as u32)
            .map_err(kvm_err("KVM_IOEVENTFD (vsock queue)"))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    let on_bus: Arc<Mutex<dyn BusDevice>> = transport.clone();
    mmio.insert(on_bus, dev::VIRTIO_MMIO_BASE, dev::VIRTIO_MMIO_SIZE)?;
    let events = EventLoop::start(vec![vsock]).map_err(BuildError::EventLoop)?;
    Ok((events, transport))
}
