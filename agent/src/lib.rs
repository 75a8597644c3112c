//! The Croupier agent: the SDK provider runtime plus built-in functions and function packs.
//!
//! Layout:
//! - [`builtin`] — the `agent.*` functions every agent carries (`agent.ping`, `agent.sleep`,
//!   the job `agent.countdown`).
//! - `descriptor` — how every function is described: the descriptor builder, and JSON Schemas
//!   derived with `schemars` from the types a handler decodes and returns.
//! - [`packs`] — packs switched on by name (`--packs`): `node` (host metrics and inventory),
//!   `container` (the host's Docker containers), `pipeline` (runs stored pipeline templates).
//! - [`metrics`] — the names of the metrics the packs record.
//! - this module — [`AgentConfig`], [`provider`] and [`run`], which build the provider from an
//!   [`AgentConfig`] and run it.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod builtin;
mod descriptor;
pub mod metrics;
pub mod packs;

use croupier_sdk::{Provider, ProviderConfig};
use tokio_util::sync::CancellationToken;

pub use packs::{Pack, PackError, Packs};

/// What an agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Connection, identity and reconnect settings.
    pub provider: ProviderConfig,
    /// Packs to serve besides the built-in `agent.*` functions.
    pub packs: Packs,
}

/// Builds the agent's provider with its built-in functions and its packs.
pub fn provider(cfg: AgentConfig) -> Provider {
    let agent_id = cfg.provider.agent_id.clone();
    let provider = builtin::register(Provider::new(cfg.provider), &agent_id);
    packs::install(provider, &cfg.packs, &agent_id)
}

/// Locks `m`, taking over a lock poisoned by a panic: what it guards stays consistent at every
/// step (counters, samples), so the next user can go on.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    cfg: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), croupier_sdk::provider::ProviderError> {
    provider(cfg).run(shutdown).await
}
