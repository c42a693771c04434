//! How a worker process ended, in words for the log. A worker killed by SIGSYS broke its
//! seccomp filter (the worker itself reported which syscall on its control socket and on
//! stderr just before); one killed by SIGKILL that the summoner did not kill was most
//! likely the kernel's OOM killer enforcing the VM's memory limit. What a worker writes to
//! stderr (e.g. which syscall its filter refused) goes to the log with its VM id.

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

/// Log each line `vm`'s worker writes to stderr, until it closes it.
pub fn forward_stderr(vm: String, err: std::os::fd::OwnedFd) {
    use tokio::io::AsyncBufReadExt;
    let Ok(err) = tokio::net::unix::pipe::Receiver::from_owned_fd(err) else {
        return;
    };
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(err).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::warn!(vm, "{line}");
        }
    });
}
