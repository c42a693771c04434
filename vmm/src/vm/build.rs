//! [`build`]: the boot order in one function. Read it top to bottom to know how a VM is
//! assembled: KVM VM, memory, [irqchip], image and boot data, devices, vCPUs.

use std::sync::Arc;
use std::time::Instant;

use devices::EventFdInterrupt;
use dust_abi::devices as dev;
use dust_abi::layout::{CMDLINE, CMDLINE_MAX};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::platform::{create_devices, Devices};
use super::run::VcpuThreads;
use super::{BuildError, Parts, Vm};
use crate::config::{BootProtocol, VmConfig};
use crate::kvm::{kvm, kvm_err};
use crate::loader;
use crate::memory::{self, GuestMem};
use crate::run_state::RunState;
use crate::timings::{since, Timings};
use crate::vcpu::Vcpu;
use crate::x86_64::{cpuid, gdt, mptable, paging, pvh, regs, zero_page};

pub(crate) fn mem_err(
    what: &'static str,
) -> impl FnOnce(vm_memory::GuestMemoryError) -> BuildError {
    move |source| BuildError::GuestMemory { what, source }
}

/// Build the VM `config` describes, serial output going where `config.serial` says.
///
/// The order is the boot order: KVM VM, memory, image and boot data, devices, vCPUs.
pub fn build(config: &VmConfig) -> Result<Vm, BuildError> {
    build_with(config, 0)
}

/// [`build`] for [`Vm::run_here`]: no thread is made for vCPU 0, which the caller runs
/// (unless this process filters its threads with seccomp, where vCPU 0 keeps its own).
pub fn build_for_caller(config: &VmConfig) -> Result<Vm, BuildError> {
    build_with(config, u8::from(!dust_jail::seccomp::enabled()))
}

/// [`build`], vCPUs from `first_thread` on getting a thread.
fn build_with(config: &VmConfig, first_thread: u8) -> Result<Vm, BuildError> {
    config.validate()?;
    let kvm = kvm().map_err(BuildError::OpenKvm)?;
    let mut timings = Timings::default();
    // The vCPU threads start now and wait for their vCPUs: a thread's start-up (stack,
    // signal stack, TLS) then overlaps the build instead of delaying the first guest entry.
    let threads = VcpuThreads::spawn_from(first_thread, config.vcpus)?;

    // The VM (and vCPU 0, and its RAM if of this size) a zygote's spare made ahead, if it
    // fits (crate::prepared).
    let t = Instant::now();
    let made = crate::prepared::vm(kvm, config.irqchip, Some(config.memory_mib))?;
    let (vm_fd, mut vcpu0) = (made.vm, made.vcpu0);
    timings.create_vm_us = since(t);

    // Memory before the irqchip: with an irqchip (its PIT thread) in place,
    // KVM_SET_USER_MEMORY_REGION waits out an SRCU grace period (measured ~5 ms, against
    // ~20 us before it).
    let t = Instant::now();
    let mem = match made.mem {
        Some(mem) => mem,
        None => {
            let mem = memory::create(config.memory_mib)?;
            register_memory(&vm_fd, &mem)?;
            mem
        }
    };
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
    let wake = Arc::new(EventFdInterrupt::new().map_err(BuildError::EventFd)?);
    let state = Arc::new(RunState::new(wake));
    let devs = create_devices(&vm_fd, config, &mem, &state, None)?;
    timings.devices_us = since(t);

    let t = Instant::now();
    let vcpus = create_vcpus(kvm, (&vm_fd, &mut vcpu0), config, &mem, &devs, entry)?;
    timings.vcpu_setup_us = since(t);

    let timeout = config.timeout;
    let parts = Parts {
        vm_fd,
        mem,
        vcpus,
        threads,
        state,
        devs,
        timeout,
        timings,
    };
    Ok(Vm::assemble(parts, false))
}

/// The vCPUs with their CPUID and MSRs; the boot vCPU also gets the registers that enter the
/// image at `entry` by `config.boot`'s protocol. `vm.1`: vCPU 0 if it was made ahead.
fn create_vcpus(
    kvm: &Kvm,
    (vm_fd, vcpu0): (&VmFd, &mut Option<VcpuFd>),
    config: &VmConfig,
    mem: &GuestMem,
    devs: &Devices,
    entry: u64,
) -> Result<Vec<Vcpu>, BuildError> {
    let seg = gdt::write_gdt(mem).map_err(mem_err("the GDT"))?;
    let base_cpuid = cpuid::supported(kvm).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let fd = crate::prepared::vcpu(vm_fd, vcpu0, base_cpuid, id, config.vcpus)?;
        regs::setup_msrs(&fd)?;
        if id == 0 {
            match config.boot {
                BootProtocol::Linux => {
                    regs::setup_sregs(&fd, &seg)?;
                    regs::setup_regs(&fd, entry)?;
                }
                BootProtocol::Pvh => pvh::setup_vcpu(&fd, entry)?,
            }
            regs::setup_fpu(&fd)?;
        }
        if config.irqchip {
            regs::setup_lint(&fd)?;
        }
        vcpus.push(Vcpu {
            fd,
            id,
            pio: devs.pio.clone(),
            mmio: devs.mmio.clone(),
            mem: mem.clone(),
            irqchip: config.irqchip,
        });
    }
    Ok(vcpus)
}

fn create_irqchip(vm_fd: &VmFd) -> Result<(), BuildError> {
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    Ok(vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?)
}

pub(crate) fn register_memory(vm_fd: &VmFd, mem: &GuestMem) -> Result<(), BuildError> {
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
        .map_err(BuildError::LoadCmdline)?;
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
    paging::write_page_tables(mem).map_err(mem_err("the page tables"))?;
    crate::vminfo::write(mem, &config.id, 0).map_err(mem_err("the VM info page"))?;
    if config.vcpus > 1 {
        mptable::write(mem, config.vcpus).map_err(mem_err("the MP table"))?;
    }
    match config.boot {
        BootProtocol::Linux => Ok(kernel.entry),
        BootProtocol::Pvh => Ok(pvh::prepare(mem, config, &kernel, initrd)?),
    }
}
