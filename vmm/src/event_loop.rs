//! The VM's device event loop: an event-manager thread that handles device and socket fds
//! (virtqueue notifications, vsock Unix sockets), so a vCPU thread never blocks on a socket.
//! It runs from `Vm::start` until teardown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What the loop drives.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Ends the loop when its eventfd is written.
struct Stopper {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for Stopper {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("event loop: cannot watch the stop eventfd: {e:?}");
        }
    }
}

/// A running event loop.
pub struct EventLoop {
    stop: EventFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventLoop {
    /// Register `subscribers` and start the loop thread.
    pub fn start(subscribers: Vec<Subscriber>) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let mut em = EventManager::<Subscriber>::new()
            .map_err(|e| std::io::Error::other(format!("event manager: {e:?}")))?;
        em.add_subscriber(Arc::new(Mutex::new(Stopper {
            evt: stop.try_clone()?,
            stopped: stopped.clone(),
        })));
        for s in subscribers {
            em.add_subscriber(s);
        }
        let thread = std::thread::Builder::new()
            .name("vm-events".into())
            .spawn(move || {
                // Filtered before it handles any guest-controlled data (docs/security.md).
                if let Err(e) = dust_jail::seccomp::apply(dust_jail::seccomp::ThreadKind::Events) {
                    tracing::error!("event loop: {e}");
                    return;
                }
                while !stopped.load(Ordering::SeqCst) {
                    if let Err(e) = em.run() {
                        tracing::error!("event loop: {e:?}");
                        break;
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the loop and wait for its thread.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
