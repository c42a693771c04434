//! The files in dist/ stay usable: the example config parses as the daemon reads it, and
//! the systemd unit keeps the settings KVM and the daemon depend on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/common/host.rs"]
mod host;

use std::collections::BTreeMap;

use summoner::{FileConfig, Mode};

fn dist(name: &str) -> String {
    let path = format!("{}/../dist/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn example_config_parses() {
    let file: FileConfig = toml::from_str(&dist("dust.toml")).unwrap();
    assert_eq!(file.services.len(), 1);
    let s = &file.services[0];
    assert_eq!(s.name, "hello");
    assert_eq!(s.mode, Mode::Http);
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    // Everything but the image (not installed here) validates.
    let mut s = s.clone();
    s.image = host::tiny_elf();
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
            "CAP_SYS_ADMIN"
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
