//! Croupier functions: find the agents that provide a function, pick one (or all) by the
//! routing mode, enforce deadlines, idempotency and payload schemas, and answer callers.
//!
//! Layout:
//! - [`router`] — routing modes over candidate agents (pure, unit-tested).
//! - [`invoke`] — [`Invoker`], one invocation from request to response.
//! - [`idempotency`] — idempotency records in the store, across replicas.
//! - [`jobs`] — [`JobManager`]: job records, ordered replayable event streams, cancel.
//! - [`forward`] — [`forward::Forwarder`]: calls and jobs for agents held by other replicas.
//! - [`pipeline`] — pipeline templates and how `pipeline.start` is filled.
//! - [`approval`] — two-person approvals: pending requests, decisions, the approved run.
//! - [`stats`] — per-function call statistics (`GetFunctionStats`).
//! - [`service`] — the `FunctionService` handler.
//! - [`error`] — [`FunctionError`] and its gRPC mapping.
//! - [`metrics`] — the names of the metrics this crate records.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod approval;
pub mod error;
pub mod forward;
pub mod idempotency;
pub mod invoke;
pub mod jobs;
pub mod metrics;
pub mod pipeline;
pub mod router;
pub mod service;
pub mod stats;

pub use error::FunctionError;
pub use invoke::{InvokeConfig, Invoker};
pub use jobs::{JobConfig, JobManager};
