//! [`ControlPlane`]: agent sessions, heartbeats and liveness, the tunnel, node states.
//!
//! A session is created by `RegisterAgent` and lives while heartbeats arrive: after
//! `missed_heartbeats` intervals without one, the session is expired and its registration
//! deleted (watchers see `REMOVED`). Registrations live under one store lease per server
//! (`lease`), which only a dead server lets end: heartbeats do not write to the store. Work reaches the agent only through its
//! `Connect` tunnel; an agent whose tunnel is down is registered but not routable.
//!
//! Layout:
//! - `session` — one agent's session: tunnel, pending calls, jobs.
//! - `register` — `RegisterAgent` as named steps.
//! - `state` — `SetNodeState` and the agent's acknowledgement of node state changes.
//! - `tunnel` — the `Connect` tunnel, its read loop and the `AgentLink` impl.
//! - `lease` — the server's agents' lease and the registration writes under it.
//! - `assign` — function assignments: `GetAssignments`, `PutAssignment`, `DeleteAssignment`,
//!   `ListAssignments`, and telling agents theirs changed.
//! - `fleet` — node events and inventories: recorded, read, followed, compared.
//! - `governance` — `GetPolicy`, `PutPolicy`, `TestPolicy` and `ListAudit`.
//! - `users` — console users and API tokens: `PutUser`, `DeleteUser`, `ListUsers`,
//!   `CreateToken`, `RevokeToken`, `ListTokens`.

mod assign;
mod fleet;
mod governance;
mod lease;
mod register;
mod session;
mod state;
mod tunnel;
mod users;

pub use register::check_descriptor;
pub use session::Frames;
use session::*;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::audit::{AuditLog, AuditRecord};
use crate::error::ControlError;
use crate::link::JobSink;
use croupier_proto::common::v1 as common;
use croupier_proto::control::v1::{self as pb, ServerFrame, server_frame};
use croupier_proto::limits::{DEFAULT_MAX_MESSAGE_BYTES, excerpt};
use croupier_registry::identity::{Identity, Role};
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::model::{NodeRecord, NodeState, now_ms};
use croupier_registry::schema::SchemaLimits;
use croupier_registry::service::{Presence, PresenceSource};
use croupier_registry::store::Store;
use croupier_registry::view::RegistryView;
use parking_lot::RwLock;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Control-plane settings.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// This server's id (recorded as the owner of the agents it holds).
    pub server_id: String,
    /// How often agents heartbeat. Default 15 s.
    pub heartbeat_interval: Duration,
    /// Heartbeats an agent may miss before it is offline. Default 3.
    pub missed_heartbeats: u32,
    /// Most labels an agent may carry. Default 64.
    pub max_labels: usize,
    /// Most functions an agent may provide. Default 1024.
    pub max_functions: usize,
    /// Frames queued towards one agent before senders wait. Default 1024.
    pub tunnel_queue: usize,
    /// The largest message the server decodes and sends (`limits.max_message_bytes`). Default
    /// 10 MiB. No frame larger than this, or than the agent's own limit, goes down a tunnel.
    pub max_message_bytes: usize,
    /// Most bytes of one function descriptor, encoded. Default 64 KiB.
    pub max_descriptor_bytes: usize,
    /// Most functions (registered or provided) in one game and environment. Default 10 000.
    pub max_functions_per_scope: usize,
    /// Most entries of a heartbeat's status map. Default 64.
    pub max_status_entries: usize,
    /// Most bytes of a heartbeat's status map (keys and values). Default 16 KiB.
    pub max_status_bytes: usize,
    /// Most characters of a free-text field (a node-state reason, a goodbye). Default 1024.
    pub max_text_chars: usize,
    /// Bounds on the JSON Schemas in descriptors.
    pub schema_limits: SchemaLimits,
    /// Node events kept in memory for replay. Default 10 000.
    pub events_retained: usize,
    /// Oldest node event kept. Default 24 h.
    pub events_max_age: Duration,
    /// Inventory versions kept per node. Default 20.
    pub inventory_versions: usize,
    /// How long node metrics are kept, raw and per step.
    pub metrics_history: crate::fleet::HistoryTimes,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            server_id: "server".into(),
            heartbeat_interval: Duration::from_secs(15),
            missed_heartbeats: 3,
            max_labels: 64,
            max_functions: 1024,
            tunnel_queue: 1024,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_descriptor_bytes: 64 * 1024,
            max_functions_per_scope: 10_000,
            max_status_entries: 64,
            max_status_bytes: 16 * 1024,
            max_text_chars: 1024,
            schema_limits: SchemaLimits::default(),
            events_retained: 10_000,
            events_max_age: Duration::from_secs(24 * 3600),
            inventory_versions: 20,
            metrics_history: crate::fleet::HistoryTimes::default(),
        }
    }
}

impl ControlConfig {
    /// Time without heartbeat after which an agent is offline.
    pub fn offline_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats.max(1)
    }
}

/// The control plane. Share it as `Arc<ControlPlane>`.
pub struct ControlPlane {
    cfg: ControlConfig,
    store: Arc<dyn Store>,
    view: Arc<RegistryView>,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    audit: AuditLog,
    draining: AtomicBool,
    generations: AtomicU64,
    jobs: OnceLock<Arc<dyn JobSink>>,
    lease: Arc<lease::AgentLease>,
    /// Registrations writing to the store at once ([`MAX_CONCURRENT_REGISTRATIONS`]).
    registering: tokio::sync::Semaphore,
    /// Node events of the agents this server holds.
    events: Arc<crate::fleet::EventLog>,
    /// Metric history of the agents this server holds.
    metrics: crate::fleet::MetricsHistory,
    /// Ends event followers when the server shuts down.
    shutdown: CancellationToken,
    /// The assignments revision agents were last told about.
    assignments_told: AtomicU64,
}

/// Registrations that write to the store at once; the others wait their turn.
pub const MAX_CONCURRENT_REGISTRATIONS: usize = 32;

impl ControlPlane {
    /// Builds the control plane and starts its liveness task, which ends with `shutdown`.
    pub fn start(
        cfg: ControlConfig,
        store: Arc<dyn Store>,
        view: Arc<RegistryView>,
        audit: AuditLog,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let lease_ttl = cfg.offline_after() + Duration::from_secs(1);
        let plane = Arc::new(ControlPlane {
            store,
            view,
            sessions: RwLock::new(HashMap::new()),
            audit,
            draining: AtomicBool::new(false),
            generations: AtomicU64::new(1),
            jobs: OnceLock::new(),
            lease: Arc::new(lease::AgentLease::new(lease_ttl)),
            registering: tokio::sync::Semaphore::new(MAX_CONCURRENT_REGISTRATIONS),
            events: Arc::new(crate::fleet::EventLog::new(
                cfg.events_retained,
                cfg.events_max_age,
            )),
            metrics: crate::fleet::MetricsHistory::new(cfg.metrics_history),
            shutdown: shutdown.clone(),
            assignments_told: AtomicU64::new(0),
            cfg,
        });
        let task = plane.clone();
        let stop = shutdown.clone();
        croupier_proto::task::spawn("liveness", async move { task.run_liveness(stop).await });
        let task = plane.clone();
        croupier_proto::task::spawn(
            "agents lease",
            plane
                .lease
                .clone()
                .run(plane.store.clone(), shutdown, move |lease| {
                    let task = task.clone();
                    async move { task.rewrite_registrations(lease).await }
                }),
        );
        plane
    }

    /// The configuration.
    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    /// The registry view.
    pub fn view(&self) -> &Arc<RegistryView> {
        &self.view
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Hands job frames from agents (events, reports) and lost agents to `sink`. Set once,
    /// before agents connect; later calls are ignored.
    pub fn set_job_sink(&self, sink: Arc<dyn JobSink>) {
        let _ = self.jobs.set(sink);
    }

    /// Tunnels open on this server, and calls sent down them not answered yet (for the
    /// scrape-time gauges).
    pub fn load_summary(&self) -> (usize, usize) {
        let sessions = self.sessions.read();
        let tunnels = sessions
            .values()
            .filter(|s| s.tunnel.lock().is_some())
            .count();
        let in_flight = sessions.values().map(|s| s.pending.lock().len()).sum();
        (tunnels, in_flight)
    }

    fn session(&self, agent_id: &str) -> Option<Arc<Session>> {
        self.sessions.read().get(agent_id).cloned()
    }

    fn require_agent(who: &Identity, agent_id: &str, action: &str) -> Result<(), ControlError> {
        match who.role {
            Role::Agent if who.name == agent_id => Ok(()),
            Role::Agent => Err(ControlError::NotAllowed(format!(
                "identity {who} may only {action} as agent {:?}, not {agent_id:?}",
                who.name
            ))),
            _ => Err(ControlError::NotAllowed(format!(
                "identity {who} may not {action}: only an agent certificate \
                 (spiffe://croupier/agent/{agent_id}) may"
            ))),
        }
    }

    /// Handles `Heartbeat`.
    pub fn heartbeat(
        &self,
        who: &Identity,
        req: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, ControlError> {
        Self::require_agent(who, &req.agent_id, "heartbeat")?;
        let session = self
            .session(&req.agent_id)
            .filter(|s| req.session_id.is_empty() || s.session_id == req.session_id)
            .ok_or_else(|| expired(&req.agent_id))?;
        self.beat(&session, req.status)?;
        Ok(pb::HeartbeatResponse {
            success: true,
            node_state: common::NodeState::from(self.view.node(&req.agent_id).state) as i32,
        })
    }

    /// A heartbeat of `session` (by rpc or over its tunnel): checks the status map's limits,
    /// then marks the session alive and keeps the status.
    fn beat(&self, session: &Session, status: HashMap<String, String>) -> Result<(), ControlError> {
        self.check_status(&status)?;
        let since = session.last_heartbeat.lock().elapsed();
        metrics::histogram!(crate::metrics::HEARTBEAT_DELAY).record(since.as_secs_f64());
        session.touch();
        session.take_summary(&status);
        *session.status.lock() = status;
        Ok(())
    }

    fn check_status(&self, status: &HashMap<String, String>) -> Result<(), ControlError> {
        let bytes: usize = status.iter().map(|(k, v)| k.len() + v.len()).sum();
        if status.len() > self.cfg.max_status_entries || bytes > self.cfg.max_status_bytes {
            return Err(ControlError::LimitReached(format!(
                "heartbeat status has {} entries, {bytes} bytes; at most {} entries and {} bytes \
                 are allowed (limits.max_status_entries, limits.max_status_bytes)",
                status.len(),
                self.cfg.max_status_entries,
                self.cfg.max_status_bytes
            )));
        }
        Ok(())
    }

    /// Ends a session: closes its tunnel, fails its pending invocations, forgets it and deletes
    /// its registration.
    async fn expire(&self, session: &Arc<Session>, reason: &'static str) {
        metrics::counter!(crate::metrics::AGENT_EXPIRATIONS, "reason" => reason).increment(1);
        session.tunnel.lock().take();
        session.fail_pending(None);
        self.forget(session, reason).await;
        if let Some(sink) = self.jobs.get() {
            sink.agent_gone(&session.agent_id, reason);
        }
        self.node_event(
            &session.agent_id,
            "agent.offline",
            "",
            "offline",
            format!("agent session ended: {reason}"),
            &[("reason", reason.into())],
        );
    }

    /// Forgets a session and deletes its registration without touching its tunnel.
    async fn forget(&self, session: &Arc<Session>, reason: &str) {
        {
            let mut sessions = self.sessions.write();
            if sessions
                .get(&session.agent_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.agent_id);
            }
        }
        self.delete_registration(session).await;
        tracing::info!(agent_id = %session.agent_id, reason, "agent session ended");
    }

    async fn run_liveness(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.cfg.heartbeat_interval / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut swept, mut relayed) = (Instant::now(), Instant::now());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if swept.elapsed() >= Duration::from_secs(60) {
                swept = Instant::now();
                self.metrics.sweep(now_ms());
            }
            if relayed.elapsed() >= Duration::from_secs(1) {
                relayed = Instant::now();
                self.relay_states();
                self.relay_assignments();
            }
            let limit = self.cfg.offline_after();
            let stale: Vec<Arc<Session>> = self
                .sessions
                .read()
                .values()
                .filter(|s| s.last_heartbeat.lock().elapsed() > limit)
                .cloned()
                .collect();
            for s in stale {
                tracing::warn!(agent_id = %s.agent_id, missed = self.cfg.missed_heartbeats, "agent offline: heartbeats missed");
                self.expire(&s, "heartbeats missed").await;
            }
        }
    }

    /// Begins shutdown: refuses new registrations, tells every agent to go away, waits up to
    /// `grace` for in-flight invocations, then closes the tunnels.
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::Relaxed);
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        for s in &sessions {
            if let Some(t) = s.tunnel() {
                let _ = t.tx.try_send(out(ServerFrame {
                    frame: Some(server_frame::Frame::Goaway(pb::Goaway {
                        reason: "server shutting down".into(),
                    })),
                }));
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && sessions.iter().any(|s| !s.pending.lock().is_empty()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for s in &sessions {
            s.tunnel.lock().take();
            s.fail_pending(None);
        }
    }
}

fn expired(agent_id: &str) -> ControlError {
    ControlError::NoSession(format!(
        "agent {agent_id:?} has no live session on this server (expired or never registered); \
         call RegisterAgent again"
    ))
}

impl PresenceSource for ControlPlane {
    fn presence(&self, agent_id: &str) -> Option<Presence> {
        let s = self.session(agent_id)?;
        Some(Presence {
            online: s.tunnel().is_some(),
            last_heartbeat: s.last_heartbeat_ms.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            status: s.status.lock().clone(),
        })
    }
}
