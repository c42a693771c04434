//! The seam between HTTP and whatever runs the services: the API asks a [`Control`] and
//! turns its answers into JSON and status codes. The summoner implements it
//! ([`crate::summoner_impl`]); the unit tests use an in-memory fake.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use summoner::config::ServiceConfigError;
use summoner::metrics::Format;
use summoner::registry::VmInfo;
use summoner::{AddError, ServiceConfig, ServiceStats};

/// One running service as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    /// Its config, as given.
    pub config: ServiceConfig,
    /// The address it is bound to (differs from `config.listen` when that has port 0).
    pub address: SocketAddr,
    /// Live counters.
    pub stats: ServiceStats,
}

/// What the control API needs from the daemon. Every method is cheap except
/// [`Control::remove_service`], which drains.
///
/// Validation (through [`Control::check_service`]) and the order of a live replacement are
/// the API's job; an implementation only checks, adds, removes and reports.
pub trait Control: Send + Sync + 'static {
    /// Whether `config` could be added, short of binding and booting: by default
    /// [`ServiceConfig::validate`]; the summoner also checks where its serial file goes.
    fn check_service(&self, config: &ServiceConfig) -> Result<(), ServiceConfigError> {
        config.validate()
    }

    /// The daemon's state directory, where API changes are made durable; none by default
    /// (changes then last until the daemon stops).
    fn state(&self) -> Option<&std::sync::Arc<summoner::state::State>> {
        None
    }

    /// Every service, ordered by name.
    fn services(&self) -> Vec<ServiceStatus>;

    /// One service by name.
    fn service(&self, name: &str) -> Option<ServiceStatus> {
        self.services().into_iter().find(|s| s.config.name == name)
    }

    /// Bind and start a service; returns the bound address. Fails with
    /// [`AddError::Duplicate`] if the name is taken and with
    /// [`summoner::StartError::Bind`] if the address cannot be bound.
    /// In snapshot mode this first boots and saves the service's template VM.
    fn add_service(
        &self,
        config: ServiceConfig,
    ) -> impl Future<Output = Result<SocketAddr, AddError>> + Send;

    /// Stop accepting on the service's port (closed when this returns), let in-flight
    /// requests finish within `grace`, kill the rest. False if there was no such service.
    fn remove_service(&self, name: &str, grace: Duration) -> impl Future<Output = bool> + Send;

    /// The steps the creation of service `name` took (compile, template), with their
    /// durations; by default none.
    fn creation(&self, name: &str) -> Vec<summoner::progress::Step> {
        let _ = name;
        Vec::new()
    }

    /// Drop the metric series of a service that was removed (not replaced); by default
    /// nothing.
    fn forget_metrics(&self, name: &str) {
        let _ = name;
    }

    /// Live VMs.
    fn vms(&self) -> Vec<VmInfo>;

    /// One live VM.
    fn vm(&self, id: &str) -> Option<VmInfo> {
        self.vms().into_iter().find(|v| v.id == id)
    }

    /// Kill a VM (its client gets 502); false if there is no such VM.
    fn kill_vm(&self, id: &str) -> bool;

    /// The daemon's metrics in `format` (the router picks it from `Accept`).
    fn metrics_text(&self, format: Format) -> String;

    /// Start draining the whole daemon, as SIGTERM does: `/healthz` turns 503 at once, the
    /// daemon stops after its drain delay and grace period. False if it was already draining.
    fn drain(&self) -> bool;
}
