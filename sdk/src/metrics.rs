//! The names of the metrics a [`crate::Provider`] (an agent) records through the `metrics`
//! facade. Nothing is recorded unless the process installs a recorder (`croupier agent
//! --http-listen` does). Labels are bounded: functions are the ones this provider serves, or
//! `(unknown)` for a call it does not serve.

/// Counter: calls and jobs this agent ran, by `function` and `outcome` (`ok` or the error code).
pub const CALLS: &str = "croupier_agent_calls_total";
/// Histogram: how long a call's handler ran, seconds, by `function` and `outcome`.
pub const CALL_SECONDS: &str = "croupier_agent_call_duration_seconds";
/// Gauge: jobs running on this agent.
pub const JOBS_RUNNING: &str = "croupier_agent_jobs_running";
/// Gauge: 1 while the tunnel to a server is open.
pub const TUNNEL_UP: &str = "croupier_agent_tunnel_up";
/// Counter: tunnels lost (each followed by a reconnection).
pub const TUNNEL_RECONNECTS: &str = "croupier_agent_tunnel_reconnects_total";
/// Counter: heartbeats that failed or timed out.
pub const HEARTBEAT_FAILURES: &str = "croupier_agent_heartbeat_failures_total";

/// Describes these metrics to the recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CALLS,
        "Calls and jobs this agent ran, by function and outcome."
    );
    describe_histogram!(
        CALL_SECONDS,
        Unit::Seconds,
        "How long a call's handler ran, by function and outcome."
    );
    describe_gauge!(JOBS_RUNNING, "Jobs running on this agent.");
    describe_gauge!(TUNNEL_UP, "1 while the tunnel to a server is open.");
    describe_counter!(
        TUNNEL_RECONNECTS,
        "Tunnels lost, each followed by a reconnection."
    );
    describe_counter!(HEARTBEAT_FAILURES, "Heartbeats that failed or timed out.");
}
