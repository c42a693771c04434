//! Deploying from another machine: the CLI in another directory, over the TCP API with a
//! token, uploads a local module, creates the service from its digest; replace and
//! rollback; artifacts in use cannot be deleted.

use std::net::SocketAddr;
use std::process::Output;

use crate::common::{dust, guest, http_get, TempDir};
use crate::daemon::start_with;
use crate::require_kvm;

const TOKEN: &str = "remote-deploy-test-token";

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_cli_deploys_a_local_module_over_tcp_with_a_token_then_rolls_back() {
    require_kvm!();
    let dir = TempDir::new("state-remote");
    let tcp = free_port().to_string();
    let d = start_with(dir.path(), &["--api-tcp", &tcp], Some(TOKEN)).unwrap();
    // "Another machine": a directory of its own holding the handler, no socket path.
    let laptop = TempDir::new("state-laptop");
    let wasm = crate::handler();
    std::fs::write(laptop.path().join("h.wasm"), &wasm).unwrap();
    let cli = |args: &[&str], token: Option<&str>| {
        dust()
            .args(args)
            .args(["--api-tcp", &tcp])
            .current_dir(laptop.path())
            .env_remove("DUST_API_TOKEN")
            .envs(token.map(|t| ("DUST_API_TOKEN", t)))
            .output()
            .unwrap()
    };
    let add = [
        "services",
        "add",
        "web",
        "--wasm",
        "./h.wasm",
        "--listen",
        "127.0.0.1:0",
    ];
    let o = cli(&add, None);
    assert!(
        !o.status.success() && text(&o).contains("DUST_API_TOKEN"),
        "{}",
        text(&o)
    );
    let o = cli(&add, Some("wrong"));
    assert!(
        !o.status.success() && text(&o).contains("token"),
        "{}",
        text(&o)
    );
    let o = cli(&add, Some(TOKEN));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let addr: SocketAddr = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let r = http_get(addr, "/").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Replace with an image uploaded the same way, then roll back to the module.
    let img = laptop.path().join("hello-img");
    std::fs::copy(guest("http-hello"), &img).unwrap();
    let o = cli(
        &[
            "services",
            "replace",
            "web",
            "--image",
            "./hello-img",
            "--listen",
            "127.0.0.1:0",
        ],
        Some(TOKEN),
    );
    assert!(o.status.success(), "{}", text(&o));
    let (_, v) = d.json("GET", "/v1/services/web", "");
    assert!(v["image"].as_str().unwrap().starts_with("sha256:"), "{v}");
    let o = cli(&["services", "rollback", "web", "--json"], Some(TOKEN));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let digest = summoner::state::Digest::of(&wasm).to_string();
    assert_eq!(v["wasm"], digest.as_str(), "{v}");
    let addr: SocketAddr = v["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(http_get(addr, "/").unwrap().status, 200);

    // Both artifacts are in use: the module now, the image as the rollback's target.
    let (status, v) = d.json("GET", "/v1/artifacts", "");
    assert_eq!(status, 200);
    let list = v["artifacts"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert!(
        list.iter()
            .all(|a| a["users"] == serde_json::json!(["web"])),
        "{v}"
    );
    let (status, v) = d.json("DELETE", &format!("/v1/artifacts/{digest}"), "");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("artifact_in_use"))
    );
    assert_eq!(d.json("DELETE", "/v1/services/web", "").0, 204);
    assert_eq!(
        d.json("DELETE", &format!("/v1/artifacts/{digest}"), "").0,
        204
    );
    let (_, v) = d.json("GET", "/v1/artifacts", "");
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn uploads_have_their_own_limit_and_bad_ones_are_422_without_paths() {
    require_kvm!();
    let dir = TempDir::new("state-upload");
    let d = crate::daemon::start(dir.path(), &["--api-max-upload-mib", "1"]).unwrap();
    let big = vec![0u8; (1 << 20) + 1];
    let r = d.call("POST", "/v1/artifacts", "application/octet-stream", &big);
    assert_eq!(r.status, 413);
    let r = d.call("POST", "/v1/artifacts", "application/json", b"{}");
    assert_eq!(r.status, 415);
    for bad in [&b"\0asm\x01\0\0\0\x7f"[..], b"MZ not a kernel"] {
        let r = d.call("POST", "/v1/artifacts", "application/wasm", bad);
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 422, "{body}");
        assert!(!body.contains(dir.path().to_str().unwrap()), "{body}");
    }
    // A path on the host: the client learns that it cannot be used, not whether it exists.
    let answers: Vec<String> = ["/etc/shadow", "/no/such/file"]
        .iter()
        .map(|p| {
            let body = format!(r#"{{"listen":"127.0.0.1:0","image":"{p}"}}"#);
            let (status, v) = d.json("PUT", "/v1/services/x", &body);
            assert_eq!(status, 422, "{v}");
            v["error"]["message"].as_str().unwrap().replace(p, "P")
        })
        .collect();
    assert_eq!(answers[0], answers[1]);
    // A long `data:` URL is not echoed back whole.
    let url = format!("data:application/wasm;base64,{}", "A".repeat(50_000));
    let body = format!(r#"{{"listen":"127.0.0.1:0","wasm":"{url}"}}"#);
    let r = d.call("PUT", "/v1/services/x", "application/json", body.as_bytes());
    assert_eq!(r.status, 422);
    assert!(r.body.len() < 1000, "{} bytes", r.body.len());
}
