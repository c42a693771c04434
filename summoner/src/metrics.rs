//! Per-service counters and cold-start phase histograms (prometheus-client), kept by the
//! summoner, plus `process_*` metrics and `dust_build_info`; the control API renders them as
//! Prometheus text 0.0.4 or, when the scraper asks for it, OpenMetrics 1.0.0 ([`Format`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub mod code;
mod forget;
mod process;
mod register;

/// How a request ended, from the summoner's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Proxied: the guest answered (any status but 502 and 504).
    ok,
    /// Refused by admission (503).
    shed,
    /// The guest crashed or exited early (502), or answered 502 itself (a wasm trap).
    crash,
    /// Past the request deadline (504), or the guest answered 504 itself (out of fuel).
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
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    outcome: Outcome,
    /// The HTTP status sent to the client ([`code::label`]).
    code: &'static str,
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
struct BuildLabels {
    version: String,
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

/// A text exposition format of `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Prometheus text format 0.0.4, what every scraper reads; the default.
    #[default]
    Prometheus,
    /// OpenMetrics 1.0.0 text, for scrapers that ask for it in `Accept`.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format for the `Accept` header values of a scrape: OpenMetrics when
    /// `application/openmetrics-text` is listed with a q-value above 0 and at least that of
    /// any range that covers plain text (`text/plain`, `text/*`, `*/*`); 0.0.4 otherwise,
    /// including when there is no `Accept` or it names nothing we serve (a scrape is
    /// better answered in the default format than refused).
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
        let (mut open, mut text) = (0.0_f64, 0.0_f64);
        for range in accept.into_iter().flat_map(|v| v.split(',')) {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            // A q-value that does not parse counts as 1, as if it were absent.
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// All metrics of one summoner.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    durations: Family<ServiceLabel, Histogram, fn() -> Histogram>,
    running: Family<ServiceLabel, Gauge>,
    idle: Family<ServiceLabel, Gauge>,
    start: Family<StartLabels, Gauge>,
    shells: Family<StartLabels, Histogram, fn() -> Histogram>,
    pool_waits: Family<ServiceLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        // The root holds the process_* metrics under their conventional names; dust's own
        // live in the `dust` sub-registry.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let mut metrics = Self {
            registry: Registry::default(),
            requests: Family::default(),
            phases: Family::new_with_constructor(phase_histogram),
            durations: Family::new_with_constructor(phase_histogram),
            running: Family::default(),
            idle: Family::default(),
            start: Family::default(),
            shells: Family::new_with_constructor(phase_histogram),
            pool_waits: Family::default(),
        };
        register::families(root.sub_registry_with_prefix("dust"), &metrics);
        metrics.registry = root;
        metrics
    }
}

impl Metrics {
    /// The text exposition in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, nor can any metric here; were one to, the
        // scrape shows what was written before it rather than nothing.
        let _ = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            // This one ends with `# EOF`.
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
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
            retired: AtomicBool::new(false),
        })
    }
}

/// One service's view of the metrics, plus exact counters the tests and API read.
pub struct ServiceMetrics {
    all: Arc<Metrics>,
    name: String,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// Its service stopped: nothing more goes into the families (a late pool update
    /// would bring a removed service's series back, or overwrite its replacement's).
    retired: AtomicBool,
}

impl ServiceMetrics {
    /// Its service stopped: record nothing more.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Count a finished request that sent the client `status` (`None`: no HTTP status).
    pub fn request(&self, outcome: Outcome, status: Option<u16>) {
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        self.all
            .requests
            .get_or_create(&RequestLabels {
                service: self.name.clone(),
                outcome,
                code: code::label(status),
            })
            .inc();
    }

    /// Record one phase's duration.
    pub fn phase(&self, phase: Phase, d: Duration) {
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        self.all
            .phases
            .get_or_create(&PhaseLabels {
                service: self.name.clone(),
                phase,
            })
            .observe(d.as_secs_f64());
    }

    /// Record a served request's end-to-end duration (kept apart from the phases so that
    /// summing the phase histogram never counts a request twice).
    pub fn request_duration(&self, d: Duration) {
        self.all
            .durations
            .get_or_create(&ServiceLabel {
                service: self.name.clone(),
            })
            .observe(d.as_secs_f64());
    }

    /// A VM started.
    pub fn vm_started(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.set_running(now);
    }

    /// A VM's process was reaped.
    pub fn vm_stopped(&self) {
        let now = self
            .running
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        self.set_running(now);
    }

    fn set_running(&self, now: usize) {
        if !self.retired.load(Ordering::SeqCst) {
            let label = ServiceLabel {
                service: self.name.clone(),
            };
            self.all.running.get_or_create(&label).set(now as i64);
        }
    }

    /// Set the idle-pool gauge.
    pub fn set_idle(&self, n: usize) {
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        self.all
            .idle
            .get_or_create(&ServiceLabel {
                service: self.name.clone(),
            })
            .set(n as i64);
    }

    /// A shell was built in `d` (`snapshot`: restored from the service's template).
    pub fn shell_built(&self, snapshot: bool, d: Duration) {
        let start = if snapshot { "snapshot" } else { "boot" };
        self.all
            .shells
            .get_or_create(&StartLabels {
                service: self.name.clone(),
                start: start.to_string(),
            })
            .observe(d.as_secs_f64());
    }

    /// A request found the pool empty and waits for a shell.
    pub fn pool_wait(&self) {
        self.all
            .pool_waits
            .get_or_create(&ServiceLabel {
                service: self.name.clone(),
            })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Metrics with a sample in every dust family.
    fn busy() -> Arc<Metrics> {
        let m = Arc::new(Metrics::default());
        m.set_start_mode("web", false);
        let s = m.service("web");
        s.request(Outcome::ok, Some(200));
        s.request(Outcome::shed, Some(503));
        s.phase(Phase::boot, Duration::from_millis(3));
        s.request_duration(Duration::from_millis(9));
        s.vm_started();
        s.set_idle(2);
        s.shell_built(true, Duration::from_micros(900));
        s.pool_wait();
        m
    }

    /// Check the exposition's structure, returning each family's type by name. Every
    /// sample must belong to the family of the latest `# TYPE` (so TYPE comes before the
    /// samples and families are not interleaved), with the sample names `format` allows
    /// for its type; with `help`, every TYPE must follow a HELP of the same name.
    fn families(text: &str, format: Format) -> Vec<(String, String)> {
        let mut families: Vec<(String, String)> = Vec::new();
        let mut help: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                help = Some(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(help.as_deref(), Some(name), "TYPE without HELP: {line}");
                assert!(
                    families.iter().all(|(n, _)| n != name),
                    "family {name} twice:\n{text}"
                );
                families.push((name.to_string(), kind.to_string()));
            } else if line == "# EOF" {
                assert_eq!(format, Format::OpenMetrics, "# EOF in 0.0.4:\n{text}");
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line:?}");
                let sample = line.split(['{', ' ']).next().unwrap();
                let (family, kind) = families
                    .last()
                    .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
                let suffix = sample.strip_prefix(family.as_str()).unwrap_or_else(|| {
                    panic!("sample {sample} is not of the latest family {family}:\n{text}")
                });
                let allowed: &[&str] = match (kind.as_str(), format) {
                    ("counter", Format::Prometheus) => &[""],
                    ("counter", Format::OpenMetrics) => &["_total"],
                    ("gauge", _) => &[""],
                    ("histogram", _) => &["_bucket", "_sum", "_count"],
                    (k, _) => panic!("unexpected type {k} in {format:?}"),
                };
                assert!(
                    allowed.contains(&suffix),
                    "{kind} sample {sample} in {format:?}:\n{text}"
                );
            }
        }
        families
    }

    fn kind<'a>(families: &'a [(String, String)], name: &str) -> &'a str {
        families
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
            .unwrap_or_else(|| panic!("no family {name} in {families:?}"))
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_has_no_eof() {
        let text = busy().render(Format::Prometheus);
        let f = families(&text, Format::Prometheus);
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(kind(&f, "dust_requests_total"), "counter");
        assert_eq!(kind(&f, "process_cpu_seconds_total"), "counter");
        assert!(
            f.iter()
                .all(|(n, k)| k != "counter" || n.ends_with("_total")),
            "{f:?}"
        );
        assert!(
            text.contains("dust_requests_total{service=\"web\",outcome=\"shed\",code=\"503\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = busy().render(Format::OpenMetrics);
        let f = families(&text, Format::OpenMetrics);
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert_eq!(kind(&f, "dust_requests"), "counter");
        assert_eq!(kind(&f, "process_cpu_seconds"), "counter");
        assert!(
            text.contains("dust_requests_total{service=\"web\",outcome=\"ok\",code=\"200\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn both_formats_carry_the_same_families() {
        let m = busy();
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.render(format);
            let f = families(&text, format);
            let counter = |n: &str| match format {
                Format::Prometheus => format!("{n}_total"),
                Format::OpenMetrics => n.to_string(),
            };
            for (name, want) in [
                (counter("dust_requests"), "counter"),
                ("dust_phase_seconds".into(), "histogram"),
                ("dust_request_duration_seconds".into(), "histogram"),
                ("dust_running_vms".into(), "gauge"),
                ("dust_idle_workers".into(), "gauge"),
                ("dust_shell_build_seconds".into(), "histogram"),
                (counter("dust_pool_waits"), "counter"),
                ("dust_service_start_mode".into(), "gauge"),
                ("dust_build_info".into(), "gauge"),
                (counter("process_cpu_seconds"), "counter"),
                ("process_resident_memory_bytes".into(), "gauge"),
                ("process_virtual_memory_bytes".into(), "gauge"),
                ("process_open_fds".into(), "gauge"),
                ("process_max_fds".into(), "gauge"),
                ("process_start_time_seconds".into(), "gauge"),
                ("process_threads".into(), "gauge"),
            ] {
                assert_eq!(kind(&f, &name), want, "{name} in {format:?}");
            }
            let build = format!(
                "dust_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            );
            assert!(text.contains(&build), "{text}");
            assert!(
                text.contains("dust_request_duration_seconds_count{service=\"web\"} 1\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_phase_histogram_has_no_total_phase() {
        // Summing the phase histogram by service must not count a request twice: the
        // end-to-end duration is its own family.
        let text = busy().render(Format::Prometheus);
        assert!(!text.contains("phase=\"total\""), "{text}");
        assert!(text.contains("phase=\"boot\""), "{text}");
    }

    #[test]
    fn accept_picks_openmetrics_only_when_asked_and_preferred() {
        use Format::*;
        let cases: &[(&[&str], Format)] = &[
            (&[], Prometheus),
            (&[""], Prometheus),
            (&["text/plain"], Prometheus),
            (&["*/*"], Prometheus),
            (&["application/json"], Prometheus),
            (&["application/openmetrics-text"], OpenMetrics),
            (&["Application/OpenMetrics-Text; version=1.0.0"], OpenMetrics),
            // What Prometheus 2.x sends.
            (
                &["application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"],
                OpenMetrics,
            ),
            // A scraper configured for the classic format.
            (
                &["text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"],
                Prometheus,
            ),
            (&["application/openmetrics-text;q=0"], Prometheus),
            (&["text/plain;q=0.2", "application/openmetrics-text;q=0.3"], OpenMetrics),
            (&["application/openmetrics-text ; q=0.9 , */*;q=0.9"], OpenMetrics),
        ];
        for (accept, want) in cases {
            assert_eq!(
                Format::negotiate(accept.iter().copied()),
                *want,
                "{accept:?}"
            );
        }
    }
}
