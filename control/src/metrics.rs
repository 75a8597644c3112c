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

/// Counter: agent registrations accepted.
pub const AGENT_REGISTRATIONS: &str = "croupier_agent_registrations_total";

/// Counter: agent sessions that expired (missed heartbeats, lease ended), by `reason`.
pub const AGENT_EXPIRATIONS: &str = "croupier_agent_expirations_total";

/// Histogram: time since the agent's previous heartbeat, seconds.
pub const HEARTBEAT_DELAY: &str = "croupier_heartbeat_delay_seconds";

/// Counter: tunnels opened and closed, by `event` (`open`, `close`).
pub const TUNNEL_EVENTS: &str = "croupier_tunnel_events_total";

/// Gauge: tunnels open on this server.
pub const TUNNELS_OPEN: &str = "croupier_tunnels_open";

/// Gauge: calls sent down tunnels and not answered yet.
pub const CALLS_IN_FLIGHT: &str = "croupier_calls_in_flight";

/// Describes this crate's metrics to the recorder (units and help texts).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(LIMITS_HIT, "Requests a limit refused or cut, by kind.");
    describe_counter!(AUDIT_RECORDS, "Audit records written.");
    describe_counter!(
        AUDIT_LOST,
        "Audit records lost because the writer took none within the write timeout."
    );
    describe_counter!(AUDIT_WRITE_FAILURES, "Audit log writes that failed.");
    describe_counter!(AGENT_REGISTRATIONS, "Agent registrations accepted.");
    describe_counter!(
        NODE_EVENTS,
        "Node events recorded in this server's event log."
    );
    describe_counter!(AGENT_EXPIRATIONS, "Agent sessions that expired, by reason.");
    describe_histogram!(
        HEARTBEAT_DELAY,
        Unit::Seconds,
        "Time since the agent's previous heartbeat."
    );
    describe_counter!(TUNNEL_EVENTS, "Tunnels opened and closed, by event.");
    describe_gauge!(TUNNELS_OPEN, "Tunnels open on this server.");
    describe_gauge!(
        CALLS_IN_FLIGHT,
        "Calls sent down tunnels and not answered yet."
    );
}

/// Counter: node events recorded in this server's event log.
pub const NODE_EVENTS: &str = "croupier_node_events_total";
