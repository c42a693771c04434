//! [`Control`] for the real [`Summoner`]. It lives here because the summoner crate cannot
//! depend on the API crate that defines the trait.

use std::net::SocketAddr;
use std::time::Duration;

use summoner::metrics::Format;
use summoner::registry::VmInfo;
use summoner::{AddError, ServiceConfig, ServiceStats, Summoner};

use crate::control::{Control, ServiceStatus};

impl Control for Summoner {
    fn services(&self) -> Vec<ServiceStatus> {
        let mut all: Vec<ServiceStatus> = self
            .list()
            .into_iter()
            .map(|(config, address)| {
                let stats = self.stats(&config.name).unwrap_or(ServiceStats {
                    running: 0,
                    max_running: 0,
                    idle: 0,
                    waiting: 0,
                    connections: 0,
                });
                ServiceStatus {
                    config,
                    address,
                    stats,
                }
            })
            .collect();
        all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        all
    }

    fn service(&self, name: &str) -> Option<ServiceStatus> {
        let (config, address) = self.list().into_iter().find(|(c, _)| c.name == name)?;
        let stats = self.stats(name)?;
        Some(ServiceStatus {
            config,
            address,
            stats,
        })
    }

    fn check_service(
        &self,
        config: &ServiceConfig,
    ) -> Result<(), summoner::config::ServiceConfigError> {
        self.check(config)
    }

    async fn add_service(&self, config: ServiceConfig) -> Result<SocketAddr, AddError> {
        self.add(config).await
    }

    fn remove_service(
        &self,
        name: &str,
        grace: Duration,
    ) -> impl std::future::Future<Output = bool> + Send {
        self.remove(name, grace)
    }

    fn state(&self) -> Option<&std::sync::Arc<summoner::state::State>> {
        Summoner::state(self)
    }

    fn creation(&self, name: &str) -> Vec<summoner::progress::Step> {
        Summoner::creation(self, name)
    }

    fn forget_metrics(&self, name: &str) {
        Summoner::forget_metrics(self, name)
    }

    fn vms(&self) -> Vec<VmInfo> {
        Summoner::vms(self)
    }

    fn vm(&self, id: &str) -> Option<VmInfo> {
        Summoner::vm(self, id)
    }

    fn kill_vm(&self, id: &str) -> bool {
        Summoner::kill_vm(self, id)
    }

    fn metrics_text(&self, format: Format) -> String {
        Summoner::metrics_text(self, format)
    }

    fn drain(&self) -> bool {
        Summoner::drain(self)
    }
}
