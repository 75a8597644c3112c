//! The store key layout (DESIGN §6). Every key is built here from validated ids.

/// Root of every Croupier key.
pub const ROOT: &str = "/croupier/";
/// Prefix of agent registrations (lease-attached).
pub const AGENTS: &str = "/croupier/agents/";
/// Prefix of function descriptors.
pub const FUNCTIONS: &str = "/croupier/functions/";
/// Prefix of node states.
pub const NODES: &str = "/croupier/nodes/";
/// Prefix of idempotency records.
pub const IDEM: &str = "/croupier/idem/";
/// Prefix of server registrations.
pub const SERVERS: &str = "/croupier/servers/";

/// `/croupier/agents/{game}/{env}/{agent_id}`.
pub fn agent(game: &str, env: &str, agent_id: &str) -> String {
    format!("{AGENTS}{game}/{env}/{agent_id}")
}

/// `/croupier/functions/{game}/{env}/{function_id}`.
pub fn function(game: &str, env: &str, function_id: &str) -> String {
    format!("{FUNCTIONS}{game}/{env}/{function_id}")
}

/// `/croupier/nodes/{agent_id}`.
pub fn node(agent_id: &str) -> String {
    format!("{NODES}{agent_id}")
}

/// `/croupier/idem/{game}/{env}/{function}/{key}`. The idempotency key is hex-encoded SHA-256 by
/// the caller of this function when it is not a valid id.
pub fn idem(game: &str, env: &str, function_id: &str, key: &str) -> String {
    format!("{IDEM}{game}/{env}/{function_id}/{key}")
}

/// Prefix of job records.
pub const JOBS: &str = "/croupier/jobs/";
/// Prefix of job event logs. It lies outside [`ROOT`] on purpose: the registry view of every
/// server watches `ROOT`, and event traffic has no business there.
pub const JOB_EVENTS: &str = "/croupier-events/jobs/";

/// `/croupier/jobs/{job_id}`.
pub fn job(job_id: &str) -> String {
    format!("{JOBS}{job_id}")
}

/// `/croupier-events/jobs/{job_id}/`: every event chunk of a job.
pub fn job_events(job_id: &str) -> String {
    format!("{JOB_EVENTS}{job_id}/")
}

/// `/croupier-events/jobs/{job_id}/{first_seq}`: one chunk of a job's events, starting at
/// `first_seq` (zero-padded so keys sort by seq).
pub fn job_event_chunk(job_id: &str, first_seq: i64) -> String {
    format!("{JOB_EVENTS}{job_id}/{first_seq:020}")
}

/// Prefix of node inventories. Outside [`ROOT`]: the registry view has no use for them.
pub const INVENTORIES: &str = "/croupier-inventory/";

/// `/croupier-inventory/{agent_id}/`: every stored inventory version of a node.
pub fn inventories(agent_id: &str) -> String {
    format!("{INVENTORIES}{agent_id}/")
}

/// `/croupier-inventory/{agent_id}/{version}`: one inventory version (zero-padded so keys
/// sort by version).
pub fn inventory(agent_id: &str, version: i64) -> String {
    format!("{INVENTORIES}{agent_id}/{version:012}")
}

/// Prefix of function assignments.
pub const ASSIGNMENTS: &str = "/croupier/assignments/";

/// `/croupier/assignments/{id}`.
pub fn assignment(id: &str) -> String {
    format!("{ASSIGNMENTS}{id}")
}

/// Prefix of pipeline step logs, kept with their job's record. Outside [`ROOT`].
pub const JOB_STEPS: &str = "/croupier-events/steps/";

/// `/croupier-events/steps/{job_id}/`: every stored step log of a job.
pub fn job_steps(job_id: &str) -> String {
    format!("{JOB_STEPS}{job_id}/")
}

/// `/croupier-events/steps/{job_id}/{index}`: one step's log (zero-padded index).
pub fn job_step(job_id: &str, index: i64) -> String {
    format!("{JOB_STEPS}{job_id}/{index:06}")
}

/// `/croupier/servers/{server_id}`.
pub fn server(server_id: &str) -> String {
    format!("{SERVERS}{server_id}")
}

/// Prefix of pipeline templates.
pub const PIPELINES: &str = "/croupier/pipelines/";

/// `/croupier/pipelines/{template_id}`.
pub fn pipeline(id: &str) -> String {
    format!("{PIPELINES}{id}")
}

/// The admin policy (one JSON document; absent means the built-in policy).
pub const POLICY: &str = "/croupier/policy";

/// Prefix of approval requests. Outside [`ROOT`]: the registry view has no use for them.
pub const APPROVALS: &str = "/croupier-approvals/";

/// `/croupier-approvals/{approval_id}`.
pub fn approval(id: &str) -> String {
    format!("{APPROVALS}{id}")
}

/// Prefix of the audit chain heads each server checkpoints.
pub const AUDIT_HEADS: &str = "/croupier-audit/heads/";

/// `/croupier-audit/heads/{server_id}`: the last record a server's audit chain holds.
pub fn audit_head(server_id: &str) -> String {
    format!("{AUDIT_HEADS}{server_id}")
}
