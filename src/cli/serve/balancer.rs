//! What `dust serve` does for the load balancer in front of it: adopt the sockets systemd
//! passes (socket activation), serve `/healthz` on `--health-listen`, and drain in the order
//! a balancer can follow. On SIGTERM, SIGINT or `POST /v1/drain`: health answers 503 at once;
//! the services keep accepting for the drain delay, so the balancer's health checks see the
//! 503 and it stops sending; then the caller closes the listeners and lets in-flight requests
//! finish within the grace period. A signal during the delay cuts it short.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use summoner::Summoner;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Adopt the listening sockets of systemd socket activation (`LISTEN_FDS`). Call before the
/// runtime starts any thread: it clears the variables from the environment.
pub fn adopt_sockets() -> Result<(), String> {
    let (adopted, skipped) =
        summoner::listen::adopt_from_env().map_err(|e| format!("socket activation: {e}"))?;
    for (name, addr) in adopted {
        let name = name.as_deref().unwrap_or("(unnamed)");
        eprintln!("dust: inherited socket {name} on {addr}");
    }
    for e in skipped {
        eprintln!("dust: socket activation: {e}; ignored");
    }
    Ok(())
}

/// Warn about inherited sockets no service took: connections to them would wait forever.
pub fn warn_unclaimed() {
    for (name, addr) in summoner::listen::unclaimed() {
        let name = name.as_deref().unwrap_or("(unnamed)");
        eprintln!(
            "dust: warning: inherited socket {name} on {addr} matches no service \
             (name a service after its FileDescriptorName= or listen on its address)"
        );
    }
}

/// The running health listener.
pub struct Health {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Health {
    /// Serve `/healthz` on `addr` (an inherited socket named `health` or bound to `addr`,
    /// else a fresh bind).
    pub fn start(addr: SocketAddr, summoner: Arc<Summoner>) -> Result<(Self, SocketAddr), String> {
        let err = |e: std::io::Error| format!("health endpoint on {addr}: {e}");
        let (std_listener, _) = summoner::listen::take_or_bind("health", addr).map_err(err)?;
        std_listener.set_nonblocking(true).map_err(err)?;
        let bound = std_listener.local_addr().map_err(err)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(err)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(summoner::health::serve(listener, summoner, async move {
            let _ = stopped.await;
        }));
        Ok((Self { stop, task }, bound))
    }

    /// Close it (after the services: balancers see 503, not a refusal, until the end).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn signals() -> Option<(Signal, Signal)> {
    Some((
        signal(SignalKind::terminate()).ok()?,
        signal(SignalKind::interrupt()).ok()?,
    ))
}

/// Wait for SIGTERM, SIGINT or a drain request; start draining (health 503) and keep the
/// services accepting for `delay`. Returns when the listeners should close.
pub async fn wait_then_drain(summoner: &Summoner, delay: Duration) {
    let Some((mut term, mut int)) = signals() else {
        eprintln!("dust: cannot install signal handlers; stop me with POST /v1/drain");
        summoner.drain_started().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        () = summoner.drain_started() => {}
    }
    summoner.drain();
    if delay.is_zero() {
        return;
    }
    let shown = humantime::format_duration(delay);
    eprintln!("dust: draining: health answers 503, still accepting for {shown}");
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = term.recv() => eprintln!("dust: signal during the drain delay: cut short"),
        _ = int.recv() => eprintln!("dust: signal during the drain delay: cut short"),
    }
}
