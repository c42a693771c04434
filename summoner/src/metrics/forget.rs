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
            let labels = RequestLabels {
                service: service(),
                outcome,
            };
            self.requests.remove(&labels);
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
        for start in ["boot", "snapshot"].map(String::from) {
            self.start.remove(&StartLabels {
                service: service(),
                start,
            });
        }
    }
}
