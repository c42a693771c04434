//! Many dust hosts behind real tools, as operators deploy them (docs/deploy.md): HAProxy from
//! `dist/haproxy.cfg` in front of two `dust serve` daemons, one of them restarted under load;
//! `systemd-socket-activate` handing dust its listening socket across a restart; the health
//! endpoint through drain and a pool that cannot build VMs. Real `http-hello` guests on
//! /dev/kvm.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{dust, guest, read_reply, root, HttpReply, TempDir};

/// A port free now (the kernel picks it; the test binds it again at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One request on a fresh connection; an error is a failed request.
fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<HttpReply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: dust\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    read_reply(&mut s)
}

/// Poll until `done` holds; the bound only keeps a broken test from hanging forever.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never happened: {what}");
}

/// A child process killed and reaped on drop, whose stderr lines are echoed and passed on.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command, tag: &'static str) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// Wait for a stderr line containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dust serve` with the http-hello guest and a health endpoint.
fn host(dir: &Path, listen: SocketAddr, health: SocketAddr, extra: &[&str]) -> Proc {
    host_of(&guest("http-hello"), dir, listen, health, extra)
}

fn host_of(
    image: &Path,
    dir: &Path,
    listen: SocketAddr,
    health: SocketAddr,
    extra: &[&str],
) -> Proc {
    let mut cmd = dust();
    cmd.args(["serve", "--name", "hello", "--max-concurrent", "4"])
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--health-listen")
        .arg(health.to_string())
        .arg("--image")
        .arg(image)
        .arg("--api-socket")
        .arg(dir.join("api.sock"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(extra);
    let p = Proc::spawn(cmd, "dust");
    p.wait_for("dust: health on");
    p
}

/// One request: the answering host (`X-Dust-Host`, empty without HAProxy) and the status,
/// or why it failed.
type Outcome = Result<(String, u16), String>;

/// Requests sent in a loop by a few threads until stopped, each on a new connection.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    log: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, log) = (stop.clone(), log.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let r = request(addr, "GET", "/")
                            .map(|r| {
                                let h = r.header("x-dust-host").unwrap_or_default().to_string();
                                (h, r.status)
                            })
                            .map_err(|e| e.to_string());
                        log.lock().unwrap().push(r);
                    }
                })
            })
            .collect();
        Self { stop, threads, log }
    }

    /// Answers so far from `host` (any host for "").
    fn answered_by(&self, host: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|r| matches!(r, Ok((h, 200)) if host.is_empty() || h == host))
            .count()
    }

    /// Stop and return every outcome.
    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn assert_no_failure(outcomes: &[Outcome]) {
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|r| !matches!(r, Ok((_, 200))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
}

/// `dist/haproxy.cfg` with the two example hosts replaced by ours and the frontend on `front`.
fn haproxy_config(hosts: [(SocketAddr, SocketAddr); 2], front: SocketAddr) -> String {
    let text = std::fs::read_to_string(root().join("dist/haproxy.cfg")).unwrap();
    let mut servers = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("bind :80") {
                return format!("    bind {front}");
            }
            for (i, (svc, health)) in hosts.iter().enumerate() {
                let example = format!("server dust{} 10.0.0.{}:8080 check port 9090", i + 1, i + 1);
                if t == example {
                    servers += 1;
                    let port = health.port();
                    return format!("    server dust{} {svc} check port {port}", i + 1);
                }
            }
            l.to_string()
        })
        .collect();
    assert_eq!(
        servers, 2,
        "dist/haproxy.cfg no longer has the two example servers"
    );
    out.join("\n") + "\n"
}

#[test]
fn a_host_restarted_behind_haproxy_fails_no_request() {
    require_kvm!();
    let dir = TempDir::new("scaleout");
    let ports: Vec<(SocketAddr, SocketAddr)> = (0..2)
        .map(|_| (local(free_port()), local(free_port())))
        .collect();
    let front = local(free_port());
    let dirs = [dir.path().join("a"), dir.path().join("b")];
    // A drain delay longer than HAProxy's `inter 1s fall 2` takes to notice.
    let extra = ["--drain-delay", "4s"];
    let mut a = host(&dirs[0], ports[0].0, ports[0].1, &extra);
    let _b = host(&dirs[1], ports[1].0, ports[1].1, &extra);
    let cfg = dir.file(
        "haproxy.cfg",
        haproxy_config([ports[0], ports[1]], front).as_bytes(),
    );
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    let haproxy = Proc::spawn(cmd, "haproxy");
    until("HAProxy listens", || TcpStream::connect(front).is_ok());

    let load = Load::start(front, 4);
    until("traffic reaches both hosts", || {
        load.answered_by("dust1") >= 5 && load.answered_by("dust2") >= 5
    });
    // Host A stops under load: SIGTERM, it drains and exits; then it is started again.
    let status = a.stop();
    assert!(status.success(), "dust exited {status}");
    let before = load.answered_by("dust1");
    let during = load.answered_by("dust2");
    a = host(&dirs[0], ports[0].0, ports[0].1, &extra);
    until("the other host served while A was down", || {
        load.answered_by("dust2") >= during + 5
    });
    until("HAProxy sends to the restarted host again", || {
        load.answered_by("dust1") >= before + 5
    });
    let outcomes = load.finish();
    drop(haproxy);
    assert!(a.stop().success());
    assert_no_failure(&outcomes);
    eprintln!("{} requests, none failed", outcomes.len());
}

/// Kills the processes whose pids a supervisor wrote, if a failed test left them running.
struct PidFiles(Vec<std::path::PathBuf>);

impl PidFiles {
    fn pid(&self, i: usize) -> Option<i32> {
        std::fs::read_to_string(&self.0[i])
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PidFiles {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            if let Some(pid) = self.pid(i) {
                // SAFETY: kill(2); the pid is a dust this test started (a no-op once it exited).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn under_socket_activation_no_connection_is_refused_across_a_restart() {
    require_kvm!();
    let dir = TempDir::new("activate");
    let addr = local(free_port());
    let pids = PidFiles(
        (1..=2)
            .map(|g| dir.path().join(format!("dust.{g}.pid")))
            .collect(),
    );
    // A supervisor that runs dust twice, as systemd restarts a service: it holds the socket
    // throughout and each dust gets it with LISTEN_PID set to its own pid.
    let script = r#"d=$1; shift
for gen in 1 2; do
  sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && LISTEN_PID=$$ exec "$@"' "$d/dust.$gen.pid" "$@"
done"#;
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(addr.to_string())
        .arg("--fdname=hello")
        .args(["sh", "-c", script, "supervisor"])
        .arg(dir.path())
        .arg(env!("CARGO_BIN_EXE_dust"))
        // Port 0: the service finds its socket by name, not by address.
        .args([
            "serve",
            "--name",
            "hello",
            "--listen",
            "127.0.0.1:0",
            "--image",
        ])
        .arg(guest("http-hello"))
        .arg("--api-socket")
        .arg(dir.path().join("api.sock"))
        .arg("--run-dir")
        .arg(dir.path().join("run"));
    let mut activator = Proc::spawn(cmd, "activate");
    activator.wait_for("Listening on");

    // No dust runs yet: the first connection starts it. These wait in the kernel's queue
    // while it starts and are all answered.
    let first: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/")))
        .collect();
    for t in first {
        let r = t
            .join()
            .unwrap()
            .expect("a connection made while dust starts");
        assert_eq!(r.status, 200);
    }
    activator.wait_for("dust: inherited socket hello");

    let load = Load::start(addr, 3);
    until("requests flow", || load.answered_by("") >= 5);
    // SAFETY: kill(2) on the first dust, which the supervisor has not reaped (it waits).
    unsafe { libc::kill(pids.pid(0).unwrap(), libc::SIGTERM) };
    // The supervisor starts the second dust only once the first has exited.
    until("the second dust starts", || pids.pid(1).is_some());
    let restarted = load.answered_by("");
    until("the second dust answers", || {
        load.answered_by("") >= restarted + 10
    });
    let outcomes = load.finish();
    // SAFETY: kill(2) on the second dust, still running under the supervisor.
    unsafe { libc::kill(pids.pid(1).unwrap(), libc::SIGTERM) };
    let status = activator.child.wait().unwrap();
    assert!(status.success(), "supervisor exited {status}");
    assert_no_failure(&outcomes);
    eprintln!(
        "{} requests across the restart, none failed",
        outcomes.len()
    );
}

fn api_call(sock: &Path, method: &str, path: &str) -> HttpReply {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: dust\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    read_reply(&mut s).unwrap()
}

/// `HEAD path`: the status, after checking that no body follows the head.
fn head(addr: SocketAddr, path: &str) -> u16 {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.ends_with("\r\n\r\n"), "a body after the head: {all:?}");
    all.split(' ').nth(1).unwrap().parse().unwrap()
}

fn health(addr: SocketAddr) -> (u16, String) {
    let r = request(addr, "GET", "/healthz").unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[test]
fn health_is_503_while_a_pool_cannot_build_and_while_draining() {
    require_kvm!();
    let dir = TempDir::new("health");
    let image = dir.path().join("http-hello");
    std::fs::copy(guest("http-hello"), &image).unwrap();
    let (listen, probe) = (local(free_port()), local(free_port()));
    let extra = ["--pool", "1", "--drain-delay", "60s"];
    let d = host_of(&image, dir.path(), listen, probe, &extra);
    assert_eq!(health(probe), (200, "ok\n".into()));
    assert_eq!(head(probe, "/healthz"), 200);

    let api = dir.path().join("api.sock");
    until("the pool is filled", || {
        let r = api_call(&api, "GET", "/v1/services/hello");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["stats"]["idle"] == 1
    });
    // The image is deleted: a request takes the pooled shell, the refill fails.
    std::fs::remove_file(&image).unwrap();
    assert_eq!(request(listen, "GET", "/").unwrap().status, 200);
    until("health notices the failing pool", || health(probe).0 == 503);
    let (_, why) = health(probe);
    assert!(why.starts_with("service hello: cannot build VMs"), "{why}");
    assert!(
        why.contains("its image file is missing"),
        "the real cause: {why}"
    );
    // Put back, the pool refills and the host is healthy again.
    std::fs::copy(guest("http-hello"), &image).unwrap();
    until("health recovers", || health(probe).0 == 200);

    // A drain through the API turns health 503 before it answers; the service keeps
    // accepting for the drain delay.
    let r = api_call(&api, "POST", "/v1/drain");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(health(probe), (503, "draining\n".into()));
    assert_eq!(request(listen, "GET", "/").unwrap().status, 200);
    assert_eq!(request(probe, "GET", "/livez").unwrap().status, 200);
    assert_eq!(head(probe, "/healthz"), 503);
    // SIGTERM during the delay cuts it short; the daemon exits cleanly.
    d.wait_for("still accepting for");
    let status = d.stop();
    assert!(status.success(), "dust exited {status}");
}
