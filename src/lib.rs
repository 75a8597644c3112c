//! The `croupier` binary's library: configuration, server assembly on one mTLS port, the CLI,
//! `dev` mode, certificates and benchmarks.
//!
//! Layout:
//! - [`config`] — layered server configuration.
//! - [`server`] — [`server::serve`], the control plane on one TLS listener.
//! - [`gate`] — TLS accept with the limits that hold before authentication.
//! - [`certs`] — `croupier certs init`.
//! - [`cli`] — arguments and the client commands.
//! - [`job`] — `croupier job …`.
//! - [`pipeline`] — `croupier pipeline …`.
//! - [`store_cmd`] — `croupier store check|repair|backup|restore`.
//! - [`dev`] — `croupier dev`.
//! - [`bench`] — `croupier bench invoke` and `bench jobs`.
//! - [`bench_scale`] — `croupier bench agents`.
//! - [`bench_gateway`] — `croupier bench gateway`.
//! - [`output`] — tables.

pub mod bench;
pub mod bench_gateway;
pub mod bench_scale;
pub mod certs;
pub mod cli;
pub mod config;
pub mod dev;
pub mod gate;
pub mod job;
pub mod output;
pub mod pipeline;
pub mod server;
pub mod store_cmd;
