//! `dust bench boot [--peers]`: boot the same guest image with `dust run` and (with
//! `--peers`, when installed) QEMU `-M microvm` and Firecracker, alternating, N times each;
//! measure process spawn -> guest ready (the guest's ready line on serial) and spawn ->
//! exit. QEMU and Firecracker boot the image through its PVH note. A last row spawns a
//! trivial static process: the floor for one process per VM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
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
    /// Why the first of them failed.
    pub first_failure: Option<String>,
    /// Whether the bench held a resident VM for the run (`--resident-vm`).
    pub resident_vm: bool,
}

/// Spawn `cmd` and time it: spawn -> the first line holding `mark` (when given) and spawn ->
/// exit, ms; or why the run does not count.
fn time_run(mut cmd: Command, mark: Option<&str>) -> Result<(f64, f64), String> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let mut ready = None;
    if let (Some(mark), Some(out)) = (mark, child.stdout.take()) {
        let mut out = BufReader::new(out);
        let mut line = Vec::new();
        // Bytes, not text: output that is not UTF-8 must not end the search.
        while out.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if ready.is_none() && contains(&line, mark.as_bytes()) {
                ready = Some(t0.elapsed().as_secs_f64() * 1000.0);
            }
            line.clear();
        }
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let exit = t0.elapsed().as_secs_f64() * 1000.0;
    // QEMU's isa-debug-exit reports (status << 1) | 1, so a guest exit of 0 is 1 there.
    if !matches!(status.code(), Some(0) | Some(1)) {
        return Err(format!("exited with {status}"));
    }
    match (mark, ready) {
        (None, _) => Ok((exit, exit)),
        (Some(_), Some(r)) => Ok((r, exit)),
        (Some(mark), None) => Err(format!("exited without printing a line with {mark:?}")),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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
/// guest ends the VM with an i8042 reset, which Firecracker turns into its own exit. Its log
/// is off: it goes to stdout, and a log line written while the guest prints its ready line
/// byte by byte splits that line, so the run looked failed (7 of 50 once).
fn firecracker_cmd(fc: &Path, config: &Path) -> Command {
    let mut c = Command::new(fc);
    c.arg("--no-api")
        .arg("--config-file")
        .arg(config)
        .args(["--level", "Off"]);
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

/// What to run and how often.
pub struct Opts<'a> {
    /// The guest image every contender boots.
    pub image: &'a Path,
    /// Boots per contender.
    pub runs: usize,
    /// Also QEMU and Firecracker, when installed.
    pub peers: bool,
    /// The Firecracker binary given on the command line.
    pub firecracker: Option<&'a Path>,
    /// The pause before every timed run, whichever contender.
    pub settle: Duration,
    /// Hold one idle VM for the whole run ([`super::resident`]).
    pub resident_vm: bool,
}

/// One contender's samples.
#[derive(Clone, Default)]
struct Series {
    ready: Vec<f64>,
    exit: Vec<f64>,
    failures: usize,
    first_failure: Option<String>,
}

/// The commands of one round, in order: (contender index, command, ready mark).
fn round<'a>(
    exe: &Path,
    o: &Opts,
    qemu: Option<&Path>,
    fc: Option<(&Path, &Path)>,
    floor: Option<&Path>,
) -> Vec<(usize, Command, Option<&'a str>)> {
    let mut runs = Vec::new();
    let mut d = Command::new(exe);
    d.arg("run").arg(o.image).args(["--cmdline", "bench"]);
    runs.push((0, d, Some(READY_MARK)));
    if let Some(q) = qemu {
        runs.push((1, qemu_cmd(q, o.image), Some(READY_MARK)));
    }
    if let Some((fc, config)) = fc {
        runs.push((2, firecracker_cmd(fc, config), Some(READY_MARK)));
    }
    if let Some(floor) = floor {
        runs.push((3, Command::new(floor), None));
    }
    runs
}

/// Run the comparison; returns rows (dust, qemu if asked and present, static floor).
///
/// Every timed run, whichever contender's, starts `settle` after the previous one was
/// reaped: a VMM's exit leaves work behind in the kernel (the VM's teardown, freed pages,
/// RCU callbacks) that would otherwise be charged to whoever runs next on the same cores.
/// The order rotates from round to round for the same reason.
pub fn run(o: &Opts) -> Result<Vec<Row>, String> {
    // Held from before the first timed run until after the last; never run.
    let resident = o
        .resident_vm
        .then(super::resident::ResidentVm::new)
        .transpose()?;
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
    let (qemu, fc) = if o.peers {
        (
            qemu_or_skip(),
            firecracker_or_skip(o.firecracker, o.image, &fc_config),
        )
    } else {
        (None, None)
    };
    let mut series = vec![Series::default(); 4];
    for n in 0..o.runs {
        let fc = fc.as_deref().map(|f| (f, fc_config.as_path()));
        let floor = written.is_ok().then_some(floor.as_path());
        let mut runs = round(&exe, o, qemu.as_deref(), fc, floor);
        // Each round starts with the next contender, so that each follows every other
        // equally often.
        let k = runs.len();
        runs.rotate_left(n % k);
        for (i, cmd, mark) in runs {
            std::thread::sleep(o.settle);
            let s = &mut series[i];
            match time_run(cmd, mark) {
                Ok((r, e)) => {
                    s.ready.push(r);
                    s.exit.push(e);
                }
                Err(why) => {
                    s.failures += 1;
                    s.first_failure.get_or_insert(why);
                }
            }
        }
    }
    drop(resident);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows(series, o.resident_vm))
}

/// One row per runner that ran (dust always): its ready and exit summaries and failures.
fn rows(series: Vec<Series>, resident_vm: bool) -> Vec<Row> {
    let names = ["dust", "qemu-microvm", "firecracker", "static-process"];
    series
        .into_iter()
        .enumerate()
        .filter(|(i, s)| !s.ready.is_empty() || s.failures > 0 || *i == 0)
        .map(|(i, s)| Row {
            name: names[i].to_string(),
            ready: summarize(&s.ready),
            exit: summarize(&s.exit),
            failures: s.failures,
            first_failure: s.first_failure,
            resident_vm,
        })
        .collect()
}

/// Print which host state the run had, the rows and the ratio lines.
pub fn print(rows: &[Row]) {
    let resident = rows.first().is_some_and(|r| r.resident_vm);
    println!("{}", super::resident::host_line(resident));
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
    for r in rows {
        if let Some(why) = &r.first_failure {
            println!("{}: first failure: {why}", r.name);
        }
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
    fn every_row_says_whether_a_resident_vm_was_held() {
        let mut series = vec![Series::default(); 4];
        series[1].ready.push(2.0);
        series[1].exit.push(3.0);
        for held in [false, true] {
            let rows = rows(series.clone(), held);
            assert_eq!(rows.len(), 2, "dust always, qemu because it ran");
            assert!(rows.iter().all(|r| r.resident_vm == held));
            let json = serde_json::to_value(&rows).unwrap();
            assert_eq!(json[1]["resident_vm"], held);
        }
    }

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
