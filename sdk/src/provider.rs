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

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use croupier_proto::common::v1::{FunctionDescriptor, NodeState};
use croupier_proto::control::v1::{
    AgentFrame, Goodbye, HeartbeatRequest, Hello, Invoke, InvokeResult, RegisterAgentRequest,
    ServerFrame, agent_frame, control_service_client::ControlServiceClient, server_frame,
};
use croupier_proto::function::v1::EventType;
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::backoff::Backoff;
use crate::client::MAX_MESSAGE_BYTES;
use crate::job::{JobContext, Outbox};
use crate::tls::{TlsError, TlsFiles, connect, error_chain};

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
}

/// The provider runtime.
pub struct Provider {
    cfg: ProviderConfig,
    descriptors: Vec<FunctionDescriptor>,
    handlers: HashMap<String, Handler>,
    locals: crate::job::Locals,
    status: Option<StatusFn>,
    state: watch::Sender<ProviderState>,
    in_flight: Arc<AtomicI64>,
    running: RunningMap,
    outbox: Arc<Outbox>,
    /// The server's message limit (from its Welcome): results must fit in it.
    server_limit: Arc<std::sync::atomic::AtomicUsize>,
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
            server_limit: Arc::new(std::sync::atomic::AtomicUsize::new(MAX_MESSAGE_BYTES)),
            running: Arc::default(),
            outbox: Outbox::new(),
        }
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
            match outcome {
                Ended::Shutdown => return Ok(()),
                Ended::Reconnect(why) => {
                    tracing::warn!(server = %server, reason = %why, "tunnel lost; reconnecting");
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

    async fn session(
        &self,
        server: &str,
        pem: &crate::tls::TlsPem,
        session_id: &mut String,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Ended {
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            c = connect(server, pem) => match c {
                Ok(c) => c,
                Err(e) => return Ended::Reconnect(e.to_string()),
            },
        };
        let mut control = ControlServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut functions: Vec<String> = self.handlers.keys().cloned().collect();
        functions.sort();
        let reg = RegisterAgentRequest {
            agent_id: self.cfg.agent_id.clone(),
            game_id: self.cfg.game_id.clone(),
            env: self.cfg.env.clone(),
            version: self.cfg.version.clone(),
            functions,
            labels: self.cfg.labels.clone(),
            descriptors: self.descriptors.clone(),
            session_id: session_id.clone(),
            max_message_bytes: MAX_MESSAGE_BYTES as i64,
        };
        let registered = match control.register_agent(reg).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if matches!(
                    s.code(),
                    Code::PermissionDenied | Code::FailedPrecondition | Code::InvalidArgument
                ) {
                    tracing::error!(code = ?s.code(), message = %s.message(), "registration refused");
                }
                return Ended::Reconnect(format!("RegisterAgent: {}", s.message()));
            }
        };
        *session_id = registered.session_id.clone();
        let interval = Duration::from_secs(registered.heartbeat_interval.max(1) as u64);

        let (out_tx, out_rx) = mpsc::channel::<AgentFrame>(1024);
        let hello = AgentFrame {
            frame: Some(agent_frame::Frame::Hello(Hello {
                agent_id: self.cfg.agent_id.clone(),
                session_id: session_id.clone(),
            })),
        };
        if out_tx.send(hello).await.is_err() {
            return Ended::Reconnect("tunnel closed".into());
        }
        let mut inbound = match control.connect(ReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Ended::Reconnect(format!("Connect: {}", s.message())),
        };
        match inbound.message().await {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Welcome(w)),
            })) => {
                let limit = usize::try_from(w.max_message_bytes).unwrap_or(0);
                self.outbox.set_limit(limit);
                if limit > 0 {
                    self.server_limit
                        .store(limit.min(MAX_MESSAGE_BYTES), Ordering::Relaxed);
                }
            }
            Ok(_) => return Ended::Reconnect("server did not welcome the tunnel".into()),
            Err(s) => return Ended::Reconnect(format!("Connect: {}", s.message())),
        }
        backoff.reset();
        let mut generation = 0;
        self.state.send_modify(|s| {
            s.connected = true;
            s.session_id = session_id.clone();
            s.server = server.to_string();
            s.node_state = registered.node_state;
            s.connects += 1;
            generation = s.connects;
        });
        // Report running jobs and send their unacknowledged events before anything new.
        self.outbox.attach(generation, out_tx.clone()).await;
        tracing::info!(server, agent_id = %self.cfg.agent_id, session = %session_id, resumed = registered.resumed, "tunnel open");

        // Heartbeats run beside the tunnel; a refused heartbeat (session expired) ends it.
        let session_over = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(
            control.clone(),
            Beat {
                agent_id: self.cfg.agent_id.clone(),
                session_id: session_id.clone(),
                interval,
                status: self.status.clone(),
                in_flight: self.in_flight.clone(),
                outbox: self.outbox.clone(),
            },
            session_over.clone(),
        ));
        let ended = loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => break Ended::Shutdown,
                _ = session_over.cancelled() => break Ended::Reconnect("session expired".into()),
                f = inbound.message() => f,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => break Ended::Reconnect("server closed the tunnel".into()),
                Err(s) => break Ended::Reconnect(error_chain(&s)),
            };
            match frame.frame {
                Some(server_frame::Frame::Invoke(inv)) => self.spawn_call(inv, &out_tx),
                Some(server_frame::Frame::Cancel(c)) => {
                    if let Some(r) = self.running.lock().get(&c.request_id) {
                        tracing::debug!(request_id = %c.request_id, reason = %c.reason, "call cancelled");
                        r.cancel(&c.reason);
                    }
                }
                Some(server_frame::Frame::Ack(a)) => self.outbox.ack(&a.job_id, a.seq).await,
                Some(server_frame::Frame::StateChange(sc)) => {
                    if let Some(r) = sc.record {
                        tracing::info!(state = ?NodeState::try_from(r.state).unwrap_or_default(), reason = %r.reason, actor = %r.actor, "node state changed");
                        self.state.send_modify(|s| s.node_state = r.state);
                    }
                }
                Some(server_frame::Frame::Goaway(g)) => {
                    // Keep serving: the server closes the tunnel once calls in flight are done,
                    // and the next session goes to the next server.
                    tracing::info!(reason = %g.reason, "server going away");
                }
                Some(server_frame::Frame::Welcome(_)) | None => {}
            }
        };
        session_over.cancel();
        let _ = heartbeat.await;
        if let Ended::Shutdown = ended {
            let bye = AgentFrame {
                frame: Some(agent_frame::Frame::Goodbye(Goodbye {
                    reason: "agent shutting down".into(),
                })),
            };
            let _ = out_tx.send(bye).await;
            let deadline = Instant::now() + self.cfg.shutdown_grace;
            while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left: Vec<Arc<Running>> = self.running.lock().values().cloned().collect();
            for r in &left {
                r.cancel("the agent shut down");
            }
            // Cancelled jobs report CANCELLED before the tunnel closes.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !left.is_empty()
                && self.in_flight.load(Ordering::Relaxed) > 0
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.outbox.detach(generation).await;
            // Close our side and wait (briefly) for the server to close its side, so the
            // goodbye and the last results are delivered before the process exits.
            drop(out_tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
            tracing::info!(agent_id = %self.cfg.agent_id, "said goodbye");
        } else {
            self.outbox.detach(generation).await;
        }
        ended
    }

    fn spawn_call(&self, inv: Invoke, out: &mpsc::Sender<AgentFrame>) {
        let out = out.clone();
        let request_id = inv.request_id.clone();
        if let Some(why) = croupier_proto::codec::undecodable_reason(inv.payload.as_ref()) {
            // The codec could not decode this call's payload: fail the call, keep the tunnel.
            let message = format!("the agent could not decode the call's payload: {why}");
            tracing::warn!(request_id = %request_id, function = %inv.function_id, %message);
            if inv.job_id.is_empty() {
                let result = failure(&request_id, "INVALID_ARGUMENT", message);
                tokio::spawn(async move { out.send(result).await });
            } else {
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    if outbox.begin(&inv.job_id, &inv.function_id).await {
                        let data = Some(serde_json::json!({ "code": "INVALID_ARGUMENT" }));
                        outbox
                            .emit(&inv.job_id, EventType::Error, message, 0.0, data)
                            .await;
                    }
                });
            }
            return;
        }
        let Some(handler) = self.handlers.get(&inv.function_id).cloned() else {
            let message = format!("this agent does not provide {}", inv.function_id);
            if inv.job_id.is_empty() {
                let result = failure(&request_id, "NOT_FOUND", message);
                tokio::spawn(async move { out.send(result).await });
            } else {
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    if outbox.begin(&inv.job_id, &inv.function_id).await {
                        let data = Some(serde_json::json!({ "code": "NOT_FOUND" }));
                        outbox
                            .emit(&inv.job_id, EventType::Error, message, 0.0, data)
                            .await;
                    }
                });
            }
            return;
        };
        let running = Arc::new(Running::default());
        self.running
            .lock()
            .insert(request_id.clone(), running.clone());
        let running_map = self.running.clone();
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_millis(inv.timeout_ms.max(1) as u64);
        let job_id = inv.job_id.clone();
        let call = Invocation {
            request_id: request_id.clone(),
            function_id: inv.function_id,
            payload: opt_struct_to_json(inv.payload.as_ref()),
            caller: inv.caller,
            game_id: inv.game_id,
            env: inv.env,
            idempotency_key: inv.idempotency_key,
            deadline: Instant::now() + timeout,
            cancel: running.cancel.clone(),
        };
        let env = JobEnv {
            outbox: self.outbox.clone(),
            locals: self.locals.clone(),
            agent_id: self.cfg.agent_id.clone(),
            cancel_grace: self.cfg.cancel_grace,
        };
        let limit = self.server_limit.load(Ordering::Relaxed);
        tokio::spawn(async move {
            if job_id.is_empty() {
                let outcome = run_call(handler, call, timeout, &running, &env.locals).await;
                let frame = match outcome.map(|v| json_to_struct(&v)) {
                    Ok(result) => match croupier_proto::limits::check_payload(Some(&result), limit)
                    {
                        Ok(()) => AgentFrame {
                            frame: Some(agent_frame::Frame::Result(InvokeResult {
                                request_id: request_id.clone(),
                                success: true,
                                result: Some(result),
                                error: String::new(),
                                error_code: String::new(),
                            })),
                        },
                        Err(e) => {
                            tracing::warn!(request_id = %request_id, error = %e, "result refused");
                            failure(
                                &request_id,
                                "RESULT_REFUSED",
                                format!("the handler's result {e}"),
                            )
                        }
                    },
                    Err(e) => failure(&request_id, &e.code, e.message),
                };
                let _ = out.send(frame).await;
            } else {
                run_job(handler, call, timeout, &running, &env).await;
            }
            running_map.lock().remove(&request_id);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Runs a plain invocation: the handler is dropped when the deadline passes or the call is
/// cancelled.
/// What a job needs besides its handler and invocation.
struct JobEnv {
    outbox: Arc<Outbox>,
    locals: crate::job::Locals,
    agent_id: String,
    cancel_grace: Duration,
}

async fn run_call(
    handler: Handler,
    call: Invocation,
    timeout: Duration,
    running: &Running,
    locals: &crate::job::Locals,
) -> Result<serde_json::Value, HandlerError> {
    let fut = match handler {
        Handler::Call(h) => h(call),
        Handler::Job(h) => h(JobContext::new(call, None).with_locals(locals.clone())),
    };
    tokio::select! {
        r = fut => r,
        _ = tokio::time::sleep(timeout) => {
            running.cancel.cancel();
            Err(HandlerError::new("DEADLINE_EXCEEDED", "the call's deadline passed"))
        }
        _ = running.cancel.cancelled() => Err(HandlerError::new("CANCELLED", "the call was cancelled")),
    }
}

/// Runs a job: `START`, the handler (given `cancel_grace` to clean up once cancelled), then one
/// terminal event.
async fn run_job(
    handler: Handler,
    call: Invocation,
    timeout: Duration,
    running: &Running,
    env: &JobEnv,
) {
    let (outbox, agent_id, cancel_grace) = (&env.outbox, env.agent_id.as_str(), env.cancel_grace);
    let job_id = call.request_id.clone();
    if !outbox.begin(&job_id, &call.function_id).await {
        tracing::debug!(job_id = %job_id, "job already running here; repeated Invoke ignored");
        return;
    }
    let start_data = serde_json::json!({ "agent_id": agent_id });
    outbox
        .emit(
            &job_id,
            EventType::Start,
            format!("started on {agent_id}"),
            0.0,
            Some(start_data),
        )
        .await;
    let fut = match handler {
        Handler::Job(h) => {
            h(JobContext::new(call, Some(outbox.clone())).with_locals(env.locals.clone()))
        }
        Handler::Call(h) => h(call),
    };
    tokio::pin!(fut);
    let mut deadline_passed = false;
    let outcome = tokio::select! {
        r = &mut fut => r,
        _ = tokio::time::sleep(timeout) => {
            deadline_passed = true;
            running.cancel.cancel();
            tokio::time::timeout(cancel_grace, &mut fut).await.unwrap_or_else(|_| {
                Err(HandlerError::new("CANCELLED", "the handler did not stop within the cancel grace"))
            })
        }
        _ = running.cancel.cancelled() => {
            tokio::time::timeout(cancel_grace, &mut fut).await.unwrap_or_else(|_| {
                Err(HandlerError::new("CANCELLED", "the handler did not stop within the cancel grace"))
            })
        }
    };
    let reason = running.reason.lock().clone();
    let (kind, message, progress, data) = match (reason, deadline_passed, outcome) {
        (Some(reason), _, _) => (
            EventType::Cancelled,
            reason,
            0.0,
            serde_json::json!({ "code": "CANCELLED" }),
        ),
        (None, true, _) => (
            EventType::Error,
            format!("the job's deadline ({timeout:?}) passed"),
            0.0,
            serde_json::json!({ "code": "DEADLINE_EXCEEDED" }),
        ),
        (None, false, Ok(v)) => (EventType::Done, "done".to_string(), 1.0, v),
        (None, false, Err(e)) => (
            EventType::Error,
            e.message,
            0.0,
            serde_json::json!({ "code": e.code }),
        ),
    };
    outbox
        .emit(&job_id, kind, message, progress, Some(data))
        .await;
}

fn failure(request_id: &str, code: &str, message: String) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Result(InvokeResult {
            request_id: request_id.to_string(),
            success: false,
            result: None,
            error: message,
            error_code: code.to_string(),
        })),
    }
}

/// What the heartbeat loop sends.
struct Beat {
    agent_id: String,
    session_id: String,
    interval: Duration,
    status: Option<StatusFn>,
    in_flight: Arc<AtomicI64>,
    outbox: Arc<Outbox>,
}

async fn heartbeat_loop(
    mut control: ControlServiceClient<tonic::transport::Channel>,
    beat: Beat,
    over: CancellationToken,
) {
    let Beat {
        agent_id,
        session_id,
        interval,
        status,
        in_flight,
        outbox,
    } = beat;
    let mut tick = tokio::time::interval(interval);
    tick.tick().await; // registration counts as the first heartbeat
    loop {
        tokio::select! {
            _ = over.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut s = status.as_ref().map(|f| f()).unwrap_or_default();
        s.insert(
            "in_flight".into(),
            in_flight.load(Ordering::Relaxed).to_string(),
        );
        s.insert("running_jobs".into(), outbox.running().await.to_string());
        let req = HeartbeatRequest {
            agent_id: agent_id.clone(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            status: s,
            session_id: session_id.clone(),
        };
        let sent = tokio::time::timeout(interval, control.heartbeat(req)).await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.code() == Code::NotFound => {
                tracing::warn!(message = %s.message(), "session expired; registering again");
                over.cancel();
                return;
            }
            Ok(Err(s)) => {
                tracing::warn!(code = ?s.code(), message = %s.message(), "heartbeat failed")
            }
            Err(_) => tracing::warn!("heartbeat timed out"),
        }
    }
}
