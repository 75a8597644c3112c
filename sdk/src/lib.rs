//! The Croupier Rust SDK.
//!
//! - Callers use [`Client`] to invoke functions, list agents and functions, and watch the
//!   registry.
//! - Providers (agents, game servers) use [`Provider`] to register functions with async handlers;
//!   the runtime dials the server, registers, heartbeats, holds the `Connect` tunnel, runs calls
//!   concurrently with their deadlines and cancellation, reconnects with backoff and resumes its
//!   session, and says goodbye on shutdown.
//!
//! Layout:
//! - [`tls`] — mTLS files and channels.
//! - [`client`] — the caller [`Client`].
//! - [`provider`] — [`Provider`], [`Invocation`], [`HandlerError`].
//! - [`job`] — [`JobContext`] for job handlers, and the outbox that delivers job events.
//! - [`backoff`] — exponential backoff with jitter.

pub mod backoff;
pub mod client;
pub mod job;
pub mod provider;
pub mod tls;

pub use client::{CallOptions, Client, JobHandle};
pub use croupier_proto as proto;
pub use job::JobContext;
pub use provider::{HandlerError, Invocation, Provider, ProviderConfig};
pub use tls::TlsFiles;
