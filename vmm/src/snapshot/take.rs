//! [`take`]: boot a VM to its guest's ready, save it into a snapshot directory, destroy it.
//! The files are written under temporary names and renamed into place, memory first, so a
//! reader never sees a state file without its memory.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::host::{cpuid_fingerprint, host_description};
use super::{
    fnv1a, io_err, memory, Header, SnapshotError, SnapshotInfo, State, VcpuState, FORMAT_VERSION,
    MAGIC, MEMORY_FILE, STATE_FILE,
};
use crate::config::VmConfig;
use crate::timings::since;
use crate::vm::Resources;
use crate::VmExit;

/// Boot `config` to its guest's ready, save the VM into `dir` (created; files replaced
/// atomically) and destroy it.
pub fn take(config: &VmConfig, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
    take_keeping_output(config, dir, &mut None)
}

/// [`take`], handing the template's serial output tail to `tail` once its VM is built, so
/// that a template that fails can say why (the worker sends it to the summoner's log).
pub fn take_keeping_output(
    config: &VmConfig,
    dir: &Path,
    tail: &mut Option<devices::legacy::OutputTail>,
) -> Result<SnapshotInfo, SnapshotError> {
    let t0 = Instant::now();
    if config.vcpus != 1 {
        return Err(SnapshotError::Unsupported(
            "only single-vCPU VMs can be snapshotted".into(),
        ));
    }
    if config.irqchip {
        return Err(SnapshotError::Unsupported(
            "VMs with the in-kernel irqchip cannot be snapshotted yet (its PIT makes every restore sleep 7-24 ms in the kernel); use the default polling mode".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let vm = crate::build(config).map_err(Box::new)?;
    *tail = Some(vm.serial_tail());
    vm.run_state_ref().capture_at_ready();
    let handle = vm.start().map_err(Box::new)?;
    let state = handle.run_state().clone();
    let (report, res) = handle.wait_keep(true);
    if report.exit != VmExit::Snapshotted {
        return Err(SnapshotError::NotReady(report.exit));
    }
    let (Some(vcpu), Some(res)) = (state.take_capture(), res) else {
        return Err(SnapshotError::NotCaptured);
    };
    let memory_bytes = save(config, vcpu, res, dir)?;
    Ok(SnapshotInfo {
        guest_us: report.timings.guest_us,
        total_us: since(t0),
        memory_bytes,
    })
}

/// Write the state and memory files of a stopped template; returns the memory bytes written.
fn save(
    config: &VmConfig,
    vcpu: VcpuState,
    mut res: Resources,
    dir: &Path,
) -> Result<u64, SnapshotError> {
    let state = capture(config, vcpu, &mut res)?;
    let state_bytes = serde_json::to_vec(&state).map_err(SnapshotError::Encode)?;
    let generation = crate::vminfo::current_generation(&res.mem);
    let header = header(config, &state_bytes, generation)?;
    let header_bytes = serde_json::to_vec(&header).map_err(SnapshotError::Encode)?;

    let mem_tmp = dir.join(format!(".{MEMORY_FILE}.tmp"));
    let file = File::create(&mem_tmp).map_err(io_err(&mem_tmp))?;
    let memory_bytes = memory::save(&res.mem, &file).map_err(io_err(&mem_tmp))?;
    drop(file);
    let state_tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut f = File::create(&state_tmp).map_err(io_err(&state_tmp))?;
    f.write_all(MAGIC)
        .and_then(|()| f.write_all(&(header_bytes.len() as u32).to_le_bytes()))
        .and_then(|()| f.write_all(&header_bytes))
        .and_then(|()| f.write_all(&state_bytes))
        .map_err(io_err(&state_tmp))?;
    drop(f);
    let mem_path = dir.join(MEMORY_FILE);
    std::fs::rename(&mem_tmp, &mem_path).map_err(io_err(&mem_path))?;
    let state_path = dir.join(STATE_FILE);
    std::fs::rename(&state_tmp, &state_path).map_err(io_err(&state_path))?;
    Ok(memory_bytes)
}

/// Freeze the devices (the event loop stops before their state is read) and gather
/// everything of the VM but its memory.
fn capture(
    config: &VmConfig,
    vcpu: VcpuState,
    res: &mut Resources,
) -> Result<State, SnapshotError> {
    if let Some(mut events) = res.events.take() {
        events.stop();
    }
    let serial = res
        .serial
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .snapshot();
    let vsock = match &res.vsock {
        Some(t) => Some(
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot()
                .map_err(SnapshotError::Vsock)?,
        ),
        None => None,
    };
    let clock = res
        .vm_fd
        .get_clock()
        .map_err(crate::kvm::kvm_err("KVM_GET_CLOCK"))?;
    Ok(State {
        config: config.clone(),
        vcpu,
        serial,
        vsock,
        clock,
    })
}

/// The header for `state_bytes`: this dust, this host, the VM's memory size.
fn header(config: &VmConfig, state_bytes: &[u8], generation: u64) -> Result<Header, SnapshotError> {
    let host = host_description();
    Ok(Header {
        format_version: FORMAT_VERSION,
        dust_version: env!("CARGO_PKG_VERSION").into(),
        cpuid_fingerprint: cpuid_fingerprint()?,
        host_fingerprint: fnv1a(host.as_bytes()),
        host,
        memory_mib: config.memory_mib,
        state_len: state_bytes.len() as u64,
        state_checksum: fnv1a(state_bytes),
        generation,
    })
}
