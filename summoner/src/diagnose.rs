//! Why a request failed, in the daemon's log with default settings: when a request ends in
//! a 5xx (a wasm trap, out of fuel, a guest that crashed or did not answer, the deadline),
//! the last bytes the guest wrote on its serial console (its runtime's reason, a wasm
//! handler's stderr) are logged with the service and VM id, whether or not the service has
//! a serial file. The worker keeps those bytes in a bounded buffer
//! (`devices::legacy::TAIL_BYTES`); the log lines are rate-limited per service, so a
//! failing service cannot flood the log either. A snapshot template that fails before it is
//! saved has its output logged the same way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmm::worker::protocol::Output;

/// Reports logged per service per [`WINDOW`]; the rest are counted and the count logged
/// with the next one that passes.
pub const PER_WINDOW: u32 = 10;
/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(60);

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// One service's guest-output reports.
pub struct GuestLog {
    window: Mutex<Window>,
}

impl Default for GuestLog {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }
}

impl GuestLog {
    /// Whether a report made now would be logged; one that would not is counted as
    /// suppressed. Ask before fetching a guest's output: that is a round trip to its worker,
    /// on the failing request's path, not worth making for a report the limit drops (a
    /// flood of failing requests would otherwise pay it on every one).
    pub fn open(&self) -> bool {
        self.window(Instant::now(), false).is_some()
    }

    /// Whether a report may be logged now; if so, how many were suppressed before it.
    fn admit(&self, now: Instant) -> Option<u64> {
        self.window(now, true)
    }

    /// The current window: `None` (and one more suppressed) when it is full; else the
    /// count suppressed so far, taken and the report counted when `take`.
    fn window(&self, now: Instant, take: bool) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(w.start) >= WINDOW {
            w.start = now;
            w.logged = 0;
        }
        if w.logged >= PER_WINDOW {
            w.suppressed += 1;
            return None;
        }
        if !take {
            return Some(w.suppressed);
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }

    /// Log what VM `vm` of `service` wrote last, the request having ended in `status`.
    /// Nothing is logged for a guest that wrote nothing.
    pub fn report(&self, service: &str, vm: &str, status: u16, output: &Output) {
        if output.is_empty() {
            return;
        }
        let Some(suppressed) = self.admit(Instant::now()) else {
            return;
        };
        // Debug formatting escapes newlines and control characters: the guest's bytes
        // cannot forge log lines.
        tracing::warn!(
            target: "dust::guest",
            service,
            vm,
            status,
            dropped = output.dropped,
            suppressed,
            output = ?output.text,
            "request failed; the guest's last serial output"
        );
    }
}

/// Log what the template VM `vm` of `service` wrote last, its creation having failed (a
/// warm-up that trapped, a guest that panicked before ready). Creations are rare: no limit.
pub fn template_failed(service: &str, vm: &str, output: &Output) {
    if output.is_empty() {
        return;
    }
    tracing::warn!(
        target: "dust::guest",
        service,
        vm,
        dropped = output.dropped,
        output = ?output.text,
        "service creation failed; the template guest's last serial output"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_limited_per_window_and_the_suppressed_counted() {
        let log = GuestLog::default();
        let t0 = Instant::now();
        for _ in 0..PER_WINDOW {
            assert_eq!(log.admit(t0), Some(0));
        }
        assert_eq!(log.admit(t0), None);
        assert_eq!(log.admit(t0 + WINDOW / 2), None);
        assert_eq!(log.admit(t0 + WINDOW), Some(2));
        assert_eq!(log.admit(t0 + WINDOW), Some(0));
    }

    #[test]
    fn a_full_window_is_closed_before_any_output_is_fetched() {
        let log = GuestLog::default();
        assert!(
            log.open(),
            "an empty window is open, and asking takes no slot"
        );
        for _ in 0..PER_WINDOW {
            assert!(log.admit(Instant::now()).is_some());
        }
        assert!(!log.open());
        // The skipped report is counted with the suppressed ones.
        assert_eq!(log.window.lock().unwrap().suppressed, 1);
    }
}
