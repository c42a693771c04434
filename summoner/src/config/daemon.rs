//! The daemon's own settings, declared once: each field is both a top-level key of the
//! config file (serde) and a flag of `dust serve` (clap) of the same name. A flag given on
//! the command line wins over the file ([`DaemonConfig::over`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::parse::service_duration;

/// The daemon's top-level settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct DaemonConfig {
    /// Directory for per-VM sockets (default: /run/dust as root, else
    /// $XDG_RUNTIME_DIR/dust).
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// Directory for services' serial files, which must be file names in it (default:
    /// /var/log/dust as root, else $XDG_STATE_HOME/dust/log or ~/.local/state/dust/log).
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<PathBuf>,
    /// Serve /healthz, /readyz and /livez here for load balancers (docs/deploy.md; default:
    /// nowhere).
    #[arg(long, value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
    /// After SIGTERM or POST /v1/drain, keep accepting this long while /healthz already
    /// answers 503, so that balancers stop sending first (default 0).
    #[arg(long, value_name = "DURATION", value_parser = service_duration::parse)]
    #[serde(
        default,
        with = "service_duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain_delay: Option<Duration>,
    /// Most worker processes (idle shells and running VMs of all services) at once
    /// (default: as many default-sized VMs as the host's memory holds).
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<usize>,
    /// Where services created through the control API and uploaded artifacts are kept
    /// across restarts (default: /var/lib/dust as root, else $XDG_STATE_HOME/dust or
    /// ~/.local/state/dust; docs/deploy.md).
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
}

impl DaemonConfig {
    /// The config file's top-level keys.
    pub const KEYS: &[&str] = &[
        "run_dir",
        "log_dir",
        "health_listen",
        "drain_delay",
        "max_vms",
        "state_dir",
    ];

    /// These settings (from flags) over `file`'s: each one set here wins.
    pub fn over(&self, file: &Self) -> Self {
        overlay(self, file)
    }
}

/// `[api]` of a config file: where the control API listens; a `dust serve` flag of the
/// same name (`--api-socket`, `--api-tcp`) wins over each key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Control API socket (default: /run/dust/api.sock as root, else
    /// $XDG_RUNTIME_DIR/dust/api.sock).
    #[arg(long = "api-socket", value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Also serve the control API on TCP at this address; every request then needs
    /// `Authorization: Bearer <token>` with the token from $DUST_API_TOKEN, else from
    /// `token_file`.
    // `--api-listen` was the documented name for a while; it keeps working, unlisted.
    #[arg(long = "api-tcp", alias = "api-listen", value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<SocketAddr>,
    /// The file holding the TCP API's token (read at start, surrounding whitespace
    /// trimmed; it must not be readable by every user). `$DUST_API_TOKEN`, if set, wins.
    #[arg(long = "api-token-file", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Largest artifact upload (`POST /v1/artifacts`), MiB (default 64); every other API
    /// body stays at 64 KiB.
    #[arg(long = "api-max-upload-mib", value_name = "MIB")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_upload_mib: Option<usize>,
}

impl ApiConfig {
    /// These settings (from flags) over `file`'s: each one set here wins.
    pub fn over(&self, file: &Self) -> Self {
        overlay(self, file)
    }
}

/// `top` over `bottom`, key by key: every key `top` sets (its unset ones are skipped when
/// serialized) replaces `bottom`'s. One merge for every setting, so adding a setting is
/// adding a field.
fn overlay<T: Serialize + DeserializeOwned + Clone>(top: &T, bottom: &T) -> T {
    let (Ok(serde_json::Value::Object(top_map)), Ok(serde_json::Value::Object(mut merged))) =
        (serde_json::to_value(top), serde_json::to_value(bottom))
    else {
        return top.clone();
    };
    merged.extend(top_map);
    serde_json::from_value(serde_json::Value::Object(merged)).unwrap_or_else(|_| top.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_key_by_key() {
        let file = DaemonConfig {
            run_dir: Some("/file/run".into()),
            log_dir: Some("/file/log".into()),
            drain_delay: Some(Duration::from_secs(3)),
            ..Default::default()
        };
        let flags = DaemonConfig {
            log_dir: Some("/flag/log".into()),
            max_vms: Some(7),
            ..Default::default()
        };
        let both = flags.over(&file);
        assert_eq!(both.run_dir, Some("/file/run".into()));
        assert_eq!(both.log_dir, Some("/flag/log".into()));
        assert_eq!(both.drain_delay, Some(Duration::from_secs(3)));
        assert_eq!(both.max_vms, Some(7));
        let api = ApiConfig {
            tcp: "127.0.0.1:1".parse().ok(),
            ..Default::default()
        }
        .over(&ApiConfig {
            socket: Some("/s".into()),
            tcp: "127.0.0.1:2".parse().ok(),
            token_file: None,
            max_upload_mib: None,
        });
        assert_eq!(api.socket, Some("/s".into()));
        assert_eq!(api.tcp, "127.0.0.1:1".parse().ok());
    }
}
