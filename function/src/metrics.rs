//! The names of the metrics this crate records, in one place (recorded through the `metrics`
//! facade; the server installs the Prometheus exporter).

/// Counter: a limit refused or cut something, by `kind` (shared with the control plane).
pub use croupier_control::metrics::LIMITS_HIT;

/// Counter: invocations (`InvokeFunction`) answered, by `game`, `env`, `function`, `route`
/// and `outcome` (`ok`, `handler_error`, or the error's code name). Functions the registry does
/// not know are counted as `(unregistered)` in game and env `(unknown)`, so a caller cannot
/// grow the label set.
pub const INVOCATIONS: &str = "croupier_invocations_total";

/// Histogram: invocation duration, seconds, with the labels of [`INVOCATIONS`].
pub const INVOCATION_SECONDS: &str = "croupier_invocation_duration_seconds";

/// Counter: job starts (`InvokeJob`) answered, by `game`, `env`, `function` and `outcome`
/// (labels bounded as for [`INVOCATIONS`]).
pub const JOBS_STARTED: &str = "croupier_jobs_started_total";

/// Gauge: jobs this server runs now (set when `/metrics` is scraped).
pub const JOBS_RUNNING: &str = "croupier_jobs_running";

/// Counter: jobs that ended, by `outcome` (`completed`, `failed`, `cancelled`).
pub const JOBS_ENDED: &str = "croupier_jobs_ended_total";

/// Histogram: job duration from creation to end, seconds, by `outcome`.
pub const JOB_SECONDS: &str = "croupier_job_duration_seconds";

/// Counter: job events stored (from agents, and the server's own ends).
pub const JOB_EVENTS: &str = "croupier_job_events_total";

/// Gauge: bytes of job events the server holds in memory, by `state`: `retained` (kept for
/// subscribers, bounded by `jobs.max_job_bytes` per job) and `unstored` (received, not yet
/// written to the store, bounded per agent by backpressure on its tunnel).
pub const JOB_EVENT_BYTES: &str = "croupier_job_event_bytes";

/// Gauge: `StreamJobEvents` subscribers being served.
pub const JOB_SUBSCRIBERS: &str = "croupier_job_subscribers";

/// Histogram: seconds from the server receiving a job event to handing it to a subscriber
/// that was following live (replays of older events are not counted).
pub const JOB_DELIVERY_SECONDS: &str = "croupier_job_event_delivery_seconds";

/// Counter: `GAP` events sent: a subscriber asked for events retention had dropped.
pub const JOB_GAPS: &str = "croupier_job_retention_gaps_total";

/// Counter: pipeline templates changed by admins, by `op` (`put`, `delete`).
pub const PIPELINES: &str = "croupier_pipelines_total";

/// Counter: pipeline runs the server prepared (`pipeline.start` jobs given their template), by
/// `outcome` (`started`, or the error's code name). How runs end is counted by the agents
/// (`croupier_agent_pipeline_runs_total`) and in the jobs' outcomes.
pub const PIPELINE_RUNS: &str = "croupier_pipeline_runs_total";

/// Counter: calls with an idempotency key that found a record, by `result` (`replay`: the
/// stored outcome was returned; `conflict`: the key was used with another payload).
pub const IDEMPOTENCY: &str = "croupier_idempotency_total";

/// Counter: calls forwarded to the replica that holds the agent, by `outcome` (`ok`, `error`).
pub const FORWARDED: &str = "croupier_forwarded_calls_total";

/// Histogram: forwarded calls' round trip to the owning replica, seconds, by `outcome`.
pub const FORWARD_SECONDS: &str = "croupier_forwarded_call_duration_seconds";

/// Describes this crate's metrics to the recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        INVOCATIONS,
        "Invocations answered, by game, env, function, route and outcome."
    );
    describe_histogram!(
        INVOCATION_SECONDS,
        Unit::Seconds,
        "Invocation duration, by game, env, function, route and outcome."
    );
    describe_counter!(
        JOBS_STARTED,
        "Job starts answered, by game, env, function and outcome."
    );
    describe_counter!(JOBS_ENDED, "Jobs that ended, by outcome.");
    metrics::describe_gauge!(JOBS_RUNNING, "Jobs this server runs now.");
    describe_histogram!(
        JOB_SECONDS,
        Unit::Seconds,
        "Job duration from creation to end, by outcome."
    );
    describe_counter!(JOB_EVENTS, "Job events stored.");
    metrics::describe_gauge!(JOB_SUBSCRIBERS, "StreamJobEvents subscribers being served.");
    describe_histogram!(
        JOB_DELIVERY_SECONDS,
        Unit::Seconds,
        "From the server receiving a job event to handing it to a live subscriber."
    );
    describe_counter!(
        JOB_GAPS,
        "GAP events sent: subscribers asked for events retention had dropped."
    );
    describe_counter!(
        PIPELINES,
        "Pipeline templates changed, by op (put, delete)."
    );
    describe_counter!(
        PIPELINE_RUNS,
        "Pipeline runs prepared by the server, by outcome."
    );
    metrics::describe_gauge!(
        JOB_EVENT_BYTES,
        Unit::Bytes,
        "Bytes of job events held in memory, by state (retained, unstored)."
    );
    describe_counter!(
        FORWARDED,
        "Calls forwarded to the owning replica, by outcome."
    );
    describe_histogram!(
        FORWARD_SECONDS,
        Unit::Seconds,
        "Forwarded calls' round trip to the owning replica, by outcome."
    );
    describe_counter!(
        IDEMPOTENCY,
        "Calls with an idempotency key that found a record, by result (replay, conflict)."
    );
}

/// The (game, env, function) labels of a call: as asked when the registry knows the function,
/// else placeholders, so callers naming functions that do not exist cannot grow the label set.
pub fn function_labels<'a>(
    known: bool,
    game: &'a str,
    env: &'a str,
    function: &'a str,
) -> (&'a str, &'a str, &'a str) {
    if known {
        (game, env, function)
    } else {
        ("(unknown)", "(unknown)", "(unregistered)")
    }
}
