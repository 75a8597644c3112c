//! The names of the metrics the gateway records, in one place. They go through the `metrics`
//! facade; `croupier gateway` installs the Prometheus exporter and serves them on `/metrics` of
//! `http_listen`.

/// Gauge: sessions with a live connection (players online). Unit: sessions.
pub const SESSIONS_ONLINE: &str = "croupier_gateway_sessions_online";
/// Gauge: sessions kept without a connection (offline, waiting for a reconnect). Unit: sessions.
pub const SESSIONS_OFFLINE: &str = "croupier_gateway_sessions_offline";
/// Counter: logins by `outcome` (`ok`, `resumed`, `refused`, `error`). Unit: logins.
pub const LOGINS: &str = "croupier_gateway_logins_total";
/// Counter: connections closed, by `reason` (the CLOSE reason, lower case). Unit: connections.
pub const CLOSES: &str = "croupier_gateway_closes_total";
/// Counter: requests by `route` (the function) and `outcome` (`ok`, `handler_error`, or the
/// error code). Unit: requests.
pub const REQUESTS: &str = "croupier_gateway_requests_total";
/// Histogram: request latency from the REQUEST frame to its answer being queued for writing, by
/// `route` and `outcome`. Unit: seconds.
pub const REQUEST_SECONDS: &str = "croupier_gateway_request_duration_seconds";
/// Gauge: calls to the mesh in flight. Unit: calls.
pub const IN_FLIGHT: &str = "croupier_gateway_calls_in_flight";
/// Counter: pushes accepted for a player, by `source` (`push`, `broadcast`) and `delivery`
/// (`sent`: written to a live connection; `queued`: the player is offline). Unit: messages.
pub const PUSHES: &str = "croupier_gateway_pushes_total";
/// Gauge: pushes kept in mailboxes (unacknowledged or queued offline). Unit: messages.
pub const QUEUED: &str = "croupier_gateway_queued_messages";
/// Counter: pushes dropped from mailboxes, by `reason` (`overflow`, `age`, `expired_session`).
/// Unit: messages.
pub const DROPPED: &str = "croupier_gateway_dropped_messages_total";
/// Counter: frames that broke the protocol, by `kind` (see `FrameError::kind`). Unit: frames.
pub const BAD_FRAMES: &str = "croupier_gateway_bad_frames_total";
/// Counter: session hand-offs between gateways, by `direction` (`in`, `out`). Unit: sessions.
pub const HANDOFFS: &str = "croupier_gateway_handoffs_total";
/// Counter: HTTP push endpoint requests by `path` and `status` (the HTTP status). Unit:
/// requests.
pub const HTTP_PUSH: &str = "croupier_gateway_http_push_requests_total";

/// Latency histogram buckets, in seconds (100 µs to 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Registers the description and unit of every metric above with the installed recorder
/// (Prometheus shows them as `# HELP`).
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        SESSIONS_ONLINE,
        Unit::Count,
        "Sessions with a live connection."
    );
    describe_gauge!(
        SESSIONS_OFFLINE,
        Unit::Count,
        "Sessions kept without a connection."
    );
    describe_counter!(LOGINS, Unit::Count, "Logins by outcome.");
    describe_counter!(CLOSES, Unit::Count, "Connections closed, by reason.");
    describe_counter!(REQUESTS, Unit::Count, "Requests by route and outcome.");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Request latency by route and outcome."
    );
    describe_gauge!(IN_FLIGHT, Unit::Count, "Calls to the mesh in flight.");
    describe_counter!(
        PUSHES,
        Unit::Count,
        "Pushes accepted, by source and delivery."
    );
    describe_gauge!(QUEUED, Unit::Count, "Pushes kept in mailboxes.");
    describe_counter!(
        DROPPED,
        Unit::Count,
        "Pushes dropped from mailboxes, by reason."
    );
    describe_counter!(
        BAD_FRAMES,
        Unit::Count,
        "Frames that broke the protocol, by kind."
    );
    describe_counter!(HANDOFFS, Unit::Count, "Session hand-offs between gateways.");
    describe_counter!(HTTP_PUSH, Unit::Count, "HTTP push endpoint requests.");
}
