//! The default log set-up (level `warn`, no `DUST_LOG`/`RUST_LOG`) without its start-up
//! cost: [`Lazy`] stands in as the global subscriber and builds the real one, `tracing`'s
//! `fmt` subscriber, on the first warning or error. Most runs log nothing, and building it
//! (a span registry of sharded slabs, its pages touched) is on `dust run`'s spawn ->
//! greeting path. What is printed, and how, is what the `fmt` subscriber prints.

use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};

/// Enables `max` and below; everything else goes to the subscriber `build` returns, made
/// on first use.
pub struct Lazy {
    max: LevelFilter,
    build: fn() -> Dispatch,
    inner: OnceLock<Dispatch>,
}

impl Lazy {
    pub fn new(max: LevelFilter, build: fn() -> Dispatch) -> Self {
        Lazy {
            max,
            build,
            inner: OnceLock::new(),
        }
    }

    fn inner(&self) -> &Dispatch {
        self.inner.get_or_init(self.build)
    }

    /// Whether the real subscriber was built (for the tests).
    #[cfg(test)]
    fn built(&self) -> bool {
        self.inner.get().is_some()
    }
}

impl Subscriber for Lazy {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    // Spans and events reach a subscriber only when enabled: each of these builds the real
    // one if it is not built yet, and a span id seen here always came from it.
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner().new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner().record(span, values)
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner().record_follows_from(span, follows)
    }

    fn event(&self, event: &Event<'_>) {
        self.inner().event(event)
    }

    fn enter(&self, span: &Id) {
        self.inner().enter(span)
    }

    fn exit(&self, span: &Id) {
        self.inner().exit(span)
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner().clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner().try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        match self.inner.get() {
            Some(d) => d.current_span(),
            None => tracing_core::span::Current::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static EVENTS: AtomicUsize = AtomicUsize::new(0);

    /// Counts events: the stand-in for the `fmt` subscriber.
    struct Count;

    impl Subscriber for Count {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {
            EVENTS.fetch_add(1, Ordering::SeqCst);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn built_on_the_first_warning_and_every_warning_reaches_it() {
        let lazy = std::sync::Arc::new(Lazy::new(LevelFilter::WARN, || Dispatch::new(Count)));
        let dispatch = Dispatch::from(lazy.clone());
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("not shown");
            tracing::debug!("not shown");
            assert!(!lazy.built(), "built for an info or debug event");
            assert_eq!(EVENTS.load(Ordering::SeqCst), 0);
            tracing::warn!("shown");
            assert!(lazy.built());
            tracing::error!("shown");
            tracing::info!("not shown");
            let span = tracing::warn_span!("a span");
            span.in_scope(|| tracing::warn!("shown"));
        });
        assert_eq!(EVENTS.load(Ordering::SeqCst), 3);
    }
}
