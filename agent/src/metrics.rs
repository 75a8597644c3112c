//! The names of the metrics the agent's packs record (the provider's own are in
//! `croupier_sdk::metrics`).

/// Counter: Docker calls that found Docker unavailable (not running, not answering).
pub const DOCKER_UNAVAILABLE: &str = "croupier_agent_docker_unavailable_total";

/// Counter: pipeline runs that ended on this agent, by `outcome` (`completed`, `failed`,
/// `cancelled`, `invalid`).
pub const PIPELINE_RUNS: &str = "croupier_agent_pipeline_runs_total";

/// Counter: pipeline steps that ended, by `status` (`COMPLETED`, `FAILED`, `CANCELLED`; a step
/// not run because an earlier one failed counts as `CANCELLED`).
pub const PIPELINE_STEPS: &str = "croupier_agent_pipeline_steps_total";

/// Describes these metrics to the recorder.
pub fn describe() {
    metrics::describe_counter!(
        PIPELINE_RUNS,
        "Pipeline runs that ended on this agent, by outcome."
    );
    metrics::describe_counter!(PIPELINE_STEPS, "Pipeline steps that ended, by status.");
    metrics::describe_counter!(
        DOCKER_UNAVAILABLE,
        "Docker calls that found Docker unavailable (not running, not answering)."
    );
}
