//! How the function router reaches agents: a small trait so routing can be tested with a fake.

use async_trait::async_trait;
use croupier_proto::control::v1::{Invoke, InvokeResult};

/// Why an invocation did not come back from an agent.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// The agent has no tunnel here; nothing was sent (safe to try another agent).
    #[error("agent {0} is not connected")]
    NotConnected(String),
    /// The tunnel broke after the invocation was sent; the handler may or may not have run.
    #[error("agent {0} was lost before it answered")]
    Lost(String),
    /// The agent's send queue is full.
    #[error("agent {0} is overloaded (tunnel queue full)")]
    Overloaded(String),
}

/// A way to run invocations on agents.
#[async_trait]
pub trait AgentLink: Send + Sync + 'static {
    /// True when the agent can be sent work now.
    fn is_connected(&self, agent_id: &str) -> bool;
    /// Invocations in flight on the agent (for least-outstanding routing).
    fn in_flight(&self, agent_id: &str) -> i64;
    /// Sends an invocation and waits for its result. Dropping the future cancels the invocation
    /// on the agent (a `Cancel` frame is sent).
    async fn invoke(&self, agent_id: &str, invoke: Invoke) -> Result<InvokeResult, LinkError>;
}
