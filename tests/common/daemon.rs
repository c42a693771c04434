//! `dust serve` as the integration tests start it: the daemon binary with its control API on
//! a Unix socket and its own run dir, its stderr collected, stopped with SIGTERM on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{dust, guest, read_reply, HttpReply, TempDir};

pub struct Daemon {
    pub child: Child,
    pub api: PathBuf,
    pub services: mpsc::Receiver<(String, SocketAddr)>,
    /// Every line the daemon wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub dir: TempDir,
}

/// Start `dust serve` with one service from flags; returns once it listens.
pub fn daemon(name: &str, image: &str, extra: &[&str]) -> (Daemon, SocketAddr) {
    let dir = TempDir::new("daemon");
    let api = dir.path().join("api.sock");
    let mut args: Vec<std::ffi::OsString> = ["serve", "--listen", "127.0.0.1:0", "--name", name]
        .map(Into::into)
        .into();
    args.extend(["--image".into(), guest(image).into()]);
    args.extend(["--api-socket".into(), api.clone().into()]);
    args.extend(extra.iter().map(Into::into));
    start(dir, api, &args)
}

/// Start `dust serve ARGS` (its API socket at `api`, per-VM sockets in `dir`/run); returns
/// once its first service listens.
pub fn start(dir: TempDir, api: PathBuf, args: &[std::ffi::OsString]) -> (Daemon, SocketAddr) {
    let mut child = dust()
        .args(args)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        // API changes are kept in the test's directory, never in the user's.
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        // The token of a TCP API comes from the test's config, not from its environment.
        .env_remove("DUST_API_TOKEN")
        // Info: the access log is checked; a pipe, as under journald: no colour allowed.
        .env("DUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, services) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line.clone());
            // "dust: serving NAME on http://ADDR" or "... on tcp ADDR"
            if let Some(rest) = line.strip_prefix("dust: serving ") {
                let mut parts = rest.split_whitespace();
                let name = parts.next().unwrap_or_default().to_string();
                let addr = parts
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("http://");
                if let Ok(a) = addr.parse() {
                    let _ = tx.send((name, a));
                }
            }
            eprintln!("[daemon] {line}");
        }
    });
    let (_, addr) = services
        .recv_timeout(Duration::from_secs(30))
        .expect("daemon did not start");
    let t = Instant::now();
    // The socket file appears at bind(), a moment before listen(): wait until it accepts.
    while UnixStream::connect(&api).is_err() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    (
        Daemon {
            child,
            api,
            services,
            log,
            dir,
        },
        addr,
    )
}

impl Daemon {
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> HttpReply {
        self.call_with(method, path, &[], body)
    }

    /// [`Daemon::call`] with extra request headers.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpReply {
        let mut s = UnixStream::connect(&self.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.unwrap_or("");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: dust\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        read_reply(&mut s).unwrap()
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let r = self.call("GET", path, None);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: a daemon that shuts down removes its workers' jail directories
        // and cgroups (SIGKILL would leave empty cgroups for the next start to sweep).
        // SAFETY: a signal to our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// Parse Prometheus text into (series, value).
pub fn metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad metrics line {l:?}"));
            (
                series.to_string(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

pub fn metric(text: &str, series: &str) -> f64 {
    metrics(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| v)
}
