//! What handlers see and return, and how a provider is configured.

use crate::backoff::Backoff;
use crate::tls::{TlsError, TlsFiles};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One call to a handler.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// Unique id of this invocation.
    pub request_id: String,
    /// The function.
    pub function_id: String,
    /// The payload.
    pub payload: serde_json::Value,
    /// Caller identity (spiffe URI).
    pub caller: String,
    /// Game of the call.
    pub game_id: String,
    /// Environment of the call.
    pub env: String,
    /// Idempotency key, if the caller gave one.
    pub idempotency_key: String,
    /// W3C trace context of the call (`traceparent`; "" when the server sent none). The
    /// handler runs inside it: calls it makes with a [`crate::Client`] carry the same trace.
    pub traceparent: String,
    /// The function's configuration on this agent, from the admins' assignments (empty when
    /// none applies).
    pub config: HashMap<String, String>,
    /// When the caller stops waiting; the handler is cancelled then.
    pub deadline: Instant,
    /// Cancelled when the caller gives up, the deadline passes or the agent shuts down.
    pub cancel: CancellationToken,
}

/// A handler's failure: reaches the caller as `success=false` with `error_code` and `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// Machine-readable code, e.g. "NOT_FOUND", "INVALID_STATE".
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl HandlerError {
    /// A failure with a code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError {
            code: code.into(),
            message: message.into(),
        }
    }

    /// An unexpected failure ("INTERNAL").
    pub fn internal(message: impl Into<String>) -> Self {
        HandlerError::new("INTERNAL", message)
    }
}

/// Where and as whom a provider connects.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Server URLs; the provider moves to the next one when a server goes away.
    pub servers: Vec<String>,
    /// Agent id (must match the certificate).
    pub agent_id: String,
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Agent version.
    pub version: String,
    /// Labels for selector routing.
    pub labels: HashMap<String, String>,
    /// mTLS files.
    pub tls: TlsFiles,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// How long shutdown waits for running calls and jobs before cancelling them. Default 10 s.
    pub shutdown_grace: Duration,
    /// How long a cancelled job handler may take to clean up before it is dropped. Default 10 s.
    pub cancel_grace: Duration,
}

impl ProviderConfig {
    /// A config with game "default", env "dev" and the default backoff.
    pub fn new(servers: Vec<String>, agent_id: &str, tls: TlsFiles) -> Self {
        ProviderConfig {
            servers,
            agent_id: agent_id.to_string(),
            game_id: "default".into(),
            env: "dev".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            labels: HashMap::new(),
            tls,
            backoff: Backoff::default(),
            shutdown_grace: Duration::from_secs(10),
            cancel_grace: Duration::from_secs(10),
        }
    }
}

/// Provider failures that end `run`.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No servers configured.
    #[error("no server address configured")]
    NoServer,
}

/// Connection state, observable through [`Provider::state`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderState {
    /// Tunnel open.
    pub connected: bool,
    /// Current session id.
    pub session_id: String,
    /// Server in use.
    pub server: String,
    /// Node state the server reported.
    pub node_state: i32,
    /// Times the tunnel was (re)opened.
    pub connects: u64,
    /// Version of the assignments last fetched (GetAssignments); 0 when none applies.
    pub assignments_version: i64,
}
