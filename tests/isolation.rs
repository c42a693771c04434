//! Worker isolation end to end (docs/security.md): real workers, real guests on /dev/kvm.
//! Each test runs its own summoner in this process, one test at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    child_pids, env, get, guest, http_get, is_spare, is_zygote, worker_pids, Env, TempDir,
    ONE_AT_A_TIME,
};
use summoner::ServiceConfig;

fn service(name: &str, image: &str) -> ServiceConfig {
    let mut s = ServiceConfig::new(name, "127.0.0.1:0".parse().unwrap(), guest(image));
    s.pool_size = 1;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_syscall_kills_the_worker_with_sigsys_and_the_client_gets_502() {
    require_kvm!();
    let env = env("isolation").await;
    let mut bad = service("bad", "http-hello");
    // Test-only hook (cargo feature `test-hooks`, on for the integration tests only).
    bad.cmdline = dust_jail::seccomp::test_hooks::ARM.into();
    let bad_addr = env.summoner.add(bad).await.unwrap();
    let good_addr = env
        .summoner
        .add(service("good", "http-hello"))
        .await
        .unwrap();
    for _ in 0..3 {
        let r = get(bad_addr).await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 502, "{body}");
        // The client learns only that its VM died; which syscall it was goes to the log
        // (forwarded worker stderr), never to a client.
        assert!(!body.contains("seccomp"), "{body}");
        // The daemon keeps serving, the other service untouched.
        let ok = get(good_addr).await;
        assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    }
    env.finish().await;
}

fn status_field(path: &str, field: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("{field} in {path}"))
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// The memory limit of `pid`'s cgroup, v1 or v2.
fn memory_limit(pid: u32) -> u64 {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctrl.split(',').any(|c| c == "memory") {
            let f = format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes");
            return std::fs::read_to_string(f).unwrap().trim().parse().unwrap();
        }
        if ctrl.is_empty() && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").is_file() {
            let f = format!("/sys/fs/cgroup{path}/memory.max");
            if let Ok(v) = std::fs::read_to_string(f) {
                return v.trim().parse().unwrap_or(u64::MAX);
            }
        }
    }
    panic!("no memory cgroup for {pid}: {cg}")
}

impl Env {
    /// Wait until `name` has `n` idle workers.
    async fn settle(&self, name: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.summoner.stats(name).unwrap().idle < n {
            assert!(Instant::now() < deadline, "pool never filled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_is_jailed_filtered_and_limited_and_requests_still_succeed() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("*** SKIPPED: the jail needs root ***");
        return;
    }
    let env = env("isolation").await;
    let mut s = service("jailed", "http-hello");
    s.pool_size = 2;
    s.memory_mib = 32;
    let addr = env.summoner.add(s).await.unwrap();
    assert_eq!(get(addr).await.status, 200);
    env.settle("jailed", 2).await;
    // The worker that served the request may still be on its way out (reaped in the
    // background): wait for just the two idle shells.
    let t = std::time::Instant::now();
    while worker_pids().len() != 2 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each worker is a direct child of the daemon (no monitor in between) and has no child
    // of its own: a VM is one process.
    let workers = worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    // Forked by the daemon's zygote (unless DUST_NO_ZYGOTE asks for an exec per worker).
    let zygotes = child_pids().into_iter().filter(|p| is_zygote(*p)).count();
    assert_eq!(zygotes, usize::from(!summoner::no_zygote()));
    let mut pid_namespaces = Vec::new();
    for w in workers {
        let mut threads = 0;
        for t in std::fs::read_dir(format!("/proc/{w}/task")).unwrap() {
            let task = t.unwrap().path();
            let st = format!("{}/status", task.display());
            assert_eq!(status_field(&st, "Seccomp:"), "2", "{st}");
            threads += 1;
            let children = std::fs::read_to_string(task.join("children")).unwrap();
            assert_eq!(children.trim(), "", "{} has children", task.display());
        }
        let st = format!("/proc/{w}/status");
        let uids = status_field(&st, "Uid:");
        assert!(uids.split_whitespace().all(|u| u != "0"), "{w}: uid {uids}");
        assert_eq!(status_field(&st, "CapEff:"), "0000000000000000");
        assert_eq!(status_field(&st, "NoNewPrivs:"), "1");
        assert!(threads >= 3, "worker {w}: {threads} threads");
        let ws = w.to_string();
        for kind in ["mnt", "pid", "net", "ipc", "uts"] {
            assert_ne!(ns(&ws, kind), ns("self", kind), "{kind} namespace of {w}");
        }
        pid_namespaces.push(ns(&ws, "pid"));
        // Guest memory + the default 64 MiB overhead.
        assert_eq!(memory_limit(w), (32 + 64) << 20);
        // Its root: no host files, its image, its socket directory.
        let root = format!("/proc/{w}/root");
        assert!(!std::path::Path::new(&format!("{root}/etc/passwd")).exists());
        assert!(std::path::Path::new(&format!("{root}/image")).is_file());
        assert!(std::path::Path::new(&format!("{root}/run")).is_dir());
        // Its mounts, as it sees them: its root and its image, nothing of the host.
        let points = mount_points(w);
        assert_eq!(points, ["/", "/image"], "worker {w}'s mounts");
        // Its network: a loopback device, nothing else.
        let dev = std::fs::read_to_string(format!("/proc/{w}/net/dev")).unwrap();
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(str::trim))
            .collect();
        assert_eq!(ifaces, ["lo"]);
        // Its processes: it is pid 1 of its own namespace.
        let nspid = status_field(&format!("/proc/{w}/status"), "NSpid:");
        assert!(nspid.ends_with(" 1") || nspid.ends_with("\t1"), "{nspid}");
        // One VM in it: the one its spare made ahead (vmm's `prepare_ahead`) or its own.
        let vms = std::fs::read_dir(format!("/proc/{w}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.as_os_str() == "anon_inode:kvm-vm")
            .count();
        assert_eq!(vms, 1, "worker {w}: {vms} KVM VMs");
    }
    assert_ne!(
        pid_namespaces[0], pid_namespaces[1],
        "workers share a pid ns"
    );
    if !summoner::no_zygote() {
        spare_holds_no_host_mount().await;
    }
    for _ in 0..3 {
        assert_eq!(get(addr).await.status, 200);
    }
    env.finish().await;
}

/// A child killed and reaped when dropped (a failed assertion leaves no daemon behind).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The children of every thread of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The mount points in `pid`'s /proc/<pid>/mountinfo, in order.
fn mount_points(pid: u32) -> Vec<String> {
    // A spare may be handed its request (and end) meanwhile: no mounts then.
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .collect()
}

/// The zygote's spare detached the host's mount tree before any request came: its mount
/// namespace holds one mount, an empty tmpfs as `/` (docs/security.md, "The spare's
/// jail"). Its root is that tmpfs, so its mountinfo shows the whole namespace.
async fn spare_holds_no_host_mount() {
    let t = Instant::now();
    let spare = loop {
        let spare = child_pids().into_iter().find(|p| is_spare(*p));
        if let Some(pid) = spare {
            // Until it has pivoted, it still holds the host's mounts.
            if mount_points(pid).len() == 1 || t.elapsed() > Duration::from_secs(10) {
                break pid;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no spare");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let info = std::fs::read_to_string(format!("/proc/{spare}/mountinfo")).unwrap();
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(lines.len(), 1, "spare {spare}'s mounts:\n{info}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields[4], "/", "{info}");
    assert!(lines[0].contains(" - tmpfs "), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_over_its_memory_limit_loses_its_worker_and_no_one_else_notices() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("*** SKIPPED: cgroups need root ***");
        return;
    }
    let env = env("isolation").await;
    // The same guest touches ~48 MiB of its 64: fine under the default limit (64 + 64
    // MiB), fatal under 32 MiB.
    let mut small = service("hog-small", "mem-hog");
    small.memory_mib = 64;
    small.memory_limit_mib = Some(32);
    let mut roomy = service("hog-roomy", "mem-hog");
    roomy.memory_mib = 64;
    let small = env.summoner.add(small).await.unwrap();
    let roomy = env.summoner.add(roomy).await.unwrap();
    let hello = env
        .summoner
        .add(service("hello", "http-hello"))
        .await
        .unwrap();
    for _ in 0..2 {
        let r = get(small).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        let r = get(roomy).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(get(hello).await.status, 200);
    }
    env.finish().await;
}

#[test]
fn the_daemon_runs_under_its_own_filter_and_still_serves() {
    require_kvm!();
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let dir = TempDir::new("isolation-daemon");
    let mut child = Reaped(
        common::dust()
            .args(["serve", "--image"])
            .arg(guest("http-hello"))
            .args(["--listen", "127.0.0.1:0", "--pool", "1", "--run-dir"])
            .arg(dir.path().join("run"))
            .arg("--api-socket")
            .arg(dir.path().join("api.sock"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        use std::io::BufRead;
        assert!(err.read_line(&mut line).unwrap() > 0, "daemon ended early");
        if let Some(a) = line.trim().strip_prefix("dust: serving hello on http://") {
            break a.parse().unwrap();
        }
    };
    let r = http_get(addr, "/").unwrap();
    assert_eq!(r.status, 200);
    for t in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
        let st = format!("{}/status", t.unwrap().path().display());
        assert_eq!(status_field(&st, "Seccomp:"), "2", "{st}");
    }
    // Under that filter its spares still detach the host's tree ahead (the jail's calls
    // are let through): a spare of its, forked for the next request, holds one mount.
    if !summoner::no_zygote() {
        let t = Instant::now();
        loop {
            let spare = children_of(child.id()).into_iter().find(|p| is_spare(*p));
            if spare.is_some_and(|p| mount_points(p) == ["/"]) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no spare of the daemon without the host's mounts"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: a signal to our own, not yet reaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the run dir: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_virtio_guests_in_jailed_filtered_workers_end_with_a_device_error() {
    require_kvm!();
    let env = env("isolation").await;
    let hello = env
        .summoner
        .add(service("hello", "http-hello"))
        .await
        .unwrap();
    for mode in ["oob", "loop", "huge"] {
        let mut s = service(&format!("bad-{mode}"), "bad-virtio");
        s.cmdline = mode.into();
        let addr = env.summoner.add(s).await.unwrap();
        let r = get(addr).await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 502, "{mode}: {body}");
        // Stopped by the device's own checks inside the allowlists; clients never see
        // which (the log does).
        assert!(!body.contains("seccomp"), "{mode}: {body}");
        assert_eq!(get(hello).await.status, 200);
    }
    env.finish().await;
}
