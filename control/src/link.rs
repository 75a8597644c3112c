//! How the function router and the job manager reach agents, and how job traffic from agents
//! reaches the job manager: two small traits, so each side can be tested with a fake.

use async_trait::async_trait;
use croupier_proto::control::v1::{Invoke, InvokeResult, RunningJob, ServerFrame};
use croupier_proto::function::v1::JobEvent;

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
    /// The frame is larger than the agent accepts; nothing was sent.
    #[error(
        "the call's frame would be {bytes} bytes, more than agent {agent} accepts ({limit}); \
         send a smaller payload"
    )]
    FrameTooLarge {
        /// The agent.
        agent: String,
        /// The frame's size.
        bytes: usize,
        /// The agent's limit.
        limit: usize,
    },
}

/// What least-loaded routing knows of an agent's load on this server.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Invocations in flight on the agent through this server.
    pub in_flight: i64,
    /// Jobs running on the agent: sent from here and not yet ended, or reported by the agent
    /// when its tunnel opened.
    pub jobs: i64,
    /// The `cpu_percent` of its last heartbeat; None when it reports none (no node pack).
    pub cpu_percent: Option<f32>,
}

/// A way to run invocations on agents.
#[async_trait]
pub trait AgentLink: Send + Sync + 'static {
    /// True when the agent can be sent work now.
    fn is_connected(&self, agent_id: &str) -> bool;
    /// The agent's load (for least-loaded routing); all zero when it has no session here.
    fn load(&self, agent_id: &str) -> Load;
    /// Sends an invocation and waits for its result. Dropping the future cancels the invocation
    /// on the agent (a `Cancel` frame is sent).
    async fn invoke(&self, agent_id: &str, invoke: Invoke) -> Result<InvokeResult, LinkError>;
    /// Sends the `Invoke` of a job without waiting: the job's outcome arrives as job events.
    /// Returns the generation of the tunnel it went down (see [`JobSink::report`]).
    async fn start_job(&self, agent_id: &str, invoke: Invoke) -> Result<u64, LinkError>;
    /// Queues a frame (`Cancel`, `Ack`) to the agent without waiting. False when the agent is
    /// not connected or its queue is full; the caller tries again later.
    fn send_frame(&self, agent_id: &str, frame: ServerFrame) -> bool;
    /// True when the agent has a live session on this server (its tunnel may be down).
    fn has_session(&self, agent_id: &str) -> bool;
}

/// Receives the job traffic of agents' tunnels (the job manager implements it). Calls come from
/// the task reading one tunnel, in the order the agent sent its frames; while one runs, the
/// tunnel's next frames wait (`report` may read the store, `event` waits while the agent's
/// events arrive faster than they are stored: that is the tunnel's backpressure).
#[async_trait]
pub trait JobSink: Send + Sync + 'static {
    /// A job event arrived from `agent_id` over the tunnel of `generation`.
    async fn event(&self, agent_id: &str, generation: u64, event: JobEvent);
    /// The agent listed the jobs it still runs; it sends this whenever a tunnel opens. A job
    /// sent over an older tunnel that is missing from the list was lost by the agent.
    /// Jobs this server does not run but the store says are the agent's and unfinished (the
    /// agent moved here from another server) are adopted, so their events go on here.
    async fn report(&self, agent_id: &str, generation: u64, jobs: Vec<RunningJob>);
    /// The agent is gone (offline after missed heartbeats, replaced by a new registration, or
    /// shut down): its unfinished jobs are lost.
    fn agent_gone(&self, agent_id: &str, reason: &str);
    /// An admin disabled the agent's node: its running jobs are cancelled with `reason`.
    fn node_disabled(&self, agent_id: &str, reason: &str);
}
