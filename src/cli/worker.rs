//! `dust worker` (internal): one VM per process, driven by the summoner over fd 3. Before
//! it reads a command it turns on its per-thread seccomp filters and enters the jail the
//! summoner described in its environment (docs/security.md); both are `dust_jail`'s, the
//! VM `vmm`'s.

use std::process::ExitCode;

use dust_abi::status::VMM_ERROR;

/// Run the worker protocol until the VM ends; or, as the daemon's zygote, fork workers.
pub fn worker() -> ExitCode {
    if let Err(e) = dust_jail::seccomp::enable() {
        eprintln!("dust worker: {e}");
        return ExitCode::from(VMM_ERROR);
    }
    if std::env::var_os(dust_jail::zygote::ENV).is_some() {
        // Ahead of every fork: /dev/kvm open and the CPUID table read. Without /dev/kvm
        // each forked worker reports the error itself.
        let kvm = vmm::before_jail().unwrap_or(-1);
        return ExitCode::from(dust_jail::zygote::serve(kvm, run, vmm::prepare_ahead));
    }
    // Still one thread here, as the jail needs.
    match dust_jail::spec_from_env() {
        Ok(spec) => ExitCode::from(run(spec.as_ref())),
        Err(e) => {
            eprintln!("dust worker: {e}");
            ExitCode::from(VMM_ERROR)
        }
    }
}

/// One worker: the jail `spec` describes (if any), then the protocol.
fn run(spec: Option<&dust_jail::JailSpec>) -> u8 {
    if let Some(spec) = spec {
        let jailed = vmm::before_jail()
            .map_err(|e| e.to_string())
            .and_then(|_| dust_jail::enter(spec).map_err(|e| e.to_string()));
        if let Err(e) = jailed {
            eprintln!("dust worker: {e}");
            return VMM_ERROR;
        }
    }
    // After the jail's uid change, which clears the parent-death signal.
    dust_jail::die_with_daemon();
    vmm::worker::serve()
}
