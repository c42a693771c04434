//! The `dust` CLI verbs against a running daemon: services and VMs listed, added, replaced,
//! shown and removed, in text and JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::daemon::daemon;
use common::{dust, guest, http_get};

#[test]
fn cli_verbs_talk_to_the_daemon() {
    require_kvm!();
    let (d, _) = daemon("base", "spin", &[]);
    let verb = |args: &[&str]| {
        let o = dust()
            .args(args)
            .arg("--socket")
            .arg(&d.api)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, _) = verb(&["services", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("SERVICE") && out.contains("base"), "{out}");
    let image = guest("http-hello");
    let (code, out, err) = verb(&[
        "services",
        "add",
        "web",
        "--image",
        image.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = verb(&[
        "services",
        "add",
        "web",
        "--image",
        image.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already exists"), "{err}");
    let (code, out, _) = verb(&["services", "show", "web", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "web");

    // A spinning VM to list and kill.
    let base: SocketAddr = d.json("/v1/services/base")["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let slow = std::thread::spawn(move || http_get(base, "/").map(|r| r.status));
    let t = Instant::now();
    let id = loop {
        let (_, out, _) = verb(&["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(vm) = v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["service"] == "base")
        {
            break vm["id"].as_str().unwrap().to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no VM appeared in dust ps"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (_, table, _) = verb(&["ps"]);
    assert!(table.contains(&id), "{table}");
    let (code, out, _) = verb(&["kill", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(slow.join().unwrap().unwrap(), 502);
    let (code, _, err) = verb(&["kill", "no-such-vm"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no-such-vm"), "{err}");
    let (code, _, _) = verb(&["services", "rm", "web"]);
    assert_eq!(code, Some(0));
    let (_, out, _) = verb(&["services", "list"]);
    assert!(!out.contains("web"), "{out}");
}

#[test]
fn cli_add_replace_show_and_json_answers() {
    require_kvm!();
    // No VM ever starts: no pools, and no request reaches a service.
    let (d, _) = daemon("base", "spin", &["--pool", "0"]);
    let image = guest("http-hello");
    let images = image.parent().unwrap().to_path_buf();
    // From the images' directory, with relative paths: the daemon's cwd is not this one.
    let verb = |args: &[&str]| {
        let o = dust()
            .args(args)
            .arg("--socket")
            .arg(&d.api)
            .current_dir(&images)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = verb(&[
        "services",
        "add",
        "web",
        "--image",
        "./http-hello",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "0",
        "--mem",
        "48",
        "--memory-limit",
        "200",
        "--max-concurrent",
        "3",
        "--queue-depth",
        "9",
        "--queue-deadline",
        "1s",
        "--request-deadline",
        "2s",
        "--header-timeout",
        "3s",
        "--idle-timeout",
        "1m 30s",
        "--max-connections",
        "7",
        "--serial",
        "stdout",
        "--cmdline",
        "greeting=hi",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let web = d.json("/v1/services/web");
    let address = web["address"].as_str().unwrap().to_string();
    assert!(!address.ends_with(":0"), "{web}");
    assert!(
        web.get("engine_running").is_none(),
        "an image service: {web}"
    );
    assert_eq!(out, format!("added web on {address}\n"));
    assert_eq!(
        web["image"].as_str().unwrap(),
        summoner::state::Digest::of(&std::fs::read(&image).unwrap()).to_string(),
        "the relative image was read here and uploaded"
    );
    for (field, want) in [
        ("memory_mib", serde_json::json!(48)),
        ("memory_limit_mib", serde_json::json!(200)),
        ("max_concurrent", serde_json::json!(3)),
        ("queue_depth", serde_json::json!(9)),
        ("queue_deadline", serde_json::json!("1s")),
        ("request_deadline", serde_json::json!("2s")),
        ("header_timeout", serde_json::json!("3s")),
        ("idle_timeout", serde_json::json!("1m 30s")),
        ("max_connections", serde_json::json!(7)),
        ("serial", serde_json::json!("stdout")),
        ("cmdline", serde_json::json!("greeting=hi")),
        ("pool_size", serde_json::json!(0)),
    ] {
        assert_eq!(web[field], want, "{field}: {web}");
    }

    let (code, out, _) = verb(&["services", "show", "web"]);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        format!("address           {address}"),
        "listen            127.0.0.1:0".to_string(),
        "memory_mib        48".to_string(),
        "memory_limit_mib  200".to_string(),
        "cmdline           \"greeting=hi\"".to_string(),
        "serial            stdout".to_string(),
        "engine_running    -".to_string(),
        "idle_timeout      1m 30s".to_string(),
        "max_connections   7".to_string(),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in\n{out}");
    }

    // replace is the PUT: the new settings run, the others are back to their defaults.
    let (code, out, err) = verb(&[
        "services",
        "replace",
        "web",
        "--image",
        "http-hello",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "0",
        "--mem",
        "64",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let web = d.json("/v1/services/web");
    assert_eq!(
        out,
        format!("replaced web on {}\n", web["address"].as_str().unwrap())
    );
    assert_eq!(
        (web["memory_mib"].as_u64(), web["max_connections"].as_u64()),
        (Some(64), Some(1024))
    );

    // A missing image is named, and the daemon is not asked.
    let (code, out, err) = verb(&[
        "services",
        "add",
        "nope",
        "--image",
        "no-such-image",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.starts_with("dust: --image no-such-image: "), "{err}");
    assert_eq!(d.call("GET", "/v1/services/nope", None).status, 404);

    // --json: errors, kill and rm answer JSON on stdout.
    let json = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = verb(&all);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?} {err}"));
        (code, v)
    };
    let (code, v) = json(&["services", "show", "nope"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("service_not_found")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
    let (code, v) = json(&["kill", "no-such-vm"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("vm_not_found")),
        "{v}"
    );
    let (code, v) = json(&[
        "services",
        "add",
        "x",
        "--image",
        "missing",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("invalid_argument")),
        "{v}"
    );
    let (code, v) = json(&[
        "services",
        "add",
        "web",
        "--image",
        "http-hello",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (Some(1), Some("already_exists")),
        "{v}"
    );
    let (code, v) = json(&["services", "rm", "web"]);
    assert_eq!((code, v), (Some(0), serde_json::json!({"removed": "web"})));
    let (code, v) = json(&["services", "list"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["services"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn creating_a_snapshot_service_tells_its_steps_with_durations() {
    require_kvm!();
    let (d, _) = daemon("base", "spin", &["--pool", "0"]);
    let add = |verb: &str, json: bool| {
        let mut c = dust();
        c.args(["services", verb, "snap", "--image"])
            .arg(guest("http-hello"))
            .args(["--listen", "127.0.0.1:0", "--pool", "0", "--snapshot"])
            .arg("--socket")
            .arg(&d.api);
        if json {
            c.arg("--json");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{o:?}");
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Text: stdout stays the one line; the steps, with durations, go to stderr (plain
    // lines: not a terminal, so no spinner).
    let (out, err) = add("add", false);
    assert!(out.starts_with("added snap on "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let step = err
        .lines()
        .find(|l| l.starts_with("dust: snap: template "))
        .unwrap_or_else(|| panic!("no template step in {err:?}"));
    assert!(step.contains(" s (") && step.contains("snapshot"), "{step}");
    assert!(!err.contains('\r'), "a spinner on a pipe: {err:?}");

    // JSON: the answer lists the steps (its template now comes from the cache).
    let (out, _) = add("replace", true);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = v["creation"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(steps.len(), 1, "{v}");
    assert_eq!(steps[0]["step"], "template", "{v}");
    assert!(steps[0]["seconds"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(steps[0]["detail"].is_string(), "{v}");
    // A plain GET shows no creation steps.
    assert!(d.json("/v1/services/snap").get("creation").is_none());
    // The daemon's log has each step with its duration.
    let log = d.log.lock().unwrap().join("\n");
    assert!(log.contains("creating the service: template done"), "{log}");
}

#[test]
fn a_template_that_fails_leaves_its_guest_output_in_the_log() {
    require_kvm!();
    let (d, _) = daemon("base", "spin", &["--pool", "0"]);
    let o = dust()
        .args(["services", "add", "boom", "--image"])
        .arg(guest("crash"))
        .args(["--listen", "127.0.0.1:0", "--snapshot", "--socket"])
        .arg(&d.api)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the daemon's log has the guest's last serial output"),
        "{err}"
    );
    // No serial file: the daemon's log has what the guest said before it died.
    let t = Instant::now();
    let line = loop {
        let log = d.log.lock().unwrap();
        let found = log
            .iter()
            .find(|l| l.contains("dust::guest") && l.contains("service=\"boom\""))
            .cloned();
        drop(log);
        if let Some(l) = found {
            break l;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no dust::guest line");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains("crash: triple faulting"), "{line}");
}
