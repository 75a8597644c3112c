//! Croupier's operator console: a browser app served over HTTPS by the server itself.
//!
//! The console adds no business logic of its own. A signed-in user (password, argon2id) or a
//! script (API token) becomes an [`Identity`](croupier_registry::identity::Identity) exactly
//! like a certificate with the same role, name and scopes, and every action is the same rpc
//! handler the mTLS port runs, called in-process with that identity: the policy, scopes,
//! approvals and the audit apply unchanged.
//!
//! Layout:
//! - [`auth`] — sign-in, sessions (cookie + CSRF token), API tokens, the login rate limit.
//! - [`rpc`] — `POST /api/rpc/{Method}`: protobuf JSON in and out for the rpcs the app uses.
//! - [`stream`] — Server-Sent Events for the streaming rpcs (registry watch, job events, node
//!   events), resuming from `Last-Event-ID`.
//! - [`pipeline`] — pipeline templates shown and stored in their TOML form.
//! - [`assets`] — the app's files, compiled into the binary, and the security headers.
//! - [`serve`] — the HTTPS listener (rustls, HTTP/1.1 and HTTP/2).

// Library code handles its errors; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod assets;
pub mod auth;
pub mod pipeline;
pub mod rpc;
pub mod serve;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use croupier_control::audit::AuditLog;
use croupier_control::service::ControlServer;
use croupier_function::service::FunctionServer;
use croupier_registry::service::RegistryServer;
use croupier_registry::store::Store;

/// The console's settings (`[console]` in the server's configuration).
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// A session ends after this long without a request.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, however busy.
    pub session_max: Duration,
    /// Failed sign-ins per user name, and per source address, before further attempts are
    /// refused for `login_lockout`.
    pub max_login_failures: u32,
    /// How long failures are remembered, and how long a locked name or address waits.
    pub login_lockout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            max_login_failures: 5,
            login_lockout: Duration::from_secs(5 * 60),
        }
    }
}

/// The rpc handlers the console calls, shared with the mTLS port.
#[derive(Clone)]
pub struct Backend {
    /// `ControlService`.
    pub control: Arc<ControlServer>,
    /// `FunctionService`.
    pub function: Arc<FunctionServer>,
    /// `RegistryService`.
    pub registry: Arc<RegistryServer>,
    /// Users and tokens are read from here.
    pub store: Arc<dyn Store>,
    /// Sign-ins are recorded here; the audit page verifies its chain.
    pub audit: AuditLog,
}

/// The console: its backend, settings and sign-in state.
pub struct Console {
    pub(crate) backend: Backend,
    pub(crate) auth: auth::AuthState,
    pub(crate) rpc: rpc::Transcoder,
}

impl Console {
    /// A console over `backend`.
    pub fn new(backend: Backend, config: ConsoleConfig) -> anyhow::Result<Arc<Console>> {
        Ok(Arc::new(Console {
            backend,
            auth: auth::AuthState::new(&config),
            rpc: rpc::Transcoder::new()?,
        }))
    }
}
