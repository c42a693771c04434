//! A `dust serve` process for the state tests: its own run dir, API socket and state dir
//! under one test directory, so that a restart finds the same state.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{dust, guest, read_reply, HttpReply};

pub struct Daemon {
    child: Child,
    pub api: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Start `dust serve` over `dir` (a `base` http-hello service from flags, `extra` flags)
/// and wait until its API answers; `Err` with its log if it exits first.
pub fn start(dir: &Path, extra: &[&str]) -> Result<Daemon, String> {
    start_with(dir, extra, None)
}

/// [`start`] with `$DUST_API_TOKEN` set to `token`.
pub fn start_with(dir: &Path, extra: &[&str], token: Option<&str>) -> Result<Daemon, String> {
    let api = dir.join("api.sock");
    let mut child = dust()
        .args([
            "serve",
            "--name",
            "base",
            "--listen",
            "127.0.0.1:0",
            "--image",
        ])
        .arg(guest("http-hello"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--api-socket")
        .arg(&api)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .env_remove("DUST_API_TOKEN")
        .envs(token.map(|t| ("DUST_API_TOKEN", t)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, ready) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.starts_with("dust: control API on ") {
                let _ = tx.send(());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let t = Instant::now();
    loop {
        if ready.try_recv().is_ok() && UnixStream::connect(&api).is_ok() {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!("exited {st}: {}", log.lock().unwrap().join("\n")));
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Daemon { child, api, log })
}

/// One request on the API socket at `api`; the status, or `None` if the daemon went away
/// before it answered.
pub fn call_at(api: &Path, method: &str, path: &str, ctype: &str, body: &[u8]) -> Option<u16> {
    let mut s = UnixStream::connect(api).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: dust\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    let _ = s.write_all(body);
    read_reply(&mut s).ok().map(|r| r.status)
}

impl Daemon {
    /// One request on the API socket.
    pub fn call(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> HttpReply {
        let mut s = UnixStream::connect(&self.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: dust\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        // The daemon may answer (413) and close before the body is all sent.
        let _ = s.write_all(body);
        read_reply(&mut s).unwrap()
    }

    /// A JSON request; the answer's status and body.
    pub fn json(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let r = self.call(method, path, "application/json", body.as_bytes());
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, v)
    }

    /// Upload a file; its digest.
    pub fn upload(&self, bytes: &[u8]) -> (u16, String) {
        let r = self.call("POST", "/v1/artifacts", "application/octet-stream", bytes);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (
            r.status,
            v["digest"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Where service `name` listens.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        let (status, v) = self.json("GET", &format!("/v1/services/{name}"), "");
        (status == 200).then(|| v["address"].as_str().unwrap().parse().unwrap())
    }

    /// The names of the services, sorted.
    pub fn names(&self) -> Vec<String> {
        let (_, v) = self.json("GET", "/v1/services", "");
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal_and_wait(&mut self, sig: i32) -> ExitStatus {
        // SAFETY: a signal to our own, not yet reaped child.
        unsafe { libc::kill(self.pid(), sig) };
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// SIGKILL, and wait for the exit; its workers die with it (they watch their parent).
    pub fn kill9(mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_and_wait(libc::SIGTERM);
        }
    }
}
