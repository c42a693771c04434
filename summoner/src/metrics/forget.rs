//! Removing a service's series from the families when the service is removed.

use super::{Metrics, Outcome, Phase, PhaseLabels, RequestLabels, ServiceLabel, StartLabels};

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 6] = [
        Outcome::ok,
        Outcome::shed,
        Outcome::crash,
        Outcome::timeout,
        Outcome::error,
        Outcome::client_gone,
    ];
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 6] = [
        Phase::queue,
        Phase::spawn,
        Phase::boot,
        Phase::connect,
        Phase::respond,
        Phase::guest,
    ];
}

impl Metrics {
    /// Drop every series of service `name` (it was removed): /metrics then no longer
    /// shows it.
    pub fn forget(&self, name: &str) {
        let service = || name.to_string();
        for outcome in Outcome::ALL {
            for code in super::code::all() {
                let labels = RequestLabels {
                    service: service(),
                    outcome,
                    code,
                };
                self.requests.remove(&labels);
            }
        }
        for phase in Phase::ALL {
            self.phases.remove(&PhaseLabels {
                service: service(),
                phase,
            });
        }
        let label = ServiceLabel { service: service() };
        self.durations.remove(&label);
        self.running.remove(&label);
        self.idle.remove(&label);
        self.pool_waits.remove(&label);
        for start in ["boot", "snapshot"].map(String::from) {
            let labels = StartLabels {
                service: service(),
                start,
            };
            self.start.remove(&labels);
            self.shells.remove(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::{Format, Metrics, Outcome, Phase};

    #[test]
    fn a_forgotten_service_leaves_no_series_in_any_family() {
        let m = Arc::new(Metrics::default());
        for (name, snapshot) in [("gone", true), ("kept", false)] {
            m.set_start_mode(name, snapshot);
            let s = m.service(name);
            s.request(Outcome::ok, Some(200));
            s.request(Outcome::crash, Some(502));
            s.request(Outcome::ok, Some(418));
            s.request(Outcome::client_gone, None);
            s.phase(Phase::boot, Duration::from_millis(3));
            s.request_duration(Duration::from_millis(9));
            s.vm_started();
            s.set_idle(2);
            s.shell_built(snapshot, Duration::from_micros(900));
            s.pool_wait();
        }
        let before = m.render(Format::Prometheus);
        for code in ["200", "502", "4xx", "none"] {
            let code = format!("code=\"{code}\"");
            let has = |l: &&str| l.contains("service=\"gone\"") && l.contains(&code);
            assert!(before.lines().any(|l| has(&l)), "{before}");
        }
        m.forget("gone");
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.render(format);
            assert!(!text.contains("service=\"gone\""), "{text}");
            assert!(text.contains("service=\"kept\""), "{text}");
        }
    }
}
