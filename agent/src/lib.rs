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
//! - this module — [`AgentConfig`], [`Agent`] (the provider with its packs' background
//!   reports), [`provider`] and [`run`], which build it from an [`AgentConfig`] and run it.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod builtin;
mod descriptor;
pub mod metrics;
pub mod packs;

use std::time::Duration;

use croupier_sdk::provider::{ProviderError, ProviderState};
use croupier_sdk::{Provider, ProviderConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use packs::{InventoryTimes, MetricsTimes, Pack, PackError, Packs, Reports, Thresholds};

/// How long an agent waits for its first inventory before it registers without one (it is
/// sent over the tunnel when it comes).
const FIRST_INVENTORY_WAIT: Duration = Duration::from_secs(5);

/// What an agent needs to run.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Connection, identity and reconnect settings.
    pub provider: ProviderConfig,
    /// Packs to serve besides the built-in `agent.*` functions.
    pub packs: Packs,
    /// When the node pack reports the inventory and the metrics.
    pub reports: Reports,
}

impl AgentConfig {
    /// An agent with `packs` and the default report times.
    pub fn new(provider: ProviderConfig, packs: Packs) -> Self {
        AgentConfig {
            provider,
            packs,
            reports: Reports::default(),
        }
    }
}

/// An agent ready to run: its provider, and what its packs report beside it.
pub struct Agent {
    provider: Provider,
    background: Vec<packs::Background>,
    /// The node pack is on: the registration waits (briefly) for the inventory.
    inventory: bool,
}

impl Agent {
    /// Watches the connection state.
    pub fn state(&self) -> watch::Receiver<ProviderState> {
        self.provider.state()
    }

    /// Runs until `shutdown` is cancelled: starts the packs' reports, waits up to 5 s for the
    /// first inventory (so the registration carries it), then runs the provider.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProviderError> {
        let stop = shutdown.child_token();
        let reporter = self.provider.reporter();
        for b in self.background {
            croupier_proto::task::spawn(b.name, (b.start)(stop.clone()));
        }
        if self.inventory {
            let waited = tokio::time::timeout(FIRST_INVENTORY_WAIT, async {
                while !reporter.has_inventory() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            if waited.is_err() {
                tracing::warn!("no inventory within 5 s; registering without it");
            }
        }
        let outcome = self.provider.run(shutdown).await;
        stop.cancel();
        outcome
    }
}

/// Builds the agent's provider with its built-in functions and its packs.
pub fn provider(cfg: AgentConfig) -> Agent {
    let agent_id = cfg.provider.agent_id.clone();
    let provider = builtin::register(Provider::new(cfg.provider), &agent_id);
    let (provider, background) = packs::install(provider, &cfg.packs, &agent_id, &cfg.reports);
    Agent {
        provider,
        background,
        inventory: cfg.packs.contains(Pack::Node),
    }
}

/// Locks `m`, taking over a lock poisoned by a panic: what it guards stays consistent at every
/// step (counters, samples), so the next user can go on.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), ProviderError> {
    provider(cfg).run(shutdown).await
}
