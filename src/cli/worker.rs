//! `dust worker` (internal): one VM per process, driven by the summoner over fd 3. Before
//! it reads a command it turns on its per-thread seccomp filters and enters the jail the
//! summoner described in its environment (docs/security.md).

use std::process::ExitCode;

use dust_abi::status::VMM_ERROR;

/// Run the worker protocol until the VM ends; or, as the daemon's zygote, fork workers.
pub fn worker() -> ExitCode {
    if let Err(e) = vmm::seccomp::enable() {
        eprintln!("dust worker: {e}");
        return ExitCode::from(VMM_ERROR);
    }
    if std::env::var_os(vmm::jail::zygote::ENV).is_some() {
        return ExitCode::from(vmm::jail::zygote::serve(run));
    }
    // Still one thread here, as the jail needs.
    match vmm::jail::spec_from_env() {
        Ok(spec) => ExitCode::from(run(spec.as_ref())),
        Err(e) => {
            eprintln!("dust worker: {e}");
            ExitCode::from(VMM_ERROR)
        }
    }
}

/// One worker: the jail `spec` describes (if any), then the protocol.
fn run(spec: Option<&vmm::jail::JailSpec>) -> u8 {
    if let Some(spec) = spec {
        if let Err(e) = vmm::jail::enter(spec) {
            eprintln!("dust worker: {e}");
            return VMM_ERROR;
        }
    }
    // After the jail's uid change, which clears the parent-death signal.
    vmm::jail::die_with_daemon();
    vmm::worker::serve()
}
