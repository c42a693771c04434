//! How a worker process ended, in words for the log. A worker killed by SIGSYS broke its
//! seccomp filter (the worker itself reported which syscall on its control socket and on
//! stderr just before); one killed by SIGKILL that the summoner did not kill was most
//! likely the kernel's OOM killer enforcing the VM's memory limit.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Log `status` of the worker that served `vm` if it says something went wrong.
pub fn report(vm: &str, status: ExitStatus) {
    match status.signal() {
        Some(libc::SIGSYS) => {
            tracing::error!(vm, "worker killed by SIGSYS (seccomp): a forbidden syscall")
        }
        Some(sig) if sig != libc::SIGKILL => tracing::warn!(vm, "worker killed by signal {sig}"),
        _ => {}
    }
}
