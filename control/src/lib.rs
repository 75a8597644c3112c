//! The Croupier control plane: agents register, heartbeat and hold a `Connect` tunnel through
//! which the server sends them work. It also owns liveness (offline after missed heartbeats) and
//! node states.
//!
//! Layout:
//! - [`plane`] — [`ControlPlane`], the sessions and everything they do.
//! - [`fleet`] — node events and inventories: the event log, inventory checks and diffs.
//! - [`link`] — the [`AgentLink`] trait the function router and jobs use to reach agents, and
//!   the [`JobSink`] trait through which job frames from agents reach the job manager.
//! - [`service`] — the `ControlService` handler.
//! - [`error`] — [`ControlError`] and its gRPC mapping.
//! - [`audit`] — the audit log of invocations and admin actions.
//! - [`metrics`] — the names of the metrics this crate records.
//! - [`fake`] (feature `test-util`) — fakes of [`AgentLink`] and [`JobSink`] for unit tests.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod audit;
pub mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod fleet;
pub mod link;
pub mod metrics;
pub mod plane;
pub mod service;

pub use error::ControlError;
pub use link::{AgentLink, JobSink, LinkError, Load};
pub use plane::{ControlConfig, ControlPlane};
