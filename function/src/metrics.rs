//! The names of the metrics this crate records, in one place (recorded through the `metrics`
//! facade; the server installs the Prometheus exporter).

/// Counter: a limit refused or cut something, by `kind` (shared with the control plane).
pub use croupier_control::metrics::LIMITS_HIT;
