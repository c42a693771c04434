//! TCP mode: one fresh VM per connection; bytes are spliced both ways until either side
//! closes or the request deadline passes. A connection that cannot get a VM is closed.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::metrics::Outcome;
use crate::service::ServiceInner;
use crate::summon::{self, OutcomeGuard};

/// Serve one connection.
pub async fn handle(svc: Arc<ServiceInner>, mut client: TcpStream) {
    let t0 = Instant::now();
    let deadline = t0 + svc.config.request_deadline;
    let mut outcome = OutcomeGuard::new(&svc);
    let mut summoned = match summon::summon(&svc, t0, deadline).await {
        Ok(s) => s,
        Err(f) => {
            tracing::info!(service = %svc.config.name, vm = ?f.vm, "connection closed: {}", f.error);
            outcome.settle(f.error.outcome(), None);
            return;
        }
    };
    summon::record(&svc, &summoned.phases);
    svc.metrics.request_duration(t0.elapsed());
    let splice = tokio::io::copy_bidirectional(&mut client, &mut summoned.stream);
    // A VM that ends (killed, crashed) ends the connection at once: the splice alone would
    // wait for the client to close its side.
    tokio::select! {
        r = tokio::time::timeout_at(deadline.into(), splice) => match r {
            Ok(_) => outcome.settle(Outcome::ok, None),
            Err(_) => outcome.settle(Outcome::timeout, None),
        },
        exit = summoned.vm.ended() => {
            let (name, vm) = (&svc.config.name, summoned.vm.vm_id.clone());
            tracing::info!(service = %name, vm = %vm, "VM ended mid-connection: {exit}");
            outcome.settle(Outcome::crash, None);
            // No HTTP status in TCP mode: 502 is what an HTTP service would have answered.
            if svc.guest_log.open() {
                let output = summoned.vm.output().await;
                svc.guest_log.report(name, &vm, 502, &output);
            }
        }
    }
}
