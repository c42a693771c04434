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
            outcome.settle(f.error.outcome());
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
            Ok(_) => outcome.settle(Outcome::ok),
            Err(_) => outcome.settle(Outcome::timeout),
        },
        exit = summoned.vm.ended() => {
            tracing::info!(service = %svc.config.name, vm = %summoned.vm.vm_id, "VM ended mid-connection: {exit}");
            outcome.settle(Outcome::crash);
        }
    }
}
