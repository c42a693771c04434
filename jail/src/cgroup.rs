//! A cgroup per VM (docs/security.md): memory (guest memory + VMM overhead), pids, CPU
//! weight and an optional CPU quota. cgroup v2 where the host has a unified hierarchy with
//! the memory and pids controllers; otherwise the v1 controllers mounted under
//! /sys/fs/cgroup/{memory,pids,cpu}.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";

/// What one VM's cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory of every process of the VM, bytes (past it the kernel OOM-kills the worker).
    pub memory_bytes: u64,
    /// Most processes + threads.
    pub pids: u32,
    /// Relative CPU weight, 1-10000 (100 = the default share). With the default weight
    /// and no quota the VM gets no CPU cgroup at all: all VMs in one CPU group would share
    /// one task's worth of CPU against everything else on the host.
    pub cpu_weight: u32,
    /// At most this many percent of one CPU, if set.
    pub cpu_quota_percent: Option<u32>,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified (v2), mounted here.
    V2(PathBuf),
    /// Legacy (v1): one mount per controller.
    V1 {
        /// The memory controller.
        memory: PathBuf,
        /// The pids controller.
        pids: PathBuf,
        /// The cpu controller, if mounted.
        cpu: Option<PathBuf>,
    },
}

fn has_v2_controllers(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.controllers")).is_ok_and(|c| {
        let have: Vec<&str> = c.split_whitespace().collect();
        have.contains(&"memory") && have.contains(&"pids")
    })
}

/// The hierarchy to use here, if any.
pub fn detect() -> Option<Hierarchy> {
    let root = Path::new(ROOT);
    if has_v2_controllers(root) {
        return Some(Hierarchy::V2(root.to_path_buf()));
    }
    let v1 = |name: &str| Some(root.join(name)).filter(|p| p.join("cgroup.procs").is_file());
    Some(Hierarchy::V1 {
        memory: v1("memory")?,
        pids: v1("pids")?,
        cpu: v1("cpu").or_else(|| v1("cpu,cpuacct")),
    })
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

fn mkdir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
}

impl Limits {
    fn cpu(&self) -> bool {
        self.cpu_weight != 100 || self.cpu_quota_percent.is_some()
    }
}

impl Hierarchy {
    /// Create `<parent>/<vm>` with `limits`; returns the directories the worker joins.
    pub fn create(&self, parent: &str, vm: &str, limits: &Limits) -> io::Result<Vec<PathBuf>> {
        match self {
            Hierarchy::V2(root) => create_v2(root, parent, vm, limits),
            Hierarchy::V1 { memory, pids, cpu } => {
                let mut made = Vec::new();
                let v1 = V1Roots {
                    memory,
                    pids,
                    cpu: cpu.as_deref(),
                };
                v1.create(parent, vm, limits, &mut made)
                    .inspect_err(|_| remove(&made))?;
                Ok(made)
            }
        }
    }
}

/// On cgroup v2: the one directory, with its controllers enabled on the way down.
fn create_v2(root: &Path, parent: &str, vm: &str, limits: &Limits) -> io::Result<Vec<PathBuf>> {
    // Controllers must be enabled on the way down (best effort: a delegated subtree may
    // already have them).
    let _ = write(root, "cgroup.subtree_control", "+memory +pids +cpu");
    let p = root.join(parent);
    mkdir(&p)?;
    let _ = write(&p, "cgroup.subtree_control", "+memory +pids +cpu");
    let d = p.join(vm);
    mkdir(&d)?;
    let made = vec![d.clone()];
    let set = || -> io::Result<()> {
        write(&d, "memory.max", &limits.memory_bytes.to_string())?;
        let _ = write(&d, "memory.swap.max", "0");
        write(&d, "pids.max", &limits.pids.to_string())?;
        if limits.cpu() {
            write(&d, "cpu.weight", &limits.cpu_weight.to_string())?;
        }
        if let Some(pct) = limits.cpu_quota_percent {
            write(&d, "cpu.max", &format!("{} 100000", u64::from(pct) * 1000))?;
        }
        Ok(())
    };
    set().inspect_err(|_| remove(&made))?;
    Ok(made)
}

/// The controller roots of a cgroup v1 hierarchy.
struct V1Roots<'a> {
    memory: &'a Path,
    pids: &'a Path,
    cpu: Option<&'a Path>,
}

impl V1Roots<'_> {
    /// One directory per controller; each made one goes into `made` (the caller removes
    /// them when this fails).
    fn create(
        &self,
        parent: &str,
        vm: &str,
        limits: &Limits,
        made: &mut Vec<PathBuf>,
    ) -> io::Result<()> {
        let m = self.memory.join(parent).join(vm);
        mkdir(&m)?;
        made.push(m.clone());
        let bytes = limits.memory_bytes.to_string();
        write(&m, "memory.limit_in_bytes", &bytes)?;
        // No swap either, where swap accounting exists.
        let _ = write(&m, "memory.memsw.limit_in_bytes", &bytes);
        let p = self.pids.join(parent).join(vm);
        mkdir(&p)?;
        made.push(p.clone());
        write(&p, "pids.max", &limits.pids.to_string())?;
        if let Some(cpu) = self.cpu.filter(|_| limits.cpu()) {
            let c = cpu.join(parent).join(vm);
            mkdir(&c)?;
            made.push(c.clone());
            let shares = u64::from(limits.cpu_weight) * 1024 / 100;
            write(&c, "cpu.shares", &shares.max(2).to_string())?;
            if let Some(pct) = limits.cpu_quota_percent {
                write(&c, "cpu.cfs_period_us", "100000")?;
                write(&c, "cpu.cfs_quota_us", &(u64::from(pct) * 1000).to_string())?;
            }
        }
        Ok(())
    }
}

impl Hierarchy {
    /// The controller roots: one on v2, one per controller on v1.
    pub(crate) fn roots(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2(root) => vec![root.clone()],
            Hierarchy::V1 { memory, pids, cpu } => {
                let mut r = vec![memory.clone(), pids.clone()];
                r.extend(cpu.clone());
                r
            }
        }
    }

    /// Remove `parent` if no VM cgroup is left in it (best effort: another daemon's VMs
    /// keep it).
    pub fn remove_parent(&self, parent: &str) {
        let roots = self.roots();
        for root in roots {
            let _ = std::fs::remove_dir(root.join(parent));
        }
    }

    /// Remove the empty VM cgroups a daemon that did not shut down cleanly (SIGKILL, a
    /// crash) left under `parent`. Populated ones (a live daemon's VMs) cannot be removed
    /// and are left alone.
    pub fn sweep(&self, parent: &str) {
        let roots = self.roots();
        for root in roots {
            let Ok(entries) = std::fs::read_dir(root.join(parent)) else {
                continue;
            };
            for e in entries.flatten() {
                let populated = std::fs::read_to_string(e.path().join("cgroup.procs"))
                    .map_or(true, |p| !p.trim().is_empty());
                if e.path().is_dir() && !populated {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

impl Hierarchy {
    /// Kill whatever still runs in the VM cgroups under `parent` and remove them: they are
    /// a dead daemon's (the caller holds its run dir), its workers maybe still exiting.
    pub fn reclaim(&self, parent: &str) {
        let dirs: Vec<PathBuf> = self
            .roots()
            .into_iter()
            .filter_map(|root| std::fs::read_dir(root.join(parent)).ok())
            .flat_map(|d| d.flatten().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        remove(&dirs);
    }

    /// Remove the empty VM cgroups any daemon left under `parent/<daemon>/` more than a
    /// minute ago (a worker joins its cgroup within milliseconds of its creation, so a live
    /// daemon's are never touched), then the daemon directories left empty. Daemons whose
    /// run dir is gone (tests, renamed run dirs) never start again to sweep their own.
    pub fn sweep_stale(&self, parent: &str) {
        let old = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60))
        };
        let empty = |p: &Path| {
            std::fs::read_to_string(p.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty())
        };
        for root in self.roots() {
            let Ok(daemons) = std::fs::read_dir(root.join(parent)) else {
                continue;
            };
            for d in daemons.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                if let Ok(vms) = std::fs::read_dir(&d) {
                    for vm in vms.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                        if old(&vm) && empty(&vm) {
                            let _ = std::fs::remove_dir(&vm);
                        }
                    }
                }
                if old(&d) {
                    let _ = std::fs::remove_dir(&d);
                }
            }
        }
    }
}

/// Kill whatever still runs in `dirs` and remove them (waiting up to a second for the
/// processes to go: a cgroup with members cannot be removed).
pub fn remove(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for d in dirs {
        loop {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: a signal to a process of this VM's cgroup; no memory involved.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!("cannot remove cgroup {}: {e}", d.display());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_cgroup_gets_its_limits_and_goes_away() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let Some(h) = detect().filter(|_| root) else {
            eprintln!("*** SKIPPED: needs root and a memory+pids cgroup hierarchy ***");
            return;
        };
        let limits = Limits {
            memory_bytes: 48 << 20,
            pids: 7,
            cpu_weight: 50,
            cpu_quota_percent: Some(25),
        };
        let vm = format!("unit-{}", std::process::id());
        let dirs = h.create("dust-unit-test", &vm, &limits).unwrap();
        let read = |f: &str| {
            dirs.iter()
                .find_map(|d| std::fs::read_to_string(d.join(f)).ok())
                .unwrap_or_default()
        };
        match &h {
            Hierarchy::V2(_) => {
                assert_eq!(read("memory.max").trim(), (48u64 << 20).to_string());
                assert_eq!(read("cpu.max").trim(), "25000 100000");
            }
            Hierarchy::V1 { cpu, .. } => {
                let limit = read("memory.limit_in_bytes");
                assert_eq!(limit.trim(), (48u64 << 20).to_string());
                if cpu.is_some() {
                    assert_eq!(read("cpu.cfs_quota_us").trim(), "25000");
                    assert_eq!(read("cpu.shares").trim(), "512");
                }
            }
        }
        assert_eq!(read("pids.max").trim(), "7");
        remove(&dirs);
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
        h.sweep("dust-unit-test");
        let parents = match &h {
            Hierarchy::V2(r) => vec![r.join("dust-unit-test")],
            Hierarchy::V1 { memory, pids, cpu } => {
                let mut v = vec![memory.join("dust-unit-test"), pids.join("dust-unit-test")];
                v.extend(cpu.as_ref().map(|c| c.join("dust-unit-test")));
                v
            }
        };
        for p in parents {
            let _ = std::fs::remove_dir(p);
        }
    }
}
