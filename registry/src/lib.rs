//! The Croupier registry: where agents, function descriptors and node states live.
//!
//! Layout:
//! - [`store`] — the `Store` trait (etcd semantics) and its backends: etcd, and the embedded
//!   one with its checksummed log and offline tools (check, repair, backup, restore).
//! - [`keys`], [`ids`] — the key layout and the id rules that keep keys safe.
//! - [`model`] — records as stored, with proto conversions.
//! - [`assign`] — function assignments as stored, and what they make of a function on an agent.
//! - [`view`] — the in-memory registry view fed by one watch; routing reads it.
//! - [`schema`] — JSON Schema checks of payloads.
//! - [`identity`] — caller identities from mTLS peer certificates: roles, scopes, revocation.
//! - [`policy`] — the admin policy: rules, roles and approvals, and the decisions they make.
//! - [`service`] — the `RegistryService` handler.
//! - [`metrics`] — the names of the watch metrics it records.
//! - [`users`] — console users (argon2id password hashes) and API tokens as stored.

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod assign;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod schema;
pub mod service;
pub mod store;
pub mod users;
pub mod view;
