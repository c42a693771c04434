//! Every process dust starts, dust reaps; a daemon that dies takes its workers along; the
//! next start removes what a dead daemon left (docs/security.md). The real `dust serve`, as
//! a plain child and as PID 1 of its own pid namespace, with real VMs behind it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{guest, http_get, read_reply, TempDir};

/// A `dust serve` started by this test.
struct Serve {
    /// `dust`, or `unshare` with dust as its child.
    child: Child,
    /// The daemon's pid (as this test sees it).
    daemon: u32,
    addr: SocketAddr,
    api: PathBuf,
}

/// (state, parent) of `pid`, from /proc.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s.rsplit_once(')')?.1.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.next()?.parse().ok()?))
}

/// Every process below `root`, with its state.
fn descendants(root: u32) -> Vec<(u32, char)> {
    let all: Vec<(u32, char, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat(pid).map(|(s, pp)| (pid, s, pp)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, state, _) in all.iter().filter(|(_, _, pp)| *pp == p) {
            out.push((pid, state));
            frontier.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X')
}

/// Start `dust serve` serving http-hello (pool of 2) with its run dir in `dir`; in a pid
/// namespace of its own (as PID 1) if `pidns`.
fn serve(dir: &Path, pidns: bool, extra: &[&str]) -> Serve {
    let api = dir.join("api.sock");
    let dust = env!("CARGO_BIN_EXE_dust");
    let mut cmd = if pidns {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "--kill-child", dust]);
        c
    } else {
        Command::new(dust)
    };
    let hello = guest("http-hello");
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--pool", "2", "--image"])
        .arg(&hello)
        .arg("--api-socket")
        .arg(&api)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("dust: serving hello on http://") {
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
            eprintln!("[daemon] {line}");
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("no daemon");
    let t = Instant::now();
    while UnixStream::connect(&api).is_err() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let daemon = if pidns {
        let kids = descendants(child.id());
        kids.first().expect("unshare has no child").0
    } else {
        child.id()
    };
    Serve {
        child,
        daemon,
        addr,
        api,
    }
}

/// PUT a service over the control API at `api`; returns the status.
fn put(api: &Path, name: &str, body: &str) -> u16 {
    let mut s = UnixStream::connect(api).unwrap();
    write!(
        s,
        "PUT /v1/services/{name} HTTP/1.1\r\nHost: dust\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_reply(&mut s).map_or(0, |r| r.status)
}

impl Serve {
    /// Its workers and whatever else runs below it: (live, zombies).
    fn processes(&self) -> (Vec<u32>, Vec<u32>) {
        let d = descendants(self.daemon);
        let zombies = d.iter().filter(|(_, s)| *s == 'Z').map(|p| p.0).collect();
        (
            d.into_iter().filter(|p| p.1 != 'Z').map(|p| p.0).collect(),
            zombies,
        )
    }

    fn kill9(&mut self) {
        // SAFETY: a signal to the daemon this test started.
        unsafe { libc::kill(self.daemon as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        // SAFETY: a signal to the daemon this test started.
        unsafe { libc::kill(self.daemon as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in `kill9`.
            unsafe { libc::kill(self.daemon as i32, libc::SIGKILL) };
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| String::new(), |c| c.trim().into())
}

/// Whether `pid` is the daemon's zygote (one per daemon, not per VM).
fn is_zygote(pid: u32) -> bool {
    comm(pid) == "dust-zygote"
}

/// Whether `pid` is the zygote's spare (the next worker, forked ahead; one per zygote).
fn is_spare(pid: u32) -> bool {
    comm(pid) == "dust-spare"
}

/// Wait (at most 20 s) until `s` runs exactly its 2 idle shells (and at most its one
/// zygote and that zygote's one spare); returns (live, zombies), zygote and spare left out.
///
/// A process the zygote has just forked bears the zygote's name until it names itself, so
/// the counts are checked once things settle, not at every look.
fn settle(s: &Serve) -> (Vec<u32>, Vec<u32>) {
    let t = Instant::now();
    loop {
        let (all, zombies) = s.processes();
        let zygotes = all.iter().filter(|p| is_zygote(**p)).count();
        let spares = all.iter().filter(|p| is_spare(**p)).count();
        let live: Vec<u32> = all
            .iter()
            .copied()
            .filter(|p| !is_zygote(*p) && !is_spare(*p))
            .collect();
        let settled = live.len() == 2 && zombies.is_empty() && zygotes <= 1;
        if settled || t.elapsed() > Duration::from_secs(20) {
            let seen: Vec<String> = all.iter().map(|p| format!("{p} {}", comm(*p))).collect();
            assert!(zygotes <= 1, "{zygotes} zygotes: {seen:?}");
            assert!(
                spares <= zygotes,
                "{spares} spares, {zygotes} zygotes: {seen:?}"
            );
            return (live, zombies);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn five_hundred_requests(pidns: bool) {
    let dir = TempDir::new("reaping");
    let s = serve(dir.path(), pidns, &[]);
    for i in 0..500 {
        let r = http_get(s.addr, "/").unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    let (live, zombies) = settle(&s);
    assert!(zombies.is_empty(), "zombies below dust: {zombies:?}");
    assert_eq!(live.len(), 2, "dust runs more than its 2 shells: {live:?}");
    s.stop();
}

#[test]
fn five_hundred_requests_leave_no_zombie_and_no_extra_process() {
    require_kvm!();
    five_hundred_requests(false);
}

#[test]
fn five_hundred_requests_leave_no_zombie_with_dust_as_pid_1() {
    require_kvm!();
    if Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("*** SKIPPED: needs unshare (util-linux) ***");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("*** SKIPPED: a pid namespace needs root ***");
        return;
    }
    five_hundred_requests(true);
}

/// The names in `dir` (the run dir) and, per cgroup controller, the VM cgroups named after
/// any of them.
fn leftovers(run: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let names: Vec<String> = std::fs::read_dir(run)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut cgroups = Vec::new();
    for ctl in ["memory", "pids", "cpu", "unified", ""] {
        let parent = Path::new("/sys/fs/cgroup").join(ctl).join("dust");
        for daemon in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            for vm in std::fs::read_dir(daemon.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = vm.file_name().to_string_lossy().into_owned();
                if names.iter().any(|x| x.starts_with(&n)) {
                    cgroups.push(vm.path());
                }
            }
        }
    }
    (names, cgroups)
}

/// Kill -9 `s` with `busy` running; every process below it must be gone within 1 s, and
/// the next start on the same run dir must remove all it left.
fn kill9_then_restart(mut s: Serve, dir: &Path, busy: &str) {
    let (before, _) = s.processes();
    assert!(!before.is_empty(), "no workers to watch ({busy})");
    let (names, cgroups) = leftovers(&dir.join("run"));
    s.kill9();
    let t = Instant::now();
    while before.iter().any(|&p| alive(p)) && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let survivors: Vec<u32> = before.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        survivors.is_empty(),
        "{busy}: alive 1 s after kill -9: {survivors:?}"
    );
    drop(s);
    let s = serve(dir, false, &[]);
    let (after, cg_after) = leftovers(&dir.join("run"));
    let stale: Vec<&String> = names.iter().filter(|n| after.contains(n)).collect();
    assert!(stale.is_empty(), "{busy}: left in the run dir: {stale:?}");
    let stale_cg: Vec<&PathBuf> = cgroups.iter().filter(|c| c.exists()).collect();
    assert!(stale_cg.is_empty(), "{busy}: cgroups left: {stale_cg:?}");
    let (cached, _) = leftovers(&dir.join("state/cache/templates"));
    let half: Vec<&String> = cached.iter().filter(|n| n.contains(".tmp-")).collect();
    assert!(
        half.is_empty(),
        "{busy}: half-taken templates left: {half:?}"
    );
    let _ = cg_after;
    s.stop();
}

#[test]
fn kill_9_during_requests_takes_the_workers_along_and_the_next_start_sweeps() {
    require_kvm!();
    let dir = TempDir::new("kill9");
    let s = serve(dir.path(), false, &[]);
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let addr = s.addr;
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if http_get(addr, "/").is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < 30 {
        std::thread::sleep(Duration::from_millis(5));
    }
    kill9_then_restart(s, dir.path(), "requests");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
}

#[test]
fn kill_9_while_a_snapshot_service_is_created_takes_the_template_along() {
    require_kvm!();
    let dir = TempDir::new("kill9snap");
    let s = serve(dir.path(), false, &[]);
    let body = format!(
        r#"{{"listen":"127.0.0.1:0","image":"{}","snapshot":true}}"#,
        guest("http-hello").display()
    );
    let api = s.api.clone();
    let put = std::thread::spawn(move || put(&api, "snap", &body));
    // Kill as soon as the template's snapshot directory is there (its worker is starting):
    // a `<key>.tmp-<svc>-template-...` entry in the state dir's template cache.
    let cache = dir.path().join("state/cache/templates");
    let t = Instant::now();
    let has_template = || {
        std::fs::read_dir(&cache)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(".tmp-snap-template-")
            })
    };
    while !has_template() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(has_template(), "no template directory appeared");
    // And its worker started (beside the 2 shells of hello), if it is quick enough to see.
    let t = Instant::now();
    while s.processes().0.len() < 3 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(200));
    }
    kill9_then_restart(s, dir.path(), "template");
    let _ = put.join();
}

#[test]
fn a_killed_zygote_is_reaped_and_replaced_and_requests_go_on() {
    require_kvm!();
    let dir = TempDir::new("zygote");
    let s = serve(dir.path(), false, &[]);
    assert_eq!(http_get(s.addr, "/").unwrap().status, 200);
    let (all, _) = s.processes();
    let Some(&zygote) = all.iter().find(|p| is_zygote(**p)) else {
        eprintln!("*** SKIPPED: this daemon runs no zygote (DUST_NO_ZYGOTE set?) ***");
        return;
    };
    // SAFETY: a signal to the zygote of the daemon this test started.
    unsafe { libc::kill(zygote as i32, libc::SIGKILL) };
    for i in 0..20 {
        assert_eq!(http_get(s.addr, "/").unwrap().status, 200, "request {i}");
    }
    let (live, zombies) = settle(&s);
    assert!(zombies.is_empty(), "zombies below dust: {zombies:?}");
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(stat(zygote).is_none(), "the old zygote was never reaped");
    s.stop();
}

/// `Name:\tvalue` of `/proc/<pid>/status`.
fn status_field(pid: u32, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    Some(line.trim().to_string())
}

fn net_ns(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

#[test]
fn the_zygotes_spare_is_the_next_worker_and_is_reaped() {
    require_kvm!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("*** SKIPPED: a jailed spare needs root ***");
        return;
    }
    let dir = TempDir::new("spare");
    let s = serve(dir.path(), false, &[]);
    assert_eq!(http_get(s.addr, "/").unwrap().status, 200);
    let t = Instant::now();
    let spare = loop {
        let (all, _) = s.processes();
        if let Some(&p) = all.iter().find(|p| is_spare(**p)) {
            break p;
        }
        if all.iter().all(|p| !is_zygote(*p)) {
            eprintln!("*** SKIPPED: this daemon runs no zygote (DUST_NO_ZYGOTE set?) ***");
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no spare: {all:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The daemon's own child, in namespaces of its own (pid 1 of its pid namespace), and
    // not jailed yet: it has read nothing but the zygote's socket.
    assert_eq!(stat(spare).map(|s| s.1), Some(s.daemon));
    let nspid = status_field(spare, "NSpid").unwrap();
    assert!(nspid.ends_with("\t1"), "NSpid {nspid}");
    assert_ne!(net_ns(spare), net_ns(s.daemon));
    // Requests take it: it becomes a jailed worker (unprivileged uid, seccomp).
    let t = Instant::now();
    while is_spare(spare) {
        assert_eq!(http_get(s.addr, "/").unwrap().status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the spare was never taken"
        );
    }
    // It enters its jail (the uid change among the last steps) right after it is taken.
    let root = || status_field(spare, "Uid").is_some_and(|u| u.starts_with("0\t"));
    let t = Instant::now();
    while alive(spare) && root() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!alive(spare) || !root(), "a taken spare still runs as root");
    let (live, zombies) = settle(&s);
    assert!(zombies.is_empty(), "zombies below dust: {zombies:?}");
    assert_eq!(live.len(), 2, "{live:?}");
    let (all, _) = s.processes();
    let next = all.iter().copied().find(|p| is_spare(*p));
    s.stop();
    // Whatever spare was waiting went with the daemon, reaped by it (not left to init).
    if let Some(p) = next {
        assert!(stat(p).is_none(), "spare {p} outlived its daemon");
    }
}
