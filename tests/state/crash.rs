//! Crash consistency: kill -9 the daemon at seeded random moments during service PUTs and
//! DELETEs and artifact uploads and deletes; after every restart the daemon starts, the
//! services and artifacts are exactly the set before the change or after it (after it,
//! if the client got its answer), every artifact file verifies against its name, and no
//! temporary file is left.
//!
//! `DUST_CRASH_ITERATIONS` (default 100) and `DUST_CRASH_SEED` (default 21) pick the run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use summoner::state::Digest;

use crate::common::{guest, TempDir};
use crate::daemon::{start, Daemon};
use crate::require_kvm;

/// splitmix64: a seeded sequence, so that a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Services (name -> image reference) and artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Model {
    services: BTreeMap<String, String>,
    artifacts: BTreeSet<String>,
}

/// One change: the request, and the model if it succeeds.
struct Op {
    method: &'static str,
    path: String,
    ctype: &'static str,
    body: Vec<u8>,
    after: Model,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pick<'a>(rng: &mut Rng, items: impl Iterator<Item = &'a String>) -> Option<String> {
    let all: Vec<&String> = items.collect();
    (!all.is_empty()).then(|| all[rng.below(all.len() as u64) as usize].clone())
}

/// A random change to `m`: an upload of a new image (http-hello with a random tail: still
/// a valid ELF, a new digest), a PUT, or a DELETE of a service or an artifact.
fn op(rng: &mut Rng, m: &Model, image: &[u8]) -> Op {
    let mut after = m.clone();
    let kind = rng.below(4);
    if kind == 1 || kind == 0 && m.artifacts.is_empty() {
        if let Some(d) = pick(rng, m.artifacts.iter()) {
            let name = format!("s{}", rng.below(4));
            after.services.insert(name.clone(), d.clone());
            let body = format!(r#"{{"listen":"127.0.0.1:0","image":"{d}","pool_size":0}}"#);
            return Op {
                method: "PUT",
                path: format!("/v1/services/{name}"),
                ctype: "application/json",
                body: body.into_bytes(),
                after,
            };
        }
    }
    if kind == 2 {
        if let Some(name) = pick(rng, m.services.keys()) {
            after.services.remove(&name);
            return Op {
                method: "DELETE",
                path: format!("/v1/services/{name}"),
                ctype: "application/json",
                body: Vec::new(),
                after,
            };
        }
    }
    if kind == 3 {
        let used: BTreeSet<&String> = m.services.values().collect();
        if let Some(d) = pick(rng, m.artifacts.iter().filter(|d| !used.contains(d))) {
            after.artifacts.remove(&d);
            return Op {
                method: "DELETE",
                path: format!("/v1/artifacts/{d}"),
                ctype: "application/json",
                body: Vec::new(),
                after,
            };
        }
    }
    let mut bytes = image.to_vec();
    bytes.extend(rng.next().to_le_bytes());
    after.artifacts.insert(Digest::of(&bytes).to_string());
    Op {
        method: "POST",
        path: "/v1/artifacts".into(),
        ctype: "application/octet-stream",
        body: bytes,
        after,
    }
}

/// What the daemon holds now.
fn observe(d: &Daemon) -> Model {
    let (_, v) = d.json("GET", "/v1/services", "");
    let services = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] != "base")
        .map(|s| {
            let name = s["name"].as_str().unwrap().to_string();
            (name, s["image"].as_str().unwrap().to_string())
        })
        .collect();
    let (_, v) = d.json("GET", "/v1/artifacts", "");
    let artifacts = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["digest"].as_str().unwrap().to_string())
        .collect();
    Model {
        services,
        artifacts,
    }
}

/// Every artifact file has its digest; no temporary file anywhere in the state dir.
fn check_files(state: &Path) {
    for dir in [state.to_path_buf(), state.join("artifacts")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".tmp-"),
                "{name} left in {}",
                dir.display()
            );
            if let Some(hex) = name.strip_prefix("sha256-") {
                let got = Digest::of(&std::fs::read(e.path()).unwrap()).to_string();
                assert_eq!(got, format!("sha256:{hex}"), "{name} does not verify");
            }
        }
    }
}

#[test]
fn kill_9_at_random_points_leaves_the_old_or_the_new_state() {
    require_kvm!();
    let iterations = env_or("DUST_CRASH_ITERATIONS", 100);
    let seed = env_or("DUST_CRASH_SEED", 21);
    eprintln!("crash test: {iterations} iterations, seed {seed} (DUST_CRASH_SEED)");
    let mut rng = Rng(seed);
    let image = std::fs::read(guest("http-hello")).unwrap();
    let dir = TempDir::new("state-crash");
    let args = ["--pool", "0"];
    let mut model = Model::default();
    let mut answered_then_killed = 0;
    let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..iterations {
        let d = start(dir.path(), &args)
            .unwrap_or_else(|e| panic!("iteration {i}: the daemon did not start: {e}"));
        check_files(&dir.path().join("state"));
        let seen = observe(&d);
        assert_eq!(seen, model, "iteration {i}: the state after the restart");
        let op = op(&mut rng, &model, &image);
        let kind = format!("{} {}", op.method, op.path.split('/').nth(2).unwrap_or(""));
        *kinds.entry(kind).or_default() += 1;
        let (tx, rx) = mpsc::channel();
        let api = d.api.clone();
        let (method, path, ctype, body) = (op.method, op.path.clone(), op.ctype, op.body.clone());
        let client = std::thread::spawn(move || {
            let status = crate::daemon::call_at(&api, method, &path, ctype, &body);
            let _ = tx.send(status);
        });
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        d.kill9();
        client.join().unwrap();
        let answer = rx.recv().ok().flatten();
        let d = start(dir.path(), &args)
            .unwrap_or_else(|e| panic!("iteration {i}: the daemon did not start: {e}"));
        check_files(&dir.path().join("state"));
        let now = observe(&d);
        let ok = matches!(answer, Some(200..=299));
        if ok {
            answered_then_killed += 1;
            assert_eq!(
                now, op.after,
                "iteration {i}: {} {} was answered {answer:?}",
                op.method, op.path
            );
        } else {
            assert!(
                now == model || now == op.after,
                "iteration {i}: {} {}: neither old nor new:\nold {model:?}\nnew {:?}\nnow {now:?}",
                op.method,
                op.path,
                op.after
            );
        }
        model = now;
        d.stop();
    }
    eprintln!(
        "crash test: {kinds:?}; {answered_then_killed} of {iterations} answered before the kill"
    );
    assert!(
        kinds.len() == 4 || iterations < 20,
        "every kind of change: {kinds:?}"
    );
}
