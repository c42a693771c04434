//! Which families dust exposes, under what names and help texts, in the order a scrape
//! lists them.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{BuildLabels, Metrics};

/// Register `metrics`' families (and `build_info`, which never changes) in `registry`.
pub(super) fn families(registry: &mut Registry, metrics: &Metrics) {
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    registry.register(
        "build_info",
        "Always 1; the version label is the running dust's",
        build,
    );
    registry.register(
        "requests",
        "Requests by service, outcome and HTTP status sent (code)",
        metrics.requests.clone(),
    );
    registry.register(
        "phase_seconds",
        "Cold-start phases of each request a VM served, by service; guest (vCPU time in KVM_RUN) overlaps the others",
        metrics.phases.clone(),
    );
    registry.register(
        "request_duration_seconds",
        "Accept to response head (HTTP) or to the spliced guest connection (TCP) of each request a VM served, by service",
        metrics.durations.clone(),
    );
    registry.register(
        "running_vms",
        "VMs alive (started, not yet reaped)",
        metrics.running.clone(),
    );
    registry.register(
        "idle_workers",
        "Pre-built idle VM shells",
        metrics.idle.clone(),
    );
    registry.register(
        "service_start_mode",
        "1 for how each service's VMs start: boot (the image, per VM) or snapshot (restored from a template)",
        metrics.start.clone(),
    );
    registry.register(
        "shell_build_seconds",
        "Building one VM shell (worker started and jailed, VM built or restored), by service and start (boot or snapshot)",
        metrics.shells.clone(),
    );
    registry.register(
        "pool_waits",
        "Requests that found no idle shell and waited for one to be built, by service",
        metrics.pool_waits.clone(),
    );
}
