//! The Croupier Rust SDK.
//!
//! - Callers use [`Client`] to invoke functions (plain JSON or typed), start and follow jobs,
//!   list agents and functions, and watch the registry. Calls have deadlines, are retried when
//!   they are safe to repeat, and fail fast while the server is unreachable.
//! - Providers (agents, game servers) use [`Provider`] to register functions with async handlers
//!   (typed ones get their JSON Schemas derived from the Rust types); the runtime dials the
//!   server, registers, heartbeats, holds the `Connect` tunnel, runs calls concurrently with
//!   their deadlines and cancellation, reconnects with backoff and resumes its session, and says
//!   goodbye on shutdown.
//!
//! # Calling functions
//!
//! ```no_run
//! use std::time::Duration;
//! use croupier_sdk::{CallError, CallOptions, Client, TlsFiles};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize)]
//! struct Ping { hello: String }
//!
//! #[derive(Deserialize)]
//! struct Pong { agent_id: String, calls: u64 }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsFiles::from_dir("certs".as_ref(), "client-c1");
//! let client = Client::connect("https://127.0.0.1:8443", &tls).await?;
//! for f in client.functions("default", "dev").await? {
//!     println!("{} ({} agents online)", f.id, f.online_agents().count());
//! }
//! let opts = CallOptions::new().timeout(Duration::from_secs(5));
//! match client
//!     .invoke_typed::<_, Pong>("agent.ping", &Ping { hello: "world".into() }, &opts)
//!     .await
//! {
//!     Ok(pong) => println!("{} answered ({} calls)", pong.agent_id, pong.calls),
//!     Err(CallError::Handler { code, message, .. }) => eprintln!("handler failed: {code}: {message}"),
//!     Err(e) => eprintln!("{e}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Resilience is set per client: [`Client::with_retry_policy`] ([`RetryPolicy`]; the rule for
//! which calls are retried is in [`retry`]), [`Client::with_breaker_policy`]
//! ([`BreakerPolicy`], see [`breaker`]) and [`Client::with_default_timeout`] (30 s).
//!
//! # Providing functions
//!
//! ```no_run
//! use croupier_sdk::proto::common::v1::FunctionDescriptor;
//! use croupier_sdk::{HandlerError, Provider, ProviderConfig, TlsFiles};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Deal { table: String, cards: u8 }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Dealt { table: String, cards: Vec<String> }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ProviderConfig::new(
//!     vec!["https://127.0.0.1:8443".into()],
//!     "gs-1",
//!     TlsFiles::from_dir("certs".as_ref(), "agent-gs-1"),
//! );
//! let template = FunctionDescriptor { description: "Deals cards.".into(), ..Default::default() };
//! let shutdown = CancellationToken::new();
//! Provider::new(cfg)
//!     .typed_function("table.deal", template, |deal: Deal, _call| async move {
//!         if deal.cards > 52 {
//!             return Err(HandlerError::new("INVALID_ARGUMENT", "a deck has 52 cards"));
//!         }
//!         let cards = (0..deal.cards).map(|i| format!("card-{i}")).collect();
//!         Ok(Dealt { table: deal.table, cards })
//!     })
//!     .run(shutdown)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! `sdk/examples/caller.rs` and `sdk/examples/provider.rs` are complete programs.
//!
//! Layout:
//! - [`tls`] — mTLS files, in-memory PEM and channels.
//! - [`client`] — the caller [`Client`], [`FunctionInfo`], [`CallError`], [`JobHandle`].
//! - [`options`] — [`CallOptions`] and [`Route`].
//! - [`retry`] — [`RetryPolicy`] and the rule for which calls are retried.
//! - [`breaker`] — the per-server circuit breaker ([`BreakerPolicy`]).
//! - [`provider`] — [`Provider`], [`Invocation`], [`HandlerError`].
//! - [`typed`] — typed functions and jobs, with schemas derived by [`schemars`].
//! - [`job`] — [`JobContext`] for job handlers, and the outbox that delivers job events.
//! - [`backoff`] — exponential backoff with jitter.
//! - [`metrics`] — the names of the metrics a provider (an agent) records.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod backoff;
pub mod breaker;
pub mod client;
pub mod job;
pub mod metrics;
pub mod options;
pub mod provider;
pub mod retry;
pub mod tls;
pub mod typed;

pub use breaker::{BreakerPolicy, BreakerState};
pub use client::{CallError, Client, FunctionInfo, JobHandle};
pub use croupier_proto as proto;
pub use job::JobContext;
pub use options::{CallOptions, Route};
pub use provider::{HandlerError, Invocation, Provider, ProviderConfig, Reporter};
pub use retry::RetryPolicy;
/// The `schemars` crate the typed functions use (derive `JsonSchema` with it).
pub use schemars;
pub use tls::{TlsFiles, TlsPem};
