//! The names of the metrics this crate records, in one place (recorded through the `metrics`
//! facade; the server installs the Prometheus exporter).

/// Counter: a limit refused or cut something, by `kind` (`job_event_size`, `job_event_bytes`,
/// `agent_event_bytes`, `job_event_backpressure`, `audit_payload`, `connections`,
/// `handshakes`, …). Shared by every crate of the server.
pub const LIMITS_HIT: &str = "croupier_limits_hit_total";
