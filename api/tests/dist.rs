//! The files in dist/ stay usable: the example config parses as the daemon reads it, and
//! the systemd unit keeps the settings KVM and the daemon depend on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support as host;

use std::collections::BTreeMap;

use summoner::{FileConfig, Mode};

fn dist(name: &str) -> String {
    let path = format!("{}/../dist/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn example_config_parses() {
    let file = FileConfig::parse(&dist("dust.toml")).unwrap();
    assert_eq!(file.services.len(), 1);
    let s = &file.services[0];
    assert_eq!(s.name, "hello");
    assert_eq!(s.mode, Mode::Http);
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    // Everything but the image (not installed here) validates.
    let mut s = s.clone();
    s.workload = summoner::config::Workload::Image(host::tiny_elf());
    s.validate().unwrap();
}

/// `Key=Value` lines of the [Service] section (last one wins, as systemd reads them).
fn service_section() -> BTreeMap<String, String> {
    let text = dist("dust.service");
    let mut section = String::new();
    let mut keys = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[Service]" && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                keys.insert(k.to_string(), v.to_string());
            }
        }
    }
    keys
}

#[test]
fn unit_keeps_what_kvm_and_the_daemon_need() {
    let s = service_section();
    let get = |k: &str| s.get(k).map(String::as_str);
    assert_eq!(get("Type"), Some("notify"));
    assert_eq!(get("WatchdogSec"), Some("30s"));
    assert_eq!(
        get("ExecStart"),
        Some("/usr/local/bin/dust serve --config /etc/dust/dust.toml")
    );
    assert_eq!(get("DevicePolicy"), Some("closed"));
    assert_eq!(get("DeviceAllow"), Some("/dev/kvm rw"));
    // Exactly what jailing the workers needs (docs/security.md); they drop all of it.
    let mut caps: Vec<&str> = get("CapabilityBoundingSet")
        .unwrap()
        .split_whitespace()
        .collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_ADMIN",
            "CAP_SYS_CHROOT"
        ]
    );
    assert_eq!(get("AmbientCapabilities"), Some(""));
    assert_eq!(get("RestrictNamespaces"), Some("mnt pid net ipc uts"));
    assert_eq!(get("KillMode"), Some("mixed"));
    assert_eq!(get("RuntimeDirectory"), Some("dust"));
    // PrivateDevices would hide /dev/kvm.
    assert_ne!(get("PrivateDevices"), Some("yes"));
    assert_ne!(get("MemoryDenyWriteExecute"), Some("yes"));
    // Longer than the daemon's default 10 s grace.
    let stop = get("TimeoutStopSec").unwrap();
    let secs: u64 = stop.trim_end_matches('s').parse().unwrap();
    assert!(secs > 10, "TimeoutStopSec={stop}");
}

/// `systemd-analyze ARGS`, or None where it is not installed (a failure under CI=true).
fn systemd_analyze(args: &[&str]) -> Option<std::process::Output> {
    match std::process::Command::new("systemd-analyze")
        .args(args)
        .output()
    {
        Ok(o) => Some(o),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("systemd-analyze is required (scripts/install-deps installs systemd)")
        }
        Err(_) => {
            eprintln!("*** SKIPPED: systemd-analyze not installed ***");
            None
        }
    }
}

/// The unit's exposure score (`systemd-analyze security`, 3.7 when this was written; 4.0
/// before the hardening of docs/security.md) may not get worse.
#[test]
fn unit_security_score_does_not_regress() {
    let unit = format!("{}/../dist/dust.service", env!("CARGO_MANIFEST_DIR"));
    // --threshold is in tenths: exits non-zero above 3.7.
    let Some(o) = systemd_analyze(&["security", "--offline=true", "--threshold=37", &unit]) else {
        return;
    };
    let out = String::from_utf8_lossy(&o.stdout);
    let score = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for dust.service: ").nth(1))
        .unwrap_or_else(|| panic!("no score in: {out}"));
    assert!(o.status.success(), "exposure {score} is above 3.7");
}

/// Every system call the unit denies, `dust serve`'s own filter denies too: the daemon's
/// tests run under that filter, so the unit cannot take away a call they exercise.
#[test]
fn unit_denies_nothing_the_daemon_filter_allows() {
    let Some(o) = systemd_analyze(&["syscall-filter", "--no-pager"]) else {
        return;
    };
    assert!(o.status.success());
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut group = String::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.starts_with('@') {
            group = line.trim().to_string();
        } else if let Some(item) = line.strip_prefix("    ") {
            if !item.starts_with('#') && !group.is_empty() {
                groups
                    .entry(group.clone())
                    .or_default()
                    .push(item.to_string());
            }
        }
    }
    fn expand(groups: &BTreeMap<String, Vec<String>>, item: &str, out: &mut Vec<String>) {
        match groups.get(item) {
            Some(members) => members.iter().for_each(|m| expand(groups, m, out)),
            None if item.starts_with('@') => panic!("unknown syscall group {item}"),
            None => out.push(item.to_string()),
        }
    }
    // SystemCallFilter= lines: the first allows (plus @default, which systemd always
    // allows), each `~` line takes back.
    let text = dist("dust.service");
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .collect();
    assert!(!lines.is_empty() && !lines[0].starts_with('~'), "{lines:?}");
    let mut allowed = Vec::new();
    expand(&groups, "@default", &mut allowed);
    let mut taken_back = Vec::new();
    for line in &lines {
        let (list, words) = match line.strip_prefix('~') {
            Some(rest) => (&mut taken_back, rest),
            None => (&mut allowed, *line),
        };
        for w in words.split_whitespace() {
            expand(&groups, w, list);
        }
    }
    let allowed: std::collections::BTreeSet<String> = allowed
        .into_iter()
        .filter(|s| !taken_back.contains(s))
        .collect();
    // The calls seccompiler knows on x86_64: the ones the daemon's filter can name.
    let table = std::fs::read_to_string(format!(
        "{}/../jail/src/seccomp/syscalls_x86_64.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let known: Vec<&str> = table
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/../jail/src/seccomp/allowlist.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let daemon = &json["daemon"];
    assert_eq!(daemon["mismatch_action"], "allow", "a denylist");
    let denied_by_daemon: Vec<&str> = daemon["filter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["syscall"].as_str().unwrap())
        .collect();
    let only_unit: Vec<&str> = known
        .iter()
        .filter(|n| !allowed.contains(**n) && !denied_by_daemon.contains(n))
        .copied()
        .collect();
    assert!(
        only_unit.is_empty(),
        "the unit denies, dust serve allows: {only_unit:?}"
    );
    // The jail's calls stay allowed.
    for call in [
        "mount",
        "pivot_root",
        "unshare",
        "setresuid",
        "capset",
        "seccomp",
        "ioctl",
    ] {
        assert!(allowed.contains(call), "{call}");
    }
    let get = |k: &str| service_section().get(k).cloned();
    assert_eq!(get("SystemCallErrorNumber").as_deref(), Some("EPERM"));
}
