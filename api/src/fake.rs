//! An in-memory [`Control`] for the router's unit tests. Services really bind their TCP
//! address (so "port in use" is real); VMs are a fixed list.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use summoner::metrics::Format;
use summoner::registry::{VmInfo, VmPhase};
use summoner::{AddError, ServiceConfig, ServiceStats, StartError};

use crate::control::{Control, ServiceStatus};

#[derive(Default)]
pub struct Fake {
    services: Mutex<BTreeMap<String, (ServiceConfig, TcpListener)>>,
    vms: Mutex<BTreeMap<String, VmInfo>>,
    /// What happened, in order: "add NAME ADDR", "remove NAME", "kill ID".
    pub log: Mutex<Vec<String>>,
    /// Make the next add fail as if its port were taken.
    pub fail_next_add: AtomicBool,
    /// Set by the first drain.
    pub draining: AtomicBool,
    /// If set, a removal waits here after the service is gone (a drain in progress).
    pub drain_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl Fake {
    pub fn with_vm(id: &str, service: &str) -> Self {
        let f = Self::default();
        f.vms.lock().unwrap().insert(
            id.into(),
            VmInfo {
                id: id.into(),
                service: service.into(),
                phase: VmPhase::Serving,
                age_ms: 12,
                pid: 4242,
            },
        );
        f
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn config(&self, name: &str) -> Option<ServiceConfig> {
        self.services
            .lock()
            .unwrap()
            .get(name)
            .map(|(c, _)| c.clone())
    }
}

fn stats() -> ServiceStats {
    ServiceStats {
        running: 1,
        max_running: 3,
        idle: 2,
        waiting: 0,
        connections: 0,
    }
}

impl Control for Fake {
    fn services(&self) -> Vec<ServiceStatus> {
        self.services
            .lock()
            .unwrap()
            .values()
            .map(|(config, l)| ServiceStatus {
                config: config.clone(),
                address: l.local_addr().unwrap(),
                stats: stats(),
            })
            .collect()
    }

    async fn add_service(&self, config: ServiceConfig) -> Result<SocketAddr, AddError> {
        let mut services = self.services.lock().unwrap();
        if services.contains_key(&config.name) {
            return Err(AddError::Duplicate(config.name));
        }
        let bound = if self.fail_next_add.swap(false, Ordering::SeqCst) {
            Err(std::io::Error::from(std::io::ErrorKind::AddrInUse))
        } else {
            TcpListener::bind(config.listen)
        };
        let listener = bound.map_err(|source| StartError::Bind {
            name: config.name.clone(),
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().unwrap();
        self.log
            .lock()
            .unwrap()
            .push(format!("add {} {}", config.name, config.listen));
        services.insert(config.name.clone(), (config, listener));
        Ok(addr)
    }

    async fn remove_service(&self, name: &str, _grace: Duration) -> bool {
        let gone = self.services.lock().unwrap().remove(name).is_some();
        if gone {
            self.log.lock().unwrap().push(format!("remove {name}"));
        }
        let gate = self.drain_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            let _ = gate.acquire().await;
        }
        gone
    }

    fn vms(&self) -> Vec<VmInfo> {
        self.vms.lock().unwrap().values().cloned().collect()
    }

    fn kill_vm(&self, id: &str) -> bool {
        let gone = self.vms.lock().unwrap().remove(id).is_some();
        if gone {
            self.log.lock().unwrap().push(format!("kill {id}"));
        }
        gone
    }

    fn metrics_text(&self, format: Format) -> String {
        // Which format was asked for shows in the body: the router's negotiation is tested.
        let text = "# HELP dust_running_vms VMs alive\n# TYPE dust_running_vms gauge\n";
        match format {
            Format::Prometheus => text.into(),
            Format::OpenMetrics => format!("{text}# EOF\n"),
        }
    }

    fn drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        self.log.lock().unwrap().push("drain".into());
        first
    }
}
