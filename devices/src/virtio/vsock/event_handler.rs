//! The vsock device as an event-manager subscriber. It watches the three queue eventfds, a
//! private kick eventfd (activation, reset), the listening socket, every host client and every
//! connection's stream (EPOLLIN while data may flow to the guest, EPOLLOUT only while guest
//! data waits for the host). All sockets are non-blocking; nothing here ever blocks.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, warn};

use super::device::Vsock;
use super::VsockError;

impl Vsock {
    fn register(&self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        for evt in &self.queue_evts {
            ops.add(Events::new(evt, EventSet::IN))?;
        }
        ops.add(Events::new(&self.kick_evt, EventSet::IN))?;
        ops.add(Events::new(self.muxer.listener(), EventSet::IN))
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.register(ops) {
            // Without its events the device cannot work: treat it like a device failure.
            let err = VsockError::EventFd(std::io::Error::other(e.to_string()));
            warn!("virtio-vsock: cannot register with the event manager: {e}");
            self.fail(&err);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let own = self
            .queue_evts
            .iter()
            .chain(std::iter::once(&self.kick_evt))
            .find(|evt| evt.as_raw_fd() == fd);
        if let Some(evt) = own {
            // Drain the counter: epoll is level-triggered. Queue kicks that arrive before
            // activation need no work of their own.
            if let Err(e) = evt.read() {
                debug!("virtio-vsock: spurious eventfd wake-up: {e}");
            }
        } else {
            self.muxer.handle_event(fd, events.event_set(), ops);
        }
        self.process_queues();
        self.muxer.sync(ops);
    }
}
