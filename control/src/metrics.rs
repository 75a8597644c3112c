//! The names of the metrics this crate records, in one place (recorded through the `metrics`
//! facade; the server installs the Prometheus exporter).

/// Counter: a limit refused or cut something, by `kind` (`job_event_size`, `job_event_bytes`,
/// `agent_event_bytes`, `job_event_backpressure`, `audit_payload`, `connections`,
/// `handshakes`, …). Shared by every crate of the server.
pub const LIMITS_HIT: &str = "croupier_limits_hit_total";

/// Counter: audit records written.
pub const AUDIT_RECORDS: &str = "croupier_audit_records_total";

/// Counter: audit records lost because the writer took none for the write timeout.
pub const AUDIT_LOST: &str = "croupier_audit_records_lost_total";

/// Counter: audit writes that failed (each failure counts once, however long its retries last).
pub const AUDIT_WRITE_FAILURES: &str = "croupier_audit_write_failures_total";
