//! `dust worker` (internal): one VM per process, driven by the summoner over fd 3. Before
//! it reads a command it turns on its per-thread seccomp filters (docs/security.md).

use std::process::ExitCode;

/// Run the worker protocol until the VM ends.
pub fn worker() -> ExitCode {
    if let Err(e) = vmm::seccomp::enable() {
        eprintln!("dust worker: {e}");
        return ExitCode::from(dust_abi::status::VMM_ERROR);
    }
    ExitCode::from(vmm::worker::serve())
}
