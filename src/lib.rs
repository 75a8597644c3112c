//! The `croupier` binary's library: configuration, server assembly on one mTLS port, the CLI,
//! `dev` mode, certificates and benchmarks.
//!
//! Layout:
//! - [`config`] — layered server configuration.
//! - [`server`] — [`server::serve`], the control plane on one TLS listener.
//! - [`gate`] — TLS accept with the limits that hold before authentication.
//! - [`http`] — the plain-HTTP port for machines: `/metrics`, `/healthz`, `/readyz`.
//! - [`console`] — starts the operator console beside the mTLS port; `croupier dev`'s user.
//! - [`metrics`] — the server's metric names, the Prometheus recorder, scrape-time gauges.
//! - [`rpc_metrics`] — the tower layer that counts and times every rpc.
//! - [`otel`] — span export over OTLP (`--otlp-endpoint`).
//! - [`certs`] — `croupier certs init`.
//! - [`cli`] — arguments and the client commands, one module per command group (`invoke`,
//!   `registry`, `job`, `pipeline`, `function`, `node`, `store`, `certs`, `serve`).
//! - [`dev`] — `croupier dev`.
//! - [`child`] — child processes: their announced addresses, CPU time and memory.
//! - [`bench`] — `croupier bench invoke`, `bench jobs`, `bench agents` and `bench gateway`.
//! - [`output`] — tables.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod bench;
pub mod certs;
pub mod child;
pub mod cli;
pub mod config;
pub mod console;
pub mod dev;
pub mod gate;
pub mod http;
pub mod metrics;
pub mod otel;
pub mod output;
pub mod rpc_metrics;
pub mod server;
