//! The JSON bodies of the API's answers (see `docs/api/openapi.yaml`). They deserialize too,
//! so clients (the CLI verbs) can read them with the same types.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use summoner::registry::{VmInfo, VmPhase};
use summoner::{ServiceConfig, ServiceStats};

use crate::control::ServiceStatus;

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always "ok".
    pub status: String,
}

/// `POST /v1/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// Always "draining".
    pub status: String,
    /// False if an earlier signal or request had already started the drain.
    pub started: bool,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// dust's version.
    pub version: String,
    /// API version prefix ("v1").
    pub api: String,
}

/// A service: its config (the fields of a `PUT` body), where it is bound, and counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The config.
    #[serde(flatten)]
    pub config: ServiceConfig,
    /// The bound address (the real port when `listen` has port 0).
    pub address: SocketAddr,
    /// Live counters.
    pub stats: ServiceStats,
    /// What runs a wasm service's handler now: `aot` or `interpreter` (a component runs
    /// on the interpreter whatever `engine` asks for). Absent for an image service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_running: Option<summoner::config::Engine>,
    /// Only in the answer to a creation or replacement: the steps it took (`compile`,
    /// `template`), with what each did and its duration. Absent when there were none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creation: Vec<summoner::progress::Step>,
}

impl From<ServiceStatus> for Service {
    fn from(s: ServiceStatus) -> Self {
        Self {
            engine_running: s.config.wasm_workload().map(|w| w.running_engine()),
            creation: Vec::new(),
            config: s.config,
            address: s.address,
            stats: s.stats,
        }
    }
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    /// Ordered by name.
    pub services: Vec<Service>,
}

/// A live VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// VM id.
    pub id: String,
    /// Its service.
    pub service: String,
    /// `booting`, `serving` or `stopping`.
    pub phase: String,
    /// Milliseconds since it was started.
    pub age_ms: u64,
    /// Worker process id.
    pub pid: u32,
}

impl From<VmInfo> for Vm {
    fn from(v: VmInfo) -> Self {
        let phase = match v.phase {
            VmPhase::Booting => "booting",
            VmPhase::Serving => "serving",
            VmPhase::Stopping => "stopping",
        };
        Self {
            id: v.id,
            service: v.service,
            phase: phase.to_string(),
            age_ms: v.age_ms,
            pid: v.pid,
        }
    }
}

/// `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmList {
    /// Ordered by id.
    pub vms: Vec<Vm>,
}

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// A sentence naming the problem.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_round_trips_through_json() {
        let s = Service {
            config: ServiceConfig::new("hello", "127.0.0.1:0".parse().unwrap(), "/x/img"),
            address: "127.0.0.1:4242".parse().unwrap(),
            stats: ServiceStats {
                running: 1,
                max_running: 2,
                idle: 3,
                waiting: 4,
                connections: 5,
            },
            engine_running: None,
            creation: Vec::new(),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""name":"hello""#), "{text}");
        assert!(text.contains(r#""address":"127.0.0.1:4242""#), "{text}");
        assert!(text.contains(r#""queue_deadline":"5s""#), "{text}");
        let back: Service = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}

/// `POST /v1/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// `sha256:<hex>`: what a service names in `wasm` or `image`.
    pub digest: String,
    /// Bytes stored.
    pub size: u64,
}

/// One stored artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// The services using it, now or as the definition a rollback brings back.
    pub users: Vec<String>,
}

/// `GET /v1/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactList {
    /// By digest.
    pub artifacts: Vec<Artifact>,
}
