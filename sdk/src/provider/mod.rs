//! The provider runtime: register functions with async handlers and serve them over the
//! `Connect` tunnel.
//!
//! ```no_run
//! # use croupier_sdk::{Provider, ProviderConfig, TlsFiles, HandlerError};
//! # use croupier_sdk::proto::common::v1::FunctionDescriptor;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ProviderConfig::new(
//!     vec!["https://127.0.0.1:8443".into()],
//!     "gs-1",
//!     TlsFiles::from_dir("certs".as_ref(), "agent-gs-1"),
//! );
//! let descriptor = FunctionDescriptor { id: "player.kick".into(), ..Default::default() };
//! Provider::new(cfg)
//!     .function(descriptor, |call| async move {
//!         let player = call.payload["player_id"].as_str().unwrap_or_default().to_string();
//!         Ok::<_, HandlerError>(serde_json::json!({ "kicked": player }))
//!     })
//!     .run(tokio_util::sync::CancellationToken::new())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - `types` — what handlers see and return, the configuration.
//! - `session` — one session with a server: register, tunnel, frames.
//! - `calls` — running one call or job.
//! - `report` — [`Reporter`]: node events and the inventory, queued while no tunnel is open.

mod calls;
mod report;
mod session;
mod types;

pub use report::{MAX_QUEUED_REPORTS, Reporter};
pub use types::*;

use crate::client::MAX_MESSAGE_BYTES;
use crate::job::{JobContext, Outbox};
use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::control::v1::FunctionAssignment;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type BoxFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, HandlerError>> + Send>>;

/// A registered handler: a plain call, or a job that reports events.
#[derive(Clone)]
pub(crate) enum Handler {
    Call(Arc<dyn Fn(Invocation) -> BoxFuture + Send + Sync>),
    Job(Arc<dyn Fn(JobContext) -> BoxFuture + Send + Sync>),
}

/// A running invocation's cancellation: the token and why it was cancelled.
#[derive(Default)]
struct Running {
    cancel: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Running {
    fn cancel(&self, reason: &str) {
        self.reason.lock().get_or_insert_with(|| reason.to_string());
        self.cancel.cancel();
    }
}

type RunningMap = Arc<Mutex<HashMap<String, Arc<Running>>>>;

type StatusFn = Arc<dyn Fn() -> HashMap<String, String> + Send + Sync>;

/// The provider runtime.
pub struct Provider {
    cfg: ProviderConfig,
    descriptors: Vec<FunctionDescriptor>,
    handlers: HashMap<String, Handler>,
    locals: crate::job::Locals,
    status: Option<StatusFn>,
    state: watch::Sender<ProviderState>,
    in_flight: Arc<AtomicI64>,
    /// The handles of the calls' metrics per (function, outcome).
    call_metrics: Arc<croupier_proto::metric_handles::Handles>,
    running: RunningMap,
    outbox: Arc<Outbox>,
    /// The server's message limit (from its Welcome): results must fit in it.
    server_limit: Arc<std::sync::atomic::AtomicUsize>,
    /// Node events and the inventory, sent over the tunnel.
    reporter: Reporter,
    /// This agent's assignments by function, as last fetched.
    assignments: Arc<Mutex<HashMap<String, FunctionAssignment>>>,
}

/// This provider's assignments by function, as last fetched; clones share them.
#[derive(Clone, Default)]
pub struct Assignments(Arc<Mutex<HashMap<String, FunctionAssignment>>>);

impl Assignments {
    /// The assignment of `function_id`, if the server sent one.
    pub fn get(&self, function_id: &str) -> Option<FunctionAssignment> {
        self.0.lock().get(function_id).cloned()
    }
}

/// How one session ended.
enum Ended {
    Shutdown,
    Reconnect(String),
}

impl Provider {
    /// A provider with no functions yet.
    pub fn new(cfg: ProviderConfig) -> Self {
        Provider {
            cfg,
            descriptors: Vec::new(),
            handlers: HashMap::new(),
            locals: Arc::default(),
            status: None,
            state: watch::channel(ProviderState::default()).0,
            in_flight: Arc::new(AtomicI64::new(0)),
            call_metrics: Default::default(),
            server_limit: Arc::new(std::sync::atomic::AtomicUsize::new(MAX_MESSAGE_BYTES)),
            running: Arc::default(),
            outbox: Outbox::new(),
            reporter: Reporter::default(),
            assignments: Arc::default(),
        }
    }

    /// This agent's assignments by function, as last fetched from the server (after each
    /// registration, and whenever the server says they changed): whether each function is
    /// enabled here and its config (which handlers also get as [`Invocation::config`]).
    pub fn assignments(&self) -> HashMap<String, FunctionAssignment> {
        self.assignments.lock().clone()
    }

    /// A handle on the assignments that stays current while the provider runs (for tasks that
    /// read a function's config, e.g. the node pack's thresholds).
    pub fn assignments_handle(&self) -> Assignments {
        Assignments(self.assignments.clone())
    }

    /// The handle through which this provider reports node events and its node's inventory
    /// (sent with each registration and over the tunnel).
    pub fn reporter(&self) -> Reporter {
        self.reporter.clone()
    }

    /// Registers a function: its descriptor (id, params schema, semantics…) and async handler.
    pub fn function<F, Fut>(self, descriptor: FunctionDescriptor, handler: F) -> Self
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, HandlerError>> + Send + 'static,
    {
        let handler = Handler::Call(Arc::new(move |inv| Box::pin(handler(inv))));
        self.add(descriptor, handler)
    }

    /// Registers a job function: its handler gets a [`JobContext`] to report progress, log
    /// lines and data, and its cancellation token. The descriptor is marked as a job. Invoked
    /// with `InvokeJob` it runs as a job (events numbered 1, 2, 3…: `START`, the handler's
    /// reports, then `DONE`, `ERROR` or `CANCELLED`); invoked with `InvokeFunction` it runs to
    /// its result and its reports are dropped.
    pub fn job<F, Fut>(self, mut descriptor: FunctionDescriptor, handler: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, HandlerError>> + Send + 'static,
    {
        descriptor
            .semantics
            .get_or_insert_with(Default::default)
            .job = true;
        let handler = Handler::Job(Arc::new(move |ctx| Box::pin(handler(ctx))));
        self.add(descriptor, handler)
    }

    fn add(mut self, descriptor: FunctionDescriptor, handler: Handler) -> Self {
        let id = descriptor.id.clone();
        self.handlers.insert(id.clone(), handler);
        self.descriptors.retain(|d| d.id != id);
        self.descriptors.push(descriptor);
        self
    }

    /// Adds entries to every heartbeat's status (e.g. load figures).
    pub fn status<F>(mut self, f: F) -> Self
    where
        F: Fn() -> HashMap<String, String> + Send + Sync + 'static,
    {
        self.status = Some(Arc::new(f));
        self
    }

    /// Watches the connection state.
    pub fn state(&self) -> watch::Receiver<ProviderState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` is cancelled: connects, registers, serves, reconnects. On
    /// shutdown, says goodbye (no new calls), waits up to `shutdown_grace` for running calls,
    /// then leaves.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ProviderError> {
        // Handlers may call each other (pipeline steps): they share the final handler table.
        self.locals = Arc::new(self.handlers.clone());
        if self.cfg.servers.is_empty() {
            return Err(ProviderError::NoServer);
        }
        let pem = self.cfg.tls.load()?;
        let mut backoff = self.cfg.backoff.clone();
        let mut session_id = String::new();
        let mut server_index = 0usize;
        loop {
            let server = self.cfg.servers[server_index % self.cfg.servers.len()].clone();
            let outcome = self
                .session(&server, &pem, &mut session_id, &mut backoff, &shutdown)
                .await;
            self.state.send_modify(|s| s.connected = false);
            metrics::gauge!(crate::metrics::TUNNEL_UP).set(0.0);
            match outcome {
                Ended::Shutdown => return Ok(()),
                Ended::Reconnect(why) => {
                    tracing::warn!(server = %server, reason = %why, "tunnel lost; reconnecting");
                    metrics::counter!(crate::metrics::TUNNEL_RECONNECTS).increment(1);
                    server_index += 1;
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}
