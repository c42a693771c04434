//! Schemathesis generates requests from `docs/api/openapi.yaml` and sends them to the real
//! API server (over TCP with a token, the real summoner behind it). In positive mode every
//! request it makes conforms to the spec, so the server must never refuse one as malformed
//! (400): a 400 means the spec admits something the server does not. Answers must match
//! their documented schemas too.
//!
//! Schemathesis is a PyPI tool: `scripts/install-deps` puts it in a venv under `target/`.
//! Without it the test is skipped loudly, and fails under `CI=true`.
//!
//! No VM starts: the one service here has `pool_size = 0` and is never requested, and the
//! generated configs name images that do not exist (422), as generated uploads are no
//! module or image (422).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support as host;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use api::ApiServer;
use summoner::{ServiceConfig, Summoner};

const TOKEN: &str = "schemathesis-t0ken";

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The `st` executable: $DUST_SCHEMATHESIS, else the venv `scripts/install-deps` makes.
fn schemathesis() -> Option<PathBuf> {
    let st = std::env::var_os("DUST_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/schemathesis/bin/st"));
    if st.is_file() {
        return Some(st);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "schemathesis is missing at {} and CI=true: run scripts/install-deps",
            st.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: schemathesis is missing at {} (run scripts/install-deps) ***\n",
        st.display()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_positive_data_is_accepted_and_answers_match_the_spec() {
    let Some(st) = schemathesis() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // With a state directory, so that artifacts and rollback are served too.
    let state = summoner::state::State::open(&tmp.path().join("state")).unwrap();
    let summoner = Arc::new(
        Summoner::new(std::env::current_exe().unwrap(), tmp.path().join("run"))
            .unwrap()
            .with_state(Arc::new(state)),
    );
    // One service, so that the list and get operations have something to describe.
    let mut web = ServiceConfig::new("web", "127.0.0.1:0".parse().unwrap(), host::tiny_elf());
    web.pool_size = 0;
    summoner.add(web).await.unwrap();

    let server = ApiServer::bind(
        tmp.path().join("api.sock"),
        Some(("127.0.0.1:0".parse().unwrap(), TOKEN.into())),
    )
    .unwrap();
    let addr = server.tcp_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(summoner.clone(), async move {
        let _ = rx.await;
    }));

    // 400 is left out on purpose: a request that conforms to the spec must never be refused
    // as malformed. 404 (a generated name or id that does not exist), 409 (a generated
    // address that is taken or privileged, or the name exists) and 422 (a generated image
    // path that does not exist) depend on the host's state, which a schema cannot describe.
    let config = tmp.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"404\", \"409\", \"422\"]\n",
    )
    .unwrap();
    let spec = repo().join("docs/api/openapi.yaml");
    let mut cmd = Command::new(&st);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("http://{addr}")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--mode", "positive"])
        // The drain would stop the server under the rest of the run.
        .args(["--exclude-operation-id", "drain"])
        .args(["--max-examples", "40", "--seed", "1", "--workers", "1"])
        .args(["--max-time", "60", "--request-timeout", "20"])
        .arg("--report-dir")
        .arg(tmp.path().join("report"))
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("HOME", tmp.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the server stops")
        .unwrap();
    summoner.shutdown(Duration::from_secs(5)).await;
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    // It really ran every selected operation (a run that tested nothing also exits 0).
    let count = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().split('/').next()?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
    };
    let selected = count("Selected:");
    assert!(selected >= 15, "{text}");
    assert_eq!(count("Tested:"), selected, "{text}");
}
