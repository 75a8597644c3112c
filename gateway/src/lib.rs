//! The Croupier game gateway (`croupier gateway`): it holds players' TCP (or TLS) sessions,
//! turns their requests into calls to mesh functions and the answers back into frames, takes
//! pushes for players from the mesh (`gateway.push`, `gateway.broadcast`, `gateway.kick`,
//! `gateway.sessions`) and from an authenticated HTTP endpoint, keeps bounded, numbered queues
//! for players who are offline and delivers them in order on reconnect, cleans idle sessions
//! and shuts down in order. It is a mesh client and a mesh agent at once, and dials out like
//! every agent. The client protocol is `proto/croupier/gateway/v1/gateway.proto`.
//!
//! Layout:
//! - [`frame`] — the framing: length prefix, `Frame` encode/decode, limits, gzip, seq checks.
//! - [`auth`] — LOGIN tokens: HMAC-signed tokens or a mesh verification function.
//! - [`mailbox`] — a player's numbered pushes, bounded by count and age, acknowledged by seq.
//! - [`hub`] — the players held here: sessions, connections, delivery, sweeping.
//! - [`conn`] — one client connection: login, reader loop, writer task, call limits.
//! - [`mesh`] — requests as mesh calls: routing, deadlines, safe retries, trace context.
//! - [`cluster`] — the other gateways: where a player is, hand-off, home gateways.
//! - [`agent`] — the `gateway.*` functions and the operations behind them.
//! - [`http`] — `/metrics`, `/healthz`, `/readyz` and the HTTP push endpoint.
//! - [`server`] — [`server::run`]: assembly and the shutdown order.
//! - [`config`] — [`config::GatewayConfig`], layered and validated.
//! - [`cmd`] — the `croupier gateway` command.
//! - [`client`] — the Rust client library for game clients.
//! - [`metrics`] — metric names.
//! - [`error`] — [`GatewayError`] and [`FrameError`].

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod agent;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod conn;
pub mod error;
pub mod frame;
pub mod http;
pub mod hub;
pub mod mailbox;
pub mod mesh;
pub mod metrics;
pub mod server;

pub use config::GatewayConfig;
pub use error::{FrameError, GatewayError};
