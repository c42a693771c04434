//! `dust bench boot [--peers]`: boot the same guest image with `dust run` and (with
//! `--peers`, when installed) QEMU `-M microvm` and Firecracker, alternating, N times each;
//! measure process spawn -> guest ready (the guest's ready line on serial) and spawn ->
//! exit. QEMU and Firecracker boot the image through its PVH note. A last row spawns a
//! trivial static process: the floor for one process per VM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use super::stats::{summarize, Summary};

/// The line `hello` prints right before it signals ready.
pub const READY_MARK: &str = "Hello from dust";

/// One contender's numbers, ms.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Name.
    pub name: String,
    /// Spawn -> ready line.
    pub ready: Summary,
    /// Spawn -> exit.
    pub exit: Summary,
    /// Runs that did not reach the ready line or exited badly.
    pub failures: usize,
}

fn time_run(mut cmd: Command, mark: Option<&str>) -> Option<(f64, f64)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().ok()?;
    let mut ready = None;
    if let (Some(mark), Some(out)) = (mark, child.stdout.take()) {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if ready.is_none() && line.contains(mark) {
                ready = Some(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let status = child.wait().ok()?;
    let exit = t0.elapsed().as_secs_f64() * 1000.0;
    // QEMU's isa-debug-exit reports (status << 1) | 1, so a guest exit of 0 is 1 there.
    let ok = matches!(status.code(), Some(0) | Some(1));
    match (ok, mark) {
        (true, None) => Some((exit, exit)),
        (true, Some(_)) => ready.map(|r| (r, exit)),
        _ => None,
    }
}

/// A 120-byte static ELF that calls exit(0): the cheapest process Linux can start.
fn trivial_static_elf() -> Vec<u8> {
    let base: u64 = 0x40_0000;
    let code: [u8; 9] = [0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]; // mov eax,60; xor edi,edi; syscall
    let mut e = Vec::with_capacity(128);
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(base + 120).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&0u64.to_le_bytes()); // offset
    e.extend_from_slice(&base.to_le_bytes());
    e.extend_from_slice(&base.to_le_bytes());
    let size = 120 + code.len() as u64;
    e.extend_from_slice(&size.to_le_bytes());
    e.extend_from_slice(&size.to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(&code);
    e
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn qemu() -> Option<PathBuf> {
    on_path("qemu-system-x86_64")
}

/// `given` (`--firecracker`), else `$FIRECRACKER`, else `firecracker` on PATH. It is not
/// packaged for Debian.
fn firecracker(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FIRECRACKER").map(PathBuf::from))
        .filter(|p| p.is_file())
        .or_else(|| on_path("firecracker"))
}

/// Firecracker without its API: one vCPU, 32 MiB (as QEMU gets), the image as kernel. The
/// guest ends the VM with an i8042 reset, which Firecracker turns into its own exit.
fn firecracker_cmd(fc: &Path, config: &Path) -> Command {
    let mut c = Command::new(fc);
    c.arg("--no-api").arg("--config-file").arg(config);
    c
}

fn firecracker_config(image: &Path) -> String {
    serde_json::json!({
        "boot-source": { "kernel_image_path": image, "boot_args": "bench" },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 32 },
    })
    .to_string()
}

/// The leanest QEMU microvm that boots here (docs/benchmarks.md, the machines).
fn qemu_cmd(qemu: &Path, image: &Path) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "32",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ]);
    c.arg(image).args(["-append", "bench"]);
    c
}

/// The QEMU binary, or `None` with a line on stderr saying it is skipped.
fn qemu_or_skip() -> Option<PathBuf> {
    let qemu = qemu();
    if qemu.is_none() {
        eprintln!("dust bench boot: qemu-system-x86_64 not installed; skipping QEMU");
    }
    qemu
}

/// The Firecracker binary with its config for `image` written to `fc_config`, or `None`
/// with a line on stderr saying why it is skipped.
fn firecracker_or_skip(bin: Option<&Path>, image: &Path, fc_config: &Path) -> Option<PathBuf> {
    let Some(fc) = firecracker(bin) else {
        eprintln!(
            "dust bench boot: no firecracker binary (--firecracker, $FIRECRACKER or PATH); skipping Firecracker"
        );
        return None;
    };
    match std::fs::write(fc_config, firecracker_config(image)) {
        Ok(()) => Some(fc),
        Err(e) => {
            eprintln!(
                "dust bench boot: {}: {e}; skipping Firecracker",
                fc_config.display()
            );
            None
        }
    }
}

/// Run the comparison; returns rows (dust, qemu if asked and present, static floor).
pub fn run(
    image: &Path,
    n: usize,
    peers: bool,
    firecracker_bin: Option<&Path>,
) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("dust-bench-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let floor = dir.join("exit0");
    let written = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&floor, trivial_static_elf())
            .and_then(|_| std::fs::set_permissions(&floor, std::fs::Permissions::from_mode(0o755)))
    };
    let fc_config = dir.join("firecracker.json");
    let (qemu, fc) = if peers {
        (
            qemu_or_skip(),
            firecracker_or_skip(firecracker_bin, image, &fc_config),
        )
    } else {
        (None, None)
    };
    let mut samples: Vec<(Vec<f64>, Vec<f64>, usize)> = vec![(vec![], vec![], 0); 4];
    for _ in 0..n {
        let mut runs: Vec<(usize, Command, Option<&str>)> = Vec::new();
        let mut d = Command::new(&exe);
        d.arg("run").arg(image).args(["--cmdline", "bench"]);
        runs.push((0, d, Some(READY_MARK)));
        if let Some(q) = &qemu {
            runs.push((1, qemu_cmd(q, image), Some(READY_MARK)));
        }
        if let Some(fc) = &fc {
            runs.push((2, firecracker_cmd(fc, &fc_config), Some(READY_MARK)));
        }
        if written.is_ok() {
            runs.push((3, Command::new(&floor), None));
        }
        for (i, cmd, mark) in runs {
            match time_run(cmd, mark) {
                Some((r, e)) => {
                    samples[i].0.push(r);
                    samples[i].1.push(e);
                }
                None => samples[i].2 += 1,
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows(samples))
}

/// One row per runner that ran (dust always): its ready and exit summaries and failures.
fn rows(samples: Vec<(Vec<f64>, Vec<f64>, usize)>) -> Vec<Row> {
    let names = ["dust", "qemu-microvm", "firecracker", "static-process"];
    samples
        .into_iter()
        .enumerate()
        .filter(|(i, s)| !s.0.is_empty() || s.2 > 0 || *i == 0)
        .map(|(i, (r, e, f))| Row {
            name: names[i].to_string(),
            ready: summarize(&r),
            exit: summarize(&e),
            failures: f,
        })
        .collect()
}

/// Print rows and the ratio line.
pub fn print(rows: &[Row]) {
    println!(
        "{:<16} {:>12} {:>12} {:>12} {:>12} {:>9}",
        "ms", "ready p50", "ready p99", "exit p50", "exit p99", "failures"
    );
    for r in rows {
        println!(
            "{:<16} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>9}",
            r.name, r.ready.p50, r.ready.p99, r.exit.p50, r.exit.p99, r.failures
        );
    }
    let get = |n: &str| rows.iter().find(|r| r.name == n && r.ready.count > 0);
    for (peer, short) in [("qemu-microvm", "qemu"), ("firecracker", "firecracker")] {
        if let (Some(d), Some(q)) = (get("dust"), get(peer)) {
            println!(
                "ratio {short}/dust spawn->ready: {:.1}x",
                q.ready.p50 / d.ready.p50
            );
            println!(
                "ratio {short}/dust spawn->exit: {:.1}x",
                q.exit.p50 / d.exit.p50
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_process_runs_and_exits_zero() {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("dust-floor-test-{}", std::process::id()));
        std::fs::write(&p, trivial_static_elf()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let st = Command::new(&p).status().unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(st.code(), Some(0));
    }
}
