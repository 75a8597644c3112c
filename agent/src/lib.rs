//! The Croupier agent: the SDK provider runtime plus built-in functions.
//!
//! Layout:
//! - [`builtin`] — the `agent.*` functions every agent carries (`agent.ping`, `agent.sleep`).
//! - [`run`] — builds the provider from an [`AgentConfig`] and runs it.

pub mod builtin;

use croupier_sdk::{Provider, ProviderConfig};
use tokio_util::sync::CancellationToken;

/// What an agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Provider settings (servers, id, game, env, labels, TLS).
    pub provider: ProviderConfig,
}

/// Builds the agent's provider with its built-in functions.
pub fn provider(cfg: AgentConfig) -> Provider {
    let agent_id = cfg.provider.agent_id.clone();
    builtin::register(Provider::new(cfg.provider), &agent_id)
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    cfg: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), croupier_sdk::provider::ProviderError> {
    provider(cfg).run(shutdown).await
}
