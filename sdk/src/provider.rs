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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use croupier_proto::common::v1::{FunctionDescriptor, NodeState};
use croupier_proto::control::v1::{
    AgentFrame, Goodbye, HeartbeatRequest, Hello, Invoke, InvokeResult, RegisterAgentRequest,
    agent_frame, control_service_client::ControlServiceClient, server_frame,
};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::backoff::Backoff;
use crate::client::MAX_MESSAGE_BYTES;
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
type Handler = Arc<dyn Fn(Invocation) -> BoxFuture + Send + Sync>;
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
    /// How long shutdown waits for running calls before leaving. Default 10 s.
    pub shutdown_grace: Duration,
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
    status: Option<StatusFn>,
    state: watch::Sender<ProviderState>,
    in_flight: Arc<AtomicI64>,
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
            status: None,
            state: watch::channel(ProviderState::default()).0,
            in_flight: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Registers a function: its descriptor (id, params schema, semantics…) and async handler.
    pub fn function<F, Fut>(mut self, descriptor: FunctionDescriptor, handler: F) -> Self
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, HandlerError>> + Send + 'static,
    {
        let id = descriptor.id.clone();
        self.handlers
            .insert(id.clone(), Arc::new(move |inv| Box::pin(handler(inv))));
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
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProviderError> {
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
            Ok(Some(f)) if matches!(f.frame, Some(server_frame::Frame::Welcome(_))) => {}
            Ok(_) => return Ended::Reconnect("server did not welcome the tunnel".into()),
            Err(s) => return Ended::Reconnect(format!("Connect: {}", s.message())),
        }
        backoff.reset();
        self.state.send_modify(|s| {
            s.connected = true;
            s.session_id = session_id.clone();
            s.server = server.to_string();
            s.node_state = registered.node_state;
            s.connects += 1;
        });
        tracing::info!(server, agent_id = %self.cfg.agent_id, session = %session_id, resumed = registered.resumed, "tunnel open");

        // Heartbeats run beside the tunnel; a refused heartbeat (session expired) ends it.
        let session_over = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(
            control.clone(),
            self.cfg.agent_id.clone(),
            session_id.clone(),
            interval,
            self.status.clone(),
            self.in_flight.clone(),
            session_over.clone(),
        ));
        let running: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
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
                Some(server_frame::Frame::Invoke(inv)) => self.spawn_call(inv, &out_tx, &running),
                Some(server_frame::Frame::Cancel(c)) => {
                    if let Some(t) = lock(&running).get(&c.request_id) {
                        tracing::debug!(request_id = %c.request_id, reason = %c.reason, "call cancelled");
                        t.cancel();
                    }
                }
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
                Some(server_frame::Frame::Ack(_))
                | Some(server_frame::Frame::Welcome(_))
                | None => {}
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
            for t in lock(&running).values() {
                t.cancel();
            }
            // Close our side and wait (briefly) for the server to close its side, so the
            // goodbye and the last results are delivered before the process exits.
            drop(out_tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
            tracing::info!(agent_id = %self.cfg.agent_id, "said goodbye");
        }
        ended
    }

    fn spawn_call(
        &self,
        inv: Invoke,
        out: &mpsc::Sender<AgentFrame>,
        running: &Arc<Mutex<HashMap<String, CancellationToken>>>,
    ) {
        let out = out.clone();
        let request_id = inv.request_id.clone();
        let Some(handler) = self.handlers.get(&inv.function_id).cloned() else {
            let result = failure(
                &request_id,
                "NOT_FOUND",
                format!("this agent does not provide {}", inv.function_id),
            );
            tokio::spawn(async move { out.send(result).await });
            return;
        };
        let cancel = CancellationToken::new();
        lock(running).insert(request_id.clone(), cancel.clone());
        let running = running.clone();
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_millis(inv.timeout_ms.max(1) as u64);
        let call = Invocation {
            request_id: request_id.clone(),
            function_id: inv.function_id,
            payload: opt_struct_to_json(inv.payload.as_ref()),
            caller: inv.caller,
            game_id: inv.game_id,
            env: inv.env,
            idempotency_key: inv.idempotency_key,
            deadline: Instant::now() + timeout,
            cancel: cancel.clone(),
        };
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = handler(call) => r,
                _ = tokio::time::sleep(timeout) => {
                    cancel.cancel();
                    Err(HandlerError::new("DEADLINE_EXCEEDED", "the call's deadline passed"))
                }
                _ = cancel.cancelled() => Err(HandlerError::new("CANCELLED", "the call was cancelled")),
            };
            let frame = match outcome {
                Ok(v) => AgentFrame {
                    frame: Some(agent_frame::Frame::Result(InvokeResult {
                        request_id: request_id.clone(),
                        success: true,
                        result: Some(json_to_struct(&v)),
                        error: String::new(),
                        error_code: String::new(),
                    })),
                },
                Err(e) => failure(&request_id, &e.code, e.message),
            };
            let _ = out.send(frame).await;
            lock(&running).remove(&request_id);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn heartbeat_loop(
    mut control: ControlServiceClient<tonic::transport::Channel>,
    agent_id: String,
    session_id: String,
    interval: Duration,
    status: Option<StatusFn>,
    in_flight: Arc<AtomicI64>,
    over: CancellationToken,
) {
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
