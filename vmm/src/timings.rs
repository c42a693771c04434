//! Where a VM's time went, phase by phase, in microseconds.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Durations of each phase of one VM's life (each measured on its own, not cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// KVM_CREATE_VM (and the irqchip when asked for).
    pub create_vm_us: u64,
    /// Mapping guest RAM and registering it with KVM.
    pub memory_us: u64,
    /// Image, initrd, command line, zero page, GDT, page tables.
    pub load_us: u64,
    /// Devices and buses.
    pub devices_us: u64,
    /// vCPU creation and register setup.
    pub vcpu_setup_us: u64,
    /// From `start()` to the first KVM_RUN.
    pub first_entry_us: u64,
    /// From the first KVM_RUN to the guest's "ready" (None if it never signalled).
    pub ready_us: Option<u64>,
    /// From the first KVM_RUN to the VM's end.
    pub run_us: u64,
    /// Time inside KVM_RUN, summed over vCPUs: guest execution (emulated on dev machines).
    pub guest_us: u64,
    /// Time vCPUs sat parked on HLT until a device had work (no-irqchip mode).
    #[serde(default)]
    pub parked_us: u64,
    /// VM exits handled by the VMM.
    #[serde(default)]
    pub exits: u64,
    /// Stopping vCPU threads and freeing the VM.
    pub teardown_us: u64,
}

pub(crate) fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

pub(crate) fn since(t: Instant) -> u64 {
    us(t.elapsed())
}

impl Timings {
    /// Everything from KVM_CREATE_VM to "ready" (what a client waits for in the VMM).
    pub fn create_to_ready_us(&self) -> Option<u64> {
        self.ready_us.map(|r| {
            self.create_vm_us
                + self.memory_us
                + self.load_us
                + self.devices_us
                + self.vcpu_setup_us
                + self.first_entry_us
                + r
        })
    }

    /// One line per phase, for `dust run --timings`.
    pub fn render(&self) -> String {
        let ready = self
            .ready_us
            .map_or_else(|| "never".to_string(), |r| format!("{r} us"));
        format!(
            "create_vm    {} us\nmemory       {} us\nload         {} us\ndevices      {} us\n\
             vcpu_setup   {} us\nfirst_entry  {} us\nready        {}\nrun          {} us\n\
             guest        {} us\nparked       {} us\nexits        {}\nteardown     {} us\n",
            self.create_vm_us,
            self.memory_us,
            self.load_us,
            self.devices_us,
            self.vcpu_setup_us,
            self.first_entry_us,
            ready,
            self.run_us,
            self.guest_us,
            self.parked_us,
            self.exits,
            self.teardown_us
        )
    }
}
