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
