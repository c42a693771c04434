//! Per-service counters and cold-start phase histograms (prometheus-client), kept by the
//! summoner; the control API renders them as Prometheus text.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How a request ended, from the summoner's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Proxied: the guest answered (whatever its status).
    ok,
    /// Refused by admission (503).
    shed,
    /// The guest crashed or exited early (502).
    crash,
    /// Past the request deadline (504).
    timeout,
    /// The summoner could not get a VM (500).
    error,
    /// The client went away first.
    client_gone,
}

/// A phase of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Phase {
    /// Waiting for admission.
    queue,
    /// Getting a built VM shell (0 when one was idle).
    spawn,
    /// Start -> guest ready.
    boot,
    /// vsock CONNECT to the guest.
    connect,
    /// Request sent -> response head received.
    respond,
    /// Time the vCPU spent in KVM_RUN.
    guest,
    /// Accept -> response head.
    total,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabels {
    service: String,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StartLabels {
    service: String,
    /// `boot` or `snapshot`: how the service's VMs start.
    start: String,
}

fn phase_histogram() -> Histogram {
    // 50 us .. ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// All metrics of one summoner.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    running: Family<ServiceLabel, Gauge>,
    idle: Family<ServiceLabel, Gauge>,
    start: Family<StartLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dust");
        let requests = Family::<RequestLabels, Counter>::default();
        let phases = Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            phase_histogram,
        );
        let running = Family::<ServiceLabel, Gauge>::default();
        let idle = Family::<ServiceLabel, Gauge>::default();
        registry.register(
            "requests",
            "Requests by service and outcome",
            requests.clone(),
        );
        registry.register(
            "phase_seconds",
            "Cold-start phases of each request, by service",
            phases.clone(),
        );
        registry.register(
            "running_vms",
            "VMs alive (started, not yet reaped)",
            running.clone(),
        );
        registry.register("idle_workers", "Pre-built idle VM shells", idle.clone());
        let start = Family::<StartLabels, Gauge>::default();
        registry.register(
            "service_start_mode",
            "1 for how each service's VMs start: boot (the image, per VM) or snapshot (restored from a template)",
            start.clone(),
        );
        Self {
            registry,
            requests,
            phases,
            running,
            idle,
            start,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Record how a service's VMs start (`snapshot` or `boot`).
    pub fn set_start_mode(&self, name: &str, snapshot: bool) {
        let mode = |m: &str| StartLabels {
            service: name.to_string(),
            start: m.to_string(),
        };
        self.start
            .get_or_create(&mode("snapshot"))
            .set(i64::from(snapshot));
        self.start
            .get_or_create(&mode("boot"))
            .set(i64::from(!snapshot));
    }

    /// The handle a service records into.
    pub fn service(self: &Arc<Self>, name: &str) -> Arc<ServiceMetrics> {
        Arc::new(ServiceMetrics {
            all: self.clone(),
            name: name.to_string(),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        })
    }
}

/// One service's view of the metrics, plus exact counters the tests and API read.
pub struct ServiceMetrics {
    all: Arc<Metrics>,
    name: String,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl ServiceMetrics {
    /// Count a finished request.
    pub fn request(&self, outcome: Outcome) {
        self.all
            .requests
            .get_or_create(&RequestLabels {
                service: self.name.clone(),
                outcome,
            })
            .inc();
    }

    /// Record one phase's duration.
    pub fn phase(&self, phase: Phase, d: Duration) {
        self.all
            .phases
            .get_or_create(&PhaseLabels {
                service: self.name.clone(),
                phase,
            })
            .observe(d.as_secs_f64());
    }

    /// A VM started.
    pub fn vm_started(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.gauge_running().set(now as i64);
    }

    /// A VM's process was reaped.
    pub fn vm_stopped(&self) {
        let now = self
            .running
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        self.gauge_running().set(now as i64);
    }

    fn gauge_running(&self) -> impl std::ops::Deref<Target = Gauge> + '_ {
        self.all.running.get_or_create(&ServiceLabel {
            service: self.name.clone(),
        })
    }

    /// Set the idle-pool gauge.
    pub fn set_idle(&self, n: usize) {
        self.all
            .idle
            .get_or_create(&ServiceLabel {
                service: self.name.clone(),
            })
            .set(n as i64);
    }

    /// VMs alive now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Most VMs alive at once since the service started.
    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }
}
