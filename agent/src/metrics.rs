//! The names of the metrics the agent's packs record (the provider's own are in
//! `croupier_sdk::metrics`).

/// Counter: Docker calls that found Docker unavailable (not running, not answering).
pub const DOCKER_UNAVAILABLE: &str = "croupier_agent_docker_unavailable_total";

/// Describes these metrics to the recorder.
pub fn describe() {
    metrics::describe_counter!(
        DOCKER_UNAVAILABLE,
        "Docker calls that found Docker unavailable (not running, not answering)."
    );
}
