//! The names of the metrics this crate records (the store's are in [`crate::store::metered`]).

/// Gauge: `WatchRegistrations` streams open.
pub const WATCHES_OPEN: &str = "croupier_registry_watches_open";

/// Counter: registration events sent to watchers (the initial snapshot included).
pub const WATCH_EVENTS: &str = "croupier_registry_watch_events_total";

/// Describes these metrics to the recorder.
pub fn describe() {
    metrics::describe_gauge!(WATCHES_OPEN, "WatchRegistrations streams open.");
    metrics::describe_counter!(
        WATCH_EVENTS,
        "Registration events sent to watchers, the initial snapshot included."
    );
}

/// Counts one open watch while it lives.
pub(crate) struct OpenWatch;

impl OpenWatch {
    pub(crate) fn new() -> Self {
        metrics::gauge!(WATCHES_OPEN).increment(1.0);
        OpenWatch
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        metrics::gauge!(WATCHES_OPEN).decrement(1.0);
    }
}
