//! [`ControlPlane`]: agent sessions, heartbeats and liveness, the tunnel, node states.
//!
//! A session is created by `RegisterAgent` and lives while heartbeats arrive: after
//! `missed_heartbeats` intervals without one, the session is expired, its lease revoked and its
//! registration disappears (watchers see `REMOVED`). Work reaches the agent only through its
//! `Connect` tunnel; an agent whose tunnel is down is registered but not routable.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use croupier_proto::common::v1 as common;
use croupier_proto::control::v1::{
    self as pb, AgentFrame, InvokeResult, ServerFrame, agent_frame, server_frame,
};
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_proto::limits::{DEFAULT_MAX_MESSAGE_BYTES, check_payload, excerpt};
use croupier_registry::identity::{Identity, Role};
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::model::{
    AgentRecord, DescriptorRecord, DescriptorSource, NodeRecord, NodeState, ProvidedFunction,
    now_ms,
};
use croupier_registry::schema::{SchemaLimits, check_limits};
use croupier_registry::service::{Presence, PresenceSource};
use croupier_registry::store::{LeaseId, Store};
use croupier_registry::view::RegistryView;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::audit::{AuditLog, AuditRecord};
use crate::error::ControlError;
use crate::link::{AgentLink, JobSink, LinkError, Load};

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
        }
    }
}

impl ControlConfig {
    /// Time without heartbeat after which an agent is offline.
    pub fn offline_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats.max(1)
    }
}

type FrameTx = mpsc::Sender<Result<ServerFrame, Status>>;

#[derive(Clone)]
struct Tunnel {
    generation: u64,
    tx: FrameTx,
}

struct Pending {
    generation: u64,
    tx: oneshot::Sender<Result<InvokeResult, LinkError>>,
}

struct Session {
    agent_id: String,
    session_id: String,
    key: String,
    lease: LeaseId,
    last_heartbeat: Mutex<Instant>,
    last_heartbeat_ms: AtomicI64,
    status: Mutex<HashMap<String, String>>,
    tunnel: Mutex<Option<Tunnel>>,
    pending: Mutex<HashMap<String, Pending>>,
    in_flight: AtomicI64,
    /// Jobs running on the agent, as seen from here (for routing).
    running: RunningJobs,
    /// `cpu_percent` of the last heartbeat in tenths of a percent; -1 when it had none.
    cpu_tenths: AtomicI64,
    /// The largest frame the agent accepts: its own limit and the server's, whichever is less.
    max_frame: usize,
}

impl Session {
    fn tunnel(&self) -> Option<Tunnel> {
        lock(&self.tunnel).clone()
    }

    fn touch(&self) {
        *lock(&self.last_heartbeat) = Instant::now();
        self.last_heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Takes the CPU figure of a heartbeat's status summary, parsed once here so that routing
    /// reads an atomic.
    fn take_summary(&self, status: &HashMap<String, String>) {
        let cpu = status
            .get("cpu_percent")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(-1, |c| (c.clamp(0.0, 100.0) * 10.0) as i64);
        self.cpu_tenths.store(cpu, Ordering::Relaxed);
    }

    fn load(&self) -> Load {
        let cpu = self.cpu_tenths.load(Ordering::Relaxed);
        Load {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            jobs: self.running.count.load(Ordering::Relaxed),
            cpu_percent: (cpu >= 0).then(|| cpu as f32 / 10.0),
        }
    }

    /// Refuses a frame the agent could not decode (larger than its limit).
    fn check_frame(&self, frame: &ServerFrame) -> Result<(), LinkError> {
        use prost::Message as _;
        let bytes = frame.encoded_len();
        if bytes > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                agent: self.agent_id.clone(),
                bytes,
                limit: self.max_frame,
            });
        }
        Ok(())
    }

    /// Fails every pending invocation sent over `generation` (or all, with None).
    fn fail_pending(&self, generation: Option<u64>) {
        let failed: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| generation.is_none_or(|g| p.generation == g))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in failed {
            let _ = p.tx.send(Err(LinkError::Lost(self.agent_id.clone())));
        }
    }
}

/// The jobs an agent runs, as this server sees them: added when a job's `Invoke` goes down the
/// tunnel, removed at the job's terminal event, replaced by the agent's `JobsReport` on every
/// new tunnel. A set, so events re-sent after a reconnect count once; `count` mirrors its size
/// for routing.
#[derive(Default)]
struct RunningJobs {
    ids: Mutex<HashSet<String>>,
    count: AtomicI64,
}

impl RunningJobs {
    fn update(&self, change: impl FnOnce(&mut HashSet<String>)) {
        let mut ids = lock(&self.ids);
        change(&mut ids);
        self.count.store(ids.len() as i64, Ordering::Relaxed);
    }

    fn started(&self, job_id: &str) {
        self.update(|ids| {
            ids.insert(job_id.to_string());
        });
    }

    /// Notes `event` of a job: a terminal one ends the job.
    fn event(&self, event: &JobEvent) {
        let terminal = matches!(
            EventType::try_from(event.r#type),
            Ok(EventType::Done | EventType::Error | EventType::Cancelled)
        );
        if terminal {
            self.ended(&event.job_id);
        }
    }

    fn ended(&self, job_id: &str) {
        self.update(|ids| {
            ids.remove(job_id);
        });
    }

    fn reported(&self, jobs: &[pb::RunningJob]) {
        self.update(|ids| *ids = jobs.iter().map(|j| j.job_id.clone()).collect());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
}

impl ControlPlane {
    /// Builds the control plane and starts its liveness task, which ends with `shutdown`.
    pub fn start(
        cfg: ControlConfig,
        store: Arc<dyn Store>,
        view: Arc<RegistryView>,
        audit: AuditLog,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let plane = Arc::new(ControlPlane {
            cfg,
            store,
            view,
            sessions: RwLock::new(HashMap::new()),
            audit,
            draining: AtomicBool::new(false),
            generations: AtomicU64::new(1),
            jobs: OnceLock::new(),
        });
        let task = plane.clone();
        tokio::spawn(async move { task.run_liveness(shutdown).await });
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

    fn session(&self, agent_id: &str) -> Option<Arc<Session>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent_id)
            .cloned()
    }

    fn require_agent(who: &Identity, agent_id: &str, action: &str) -> Result<(), ControlError> {
        match who.role {
            Role::Agent if who.name == agent_id => Ok(()),
            Role::Agent => Err(ControlError::PermissionDenied(format!(
                "identity {who} may only {action} as agent {:?}, not {agent_id:?}",
                who.name
            ))),
            _ => Err(ControlError::PermissionDenied(format!(
                "identity {who} may not {action}: only an agent certificate \
                 (spiffe://croupier/agent/{agent_id}) may"
            ))),
        }
    }

    /// Handles `RegisterAgent`: checks the request, resumes or starts the session, stores the
    /// descriptors the agent may write and its registration (under the session's lease).
    #[tracing::instrument(skip_all, fields(agent_id = %req.agent_id))]
    pub async fn register(
        &self,
        who: &Identity,
        req: pb::RegisterAgentRequest,
        addr: Option<SocketAddr>,
    ) -> Result<pb::RegisterAgentResponse, ControlError> {
        self.check_registration(who, &req)?;
        let node = self.view.node(&req.agent_id);
        if node.state == NodeState::Disabled {
            return Err(ControlError::FailedPrecondition(format!(
                "node {} is disabled (by {} : {:?}); an admin must set it back with \
                 `croupier node state {} normal` before it can register",
                req.agent_id,
                node.actor,
                excerpt(&node.reason, 200),
                req.agent_id
            )));
        }
        let functions = provided_functions(&req)?;
        let writes = self.descriptor_writes(&req, &functions)?;

        // Resume the same session when asked and still alive here.
        let existing = self.session(&req.agent_id);
        let key = keys::agent(&req.game_id, &req.env, &req.agent_id);
        let resumed = existing.as_ref().is_some_and(|s| {
            !req.session_id.is_empty() && s.session_id == req.session_id && s.key == key
        });
        let (session_id, lease) = match (&existing, resumed) {
            (Some(s), true) => (s.session_id.clone(), s.lease),
            _ => {
                if let Some(old) = &existing {
                    // A new session replaces the old one (the agent restarted).
                    self.expire(old, "replaced by a new registration").await;
                }
                let lease = self
                    .store
                    .grant_lease(self.cfg.offline_after() + Duration::from_secs(1))
                    .await
                    .map_err(ControlError::store("granting the agent's lease"))?;
                (uuid::Uuid::new_v4().to_string(), lease)
            }
        };

        let record = AgentRecord {
            agent_id: req.agent_id.clone(),
            game_id: req.game_id.clone(),
            env: req.env.clone(),
            version: req.version.clone(),
            functions: functions.clone(),
            labels: req.labels.clone().into_iter().collect(),
            owner: self.cfg.server_id.clone(),
            addr: addr.map(|a| a.to_string()).unwrap_or_default(),
            session_id: session_id.clone(),
            registered_at: now_ms(),
        };
        for (key, value) in writes {
            self.store
                .put(&key, value, None)
                .await
                .map_err(ControlError::store(format!("storing descriptor {key}")))?;
        }
        let value = serde_json::to_vec(&record).map_err(|e| {
            ControlError::InvalidArgument(format!("agent record cannot be encoded: {e}"))
        })?;
        let rev = self
            .store
            .put(&key, value, Some(lease))
            .await
            .map_err(ControlError::store("storing the agent registration"))?;

        let max_frame = match req.max_message_bytes {
            n if n > 0 => (n as usize).min(self.cfg.max_message_bytes),
            _ => DEFAULT_MAX_MESSAGE_BYTES.min(self.cfg.max_message_bytes),
        };
        let session = match existing.filter(|_| resumed) {
            Some(s) => s,
            None => {
                let s = Arc::new(Session {
                    agent_id: req.agent_id.clone(),
                    session_id: session_id.clone(),
                    key,
                    lease,
                    last_heartbeat: Mutex::new(Instant::now()),
                    last_heartbeat_ms: AtomicI64::new(now_ms()),
                    status: Mutex::new(HashMap::new()),
                    tunnel: Mutex::new(None),
                    pending: Mutex::new(HashMap::new()),
                    in_flight: AtomicI64::new(0),
                    running: RunningJobs::default(),
                    cpu_tenths: AtomicI64::new(-1),
                    max_frame,
                });
                self.sessions
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(req.agent_id.clone(), s.clone());
                s
            }
        };
        session.touch();
        self.view.wait_for(rev, Duration::from_secs(5)).await;
        tracing::info!(
            agent_id = %req.agent_id,
            game_id = %req.game_id,
            env = %req.env,
            functions = functions.len(),
            resumed,
            "agent registered"
        );
        self.audit.record(AuditRecord {
            at: now_ms(),
            who: who.uri(),
            action: "register_agent",
            target: req.agent_id.clone(),
            outcome: "ok".into(),
            details: serde_json::json!({"game_id": req.game_id, "env": req.env, "resumed": resumed}),
        });
        Ok(pb::RegisterAgentResponse {
            success: true,
            agent_id: req.agent_id,
            heartbeat_interval: self.cfg.heartbeat_interval.as_secs().max(1) as i64,
            session_id,
            resumed,
            node_state: common::NodeState::from(node.state) as i32,
        })
    }

    /// The checks of a registration that need nothing but the request: ids, identity, draining
    /// and the size limits of labels, functions and descriptors.
    fn check_registration(
        &self,
        who: &Identity,
        req: &pb::RegisterAgentRequest,
    ) -> Result<(), ControlError> {
        check_id("agent_id", &req.agent_id).map_err(ControlError::InvalidArgument)?;
        Self::require_agent(who, &req.agent_id, "register")?;
        if self.draining.load(Ordering::Relaxed) {
            return Err(ControlError::Unavailable(
                "server is shutting down; register with another server or retry".into(),
            ));
        }
        check_id("game_id", &req.game_id).map_err(ControlError::InvalidArgument)?;
        check_id("env", &req.env).map_err(ControlError::InvalidArgument)?;
        if req.labels.len() > self.cfg.max_labels {
            return Err(ControlError::ResourceExhausted(format!(
                "agent {} has {} labels; at most {} are allowed",
                req.agent_id,
                req.labels.len(),
                self.cfg.max_labels
            )));
        }
        for (k, v) in &req.labels {
            if k.is_empty() || k.len() > 128 || v.len() > 256 {
                return Err(ControlError::InvalidArgument(format!(
                    "label {:?}: keys must be 1-128 characters and values at most 256",
                    excerpt(k, 40)
                )));
            }
        }
        if req.version.chars().count() > 128 {
            return Err(ControlError::InvalidArgument(
                "version: at most 128 characters".into(),
            ));
        }
        let n = req.functions.len() + req.descriptors.len();
        if n > self.cfg.max_functions {
            return Err(ControlError::ResourceExhausted(format!(
                "agent {} declares {n} functions; at most {} are allowed",
                req.agent_id, self.cfg.max_functions
            )));
        }
        for d in &req.descriptors {
            check_id("descriptor id", &d.id).map_err(ControlError::InvalidArgument)?;
            check_descriptor(d, self.cfg.max_descriptor_bytes, &self.cfg.schema_limits)
                .map_err(ControlError::InvalidArgument)?;
        }
        Ok(())
    }

    /// The descriptor writes a registration makes, after checking that the agent may make them:
    /// an admin's descriptor is never overwritten, and a descriptor another live agent declared
    /// differently is not either (the registration is refused, naming that agent). Also keeps
    /// the number of functions in the game and env under its limit.
    fn descriptor_writes(
        &self,
        req: &pb::RegisterAgentRequest,
        functions: &[ProvidedFunction],
    ) -> Result<Vec<(String, Vec<u8>)>, ControlError> {
        let declared: HashMap<&str, &common::FunctionDescriptor> =
            req.descriptors.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut writes = Vec::new();
        let mut new_functions = 0usize;
        let mut scope_count = None;
        for f in functions {
            let fk = croupier_registry::view::FnKey::new(&req.game_id, &req.env, &f.id);
            let (count, known) = self.view.function_count(&fk);
            scope_count.get_or_insert(count);
            if !known {
                new_functions += 1;
            }
            let current = self.view.descriptor(&fk);
            if current
                .as_ref()
                .is_some_and(|c| c.source == DescriptorSource::Admin)
            {
                continue; // an admin's descriptor wins over what agents declare
            }
            let mut proposed = match declared.get(f.id.as_str()) {
                Some(d) => {
                    DescriptorRecord::from_proto(&req.game_id, &req.env, d, DescriptorSource::Agent)
                }
                None if current.is_some() => continue,
                None => DescriptorRecord {
                    game_id: req.game_id.clone(),
                    env: req.env.clone(),
                    id: f.id.clone(),
                    name: f.id.clone(),
                    ..Default::default()
                },
            };
            proposed.declared_by = req.agent_id.clone();
            if let Some(c) = &current {
                if c.same_content(&proposed) {
                    continue;
                }
                if let Some(owner) = self.other_declarer(c, &fk, &req.agent_id) {
                    return Err(ControlError::FailedPrecondition(format!(
                        "function {} in game {:?} env {:?} is declared differently by live agent \
                         {owner}; declare the same descriptor, stop {owner} first, or have an \
                         admin set the descriptor (`croupier function register`)",
                        f.id, req.game_id, req.env
                    )));
                }
            }
            let value = serde_json::to_vec(&proposed).map_err(|e| {
                ControlError::Internal(format!("descriptor {} cannot be encoded: {e}", f.id))
            })?;
            writes.push((keys::function(&req.game_id, &req.env, &f.id), value));
        }
        let count = scope_count.unwrap_or(0);
        if new_functions > 0 && count + new_functions > self.cfg.max_functions_per_scope {
            return Err(ControlError::ResourceExhausted(format!(
                "game {:?} env {:?} has {count} functions; {new_functions} more would pass the \
                 limit of {} (limits.max_functions_per_scope)",
                req.game_id, req.env, self.cfg.max_functions_per_scope
            )));
        }
        Ok(writes)
    }

    /// Another live agent that provides the function and stands behind its current descriptor:
    /// the agent that declared it, or, for a descriptor stored without that record, any other
    /// live provider.
    fn other_declarer(
        &self,
        current: &DescriptorRecord,
        fk: &croupier_registry::view::FnKey,
        agent_id: &str,
    ) -> Option<String> {
        let providers = self.view.candidates(fk);
        let live = |id: &str| id != agent_id && providers.iter().any(|c| c.agent.agent_id == id);
        if current.declared_by.is_empty() {
            providers
                .iter()
                .map(|c| c.agent.agent_id.clone())
                .find(|id| live(id))
        } else {
            live(&current.declared_by).then(|| current.declared_by.clone())
        }
    }

    /// Handles `Heartbeat`.
    pub async fn heartbeat(
        &self,
        who: &Identity,
        req: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, ControlError> {
        Self::require_agent(who, &req.agent_id, "heartbeat")?;
        self.check_status(&req.status)?;
        let session = self
            .session(&req.agent_id)
            .filter(|s| req.session_id.is_empty() || s.session_id == req.session_id)
            .ok_or_else(|| expired(&req.agent_id))?;
        if let Err(e) = self.store.keep_alive(session.lease).await {
            if matches!(e, croupier_registry::store::StoreError::LeaseNotFound(_)) {
                self.expire(&session, "lease ended").await;
                return Err(expired(&req.agent_id));
            }
            // The store is down, not the agent: liveness is this server's to judge (the agent
            // heartbeats and holds its tunnel), so the session stays alive; the lease is only
            // the backup for a server that died.
            tracing::warn!(agent_id = %req.agent_id, error = %e, "refreshing the agent's lease failed; the session stays alive");
        }
        session.touch();
        session.take_summary(&req.status);
        *lock(&session.status) = req.status;
        Ok(pb::HeartbeatResponse {
            success: true,
            node_state: common::NodeState::from(self.view.node(&req.agent_id).state) as i32,
        })
    }

    fn check_status(&self, status: &HashMap<String, String>) -> Result<(), ControlError> {
        let bytes: usize = status.iter().map(|(k, v)| k.len() + v.len()).sum();
        if status.len() > self.cfg.max_status_entries || bytes > self.cfg.max_status_bytes {
            return Err(ControlError::ResourceExhausted(format!(
                "heartbeat status has {} entries, {bytes} bytes; at most {} entries and {} bytes \
                 are allowed (limits.max_status_entries, limits.max_status_bytes)",
                status.len(),
                self.cfg.max_status_entries,
                self.cfg.max_status_bytes
            )));
        }
        Ok(())
    }

    /// Handles `Connect`: validates the Hello, attaches the tunnel to the session and returns
    /// the stream of frames for the agent.
    pub async fn connect(
        self: &Arc<Self>,
        who: &Identity,
        mut inbound: Streaming<AgentFrame>,
    ) -> Result<ReceiverStream<Result<ServerFrame, Status>>, ControlError> {
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| {
                ControlError::InvalidArgument("no Hello frame within 10 s of Connect".into())
            })?
            .map_err(|e| ControlError::InvalidArgument(format!("reading Hello: {e}")))?;
        let hello = match first.and_then(|f| f.frame) {
            Some(agent_frame::Frame::Hello(h)) => h,
            _ => {
                return Err(ControlError::InvalidArgument(
                    "the first frame on Connect must be Hello{agent_id, session_id}".into(),
                ));
            }
        };
        Self::require_agent(who, &hello.agent_id, "connect")?;
        let session = self
            .session(&hello.agent_id)
            .filter(|s| s.session_id == hello.session_id)
            .ok_or_else(|| expired(&hello.agent_id))?;
        let (tx, rx) = mpsc::channel(self.cfg.tunnel_queue);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let welcome = ServerFrame {
            frame: Some(server_frame::Frame::Welcome(pb::Welcome {
                session_id: session.session_id.clone(),
                node_state: common::NodeState::from(self.view.node(&hello.agent_id).state) as i32,
                max_message_bytes: self.cfg.max_message_bytes as i64,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| ControlError::Unavailable("tunnel closed during setup".into()))?;
        let previous = lock(&session.tunnel).replace(Tunnel {
            generation,
            tx: tx.clone(),
        });
        if let Some(prev) = previous {
            session.fail_pending(Some(prev.generation));
        }
        tracing::info!(agent_id = %hello.agent_id, generation, "tunnel open");
        let plane = self.clone();
        tokio::spawn(async move {
            plane.read_tunnel(session, generation, inbound).await;
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn read_tunnel(
        self: Arc<Self>,
        session: Arc<Session>,
        generation: u64,
        mut inbound: Streaming<AgentFrame>,
    ) {
        let mut said_goodbye = false;
        loop {
            let frame = match inbound.message().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(agent_id = %session.agent_id, error = %e, "tunnel read failed");
                    break;
                }
            };
            match frame.frame {
                Some(agent_frame::Frame::Result(r)) => {
                    let pending = lock(&session.pending).remove(&r.request_id);
                    if let Some(p) = pending {
                        let _ = p.tx.send(Ok(self.checked_result(&session.agent_id, r)));
                    }
                }
                Some(agent_frame::Frame::Goodbye(g)) => {
                    // The agent takes no new work; keep reading so the answers of calls already
                    // running still arrive, until the agent closes the stream.
                    let reason = excerpt(&g.reason, self.cfg.max_text_chars);
                    tracing::info!(agent_id = %session.agent_id, reason = %reason, "agent said goodbye");
                    said_goodbye = true;
                    self.forget(&session, "agent said goodbye").await;
                }
                Some(agent_frame::Frame::JobEvent(e)) => match (self.jobs.get(), e.event) {
                    (Some(sink), Some(ev)) => {
                        session.running.event(&ev);
                        sink.event(&session.agent_id, generation, ev).await
                    }
                    _ => {
                        tracing::debug!(agent_id = %session.agent_id, "job event dropped: jobs are not served")
                    }
                },
                Some(agent_frame::Frame::JobsReport(r)) => {
                    session.running.reported(&r.jobs);
                    if let Some(sink) = self.jobs.get() {
                        sink.report(&session.agent_id, generation, r.jobs).await;
                    }
                }
                Some(agent_frame::Frame::Hello(_)) | None => {}
            }
        }
        let mut tunnel = lock(&session.tunnel);
        if tunnel.as_ref().is_some_and(|t| t.generation == generation) {
            *tunnel = None;
            drop(tunnel);
            tracing::info!(agent_id = %session.agent_id, generation, "tunnel closed");
        } else {
            drop(tunnel);
        }
        session.fail_pending(Some(generation));
        if said_goodbye && let Some(sink) = self.jobs.get() {
            // Jobs the agent did not finish before it left are lost.
            sink.agent_gone(&session.agent_id, "the agent shut down");
        }
    }

    /// A result as it may reach the caller: one past the payload limits (which the caller's
    /// decoder shares) becomes a failure that says so, and the error text is bounded.
    fn checked_result(&self, agent_id: &str, mut r: InvokeResult) -> InvokeResult {
        if let Err(e) = check_payload(r.result.as_ref(), self.cfg.max_message_bytes) {
            tracing::warn!(agent_id, request_id = %r.request_id, error = %e, "agent result refused");
            r.result = None;
            r.success = false;
            r.error = format!("the result of agent {agent_id} {e}");
            r.error_code = "RESULT_REFUSED".into();
        }
        if r.error.len() > 16 * 1024 {
            r.error = excerpt(&r.error, 4096);
        }
        r
    }

    /// Ends a session: closes its tunnel, fails its pending invocations, forgets it and revokes
    /// its lease (its registration disappears).
    async fn expire(&self, session: &Arc<Session>, reason: &str) {
        lock(&session.tunnel).take();
        session.fail_pending(None);
        self.forget(session, reason).await;
        if let Some(sink) = self.jobs.get() {
            sink.agent_gone(&session.agent_id, reason);
        }
    }

    /// Forgets a session and revokes its lease (its registration disappears) without touching
    /// its tunnel.
    async fn forget(&self, session: &Arc<Session>, reason: &str) {
        {
            let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
            if sessions
                .get(&session.agent_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.agent_id);
            }
        }
        if let Err(e) = self.store.revoke_lease(session.lease).await {
            tracing::warn!(agent_id = %session.agent_id, error = %e, "revoking lease failed; it will expire");
        }
        tracing::info!(agent_id = %session.agent_id, reason, "agent session ended");
    }

    async fn run_liveness(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.cfg.heartbeat_interval / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let limit = self.cfg.offline_after();
            let stale: Vec<Arc<Session>> = self
                .sessions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|s| lock(&s.last_heartbeat).elapsed() > limit)
                .cloned()
                .collect();
            for s in stale {
                tracing::warn!(agent_id = %s.agent_id, missed = self.cfg.missed_heartbeats, "agent offline: heartbeats missed");
                self.expire(&s, "heartbeats missed").await;
            }
        }
    }

    /// Handles `SetNodeState` (admin only).
    pub async fn set_node_state(
        &self,
        who: &Identity,
        req: pb::SetNodeStateRequest,
    ) -> Result<pb::SetNodeStateResponse, ControlError> {
        if who.role != Role::Admin {
            return Err(ControlError::PermissionDenied(format!(
                "identity {who} may not set node states: an admin certificate is required"
            )));
        }
        check_id("agent_id", &req.agent_id).map_err(ControlError::InvalidArgument)?;
        if req.reason.chars().count() > self.cfg.max_text_chars {
            return Err(ControlError::InvalidArgument(format!(
                "reason is {} characters; at most {} are allowed",
                req.reason.chars().count(),
                self.cfg.max_text_chars
            )));
        }
        let state = common::NodeState::try_from(req.state).map_err(|_| {
            ControlError::InvalidArgument(format!(
                "state {} is not a node state (0 normal, 1 maintenance, 2 disabled)",
                req.state
            ))
        })?;
        let record = NodeRecord {
            agent_id: req.agent_id.clone(),
            state: state.into(),
            reason: req.reason.clone(),
            actor: who.uri(),
            changed_at: now_ms(),
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| ControlError::InvalidArgument(format!("node record: {e}")))?;
        let rev = self
            .store
            .put(&keys::node(&req.agent_id), value, None)
            .await
            .map_err(ControlError::store("storing the node state"))?;
        self.view.wait_for(rev, Duration::from_secs(5)).await;
        let pb_record = common::NodeStateRecord::from(&record);
        if let Some(t) = self.session(&req.agent_id).and_then(|s| s.tunnel()) {
            let _ = t.tx.try_send(Ok(ServerFrame {
                frame: Some(server_frame::Frame::StateChange(pb::StateChange {
                    record: Some(pb_record.clone()),
                })),
            }));
        }
        tracing::info!(agent_id = %req.agent_id, state = record.state.as_str(), actor = %record.actor, reason = %excerpt(&record.reason, 200), "node state changed");
        if record.state == NodeState::Disabled
            && let Some(sink) = self.jobs.get()
        {
            sink.node_disabled(
                &req.agent_id,
                &format!("node disabled by {}: {}", record.actor, record.reason),
            );
        }
        self.audit.record(AuditRecord {
            at: record.changed_at,
            who: who.uri(),
            action: "set_node_state",
            target: req.agent_id,
            outcome: "ok".into(),
            details: serde_json::json!({"state": record.state.as_str(), "reason": record.reason}),
        });
        Ok(pb::SetNodeStateResponse {
            success: true,
            record: Some(pb_record),
        })
    }

    /// Handles `GetAssignments`.
    pub async fn assignments(
        &self,
        who: &Identity,
        req: pb::GetAssignmentsRequest,
    ) -> Result<pb::GetAssignmentsResponse, ControlError> {
        if who.role != Role::Admin {
            Self::require_agent(who, &req.agent_id, "read assignments")?;
        }
        let agent = self.view.agent(&req.agent_id).ok_or_else(|| {
            ControlError::NotFound(format!("agent {:?} is not registered", req.agent_id))
        })?;
        let node = self.view.node(&req.agent_id);
        let game = if req.game_id.is_empty() {
            &agent.game_id
        } else {
            &req.game_id
        };
        let env = if req.env.is_empty() {
            &agent.env
        } else {
            &req.env
        };
        let assignments = agent
            .functions
            .iter()
            .map(|f| {
                let d = self
                    .view
                    .descriptor(&croupier_registry::view::FnKey::new(game, env, &f.id));
                let mut config: HashMap<String, String> = HashMap::new();
                if let Some(d) = &d {
                    if d.timeout_secs > 0 {
                        config.insert("timeout".into(), d.timeout_secs.to_string());
                    }
                    config.insert(
                        "kind".into(),
                        if d.kind.is_empty() {
                            "command".into()
                        } else {
                            d.kind.clone()
                        },
                    );
                }
                pb::FunctionAssignment {
                    function_id: f.id.clone(),
                    enabled: node.state == NodeState::Normal,
                    config,
                }
            })
            .collect();
        Ok(pb::GetAssignmentsResponse {
            assignments,
            version: self.view.revision(),
        })
    }

    /// Begins shutdown: refuses new registrations, tells every agent to go away, waits up to
    /// `grace` for in-flight invocations, then closes the tunnels.
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::Relaxed);
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for s in &sessions {
            if let Some(t) = s.tunnel() {
                let _ = t.tx.try_send(Ok(ServerFrame {
                    frame: Some(server_frame::Frame::Goaway(pb::Goaway {
                        reason: "server shutting down".into(),
                    })),
                }));
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && sessions.iter().any(|s| !lock(&s.pending).is_empty()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for s in &sessions {
            lock(&s.tunnel).take();
            s.fail_pending(None);
        }
    }
}

/// The functions a registration provides: those it lists and those it describes, once each.
fn provided_functions(
    req: &pb::RegisterAgentRequest,
) -> Result<Vec<ProvidedFunction>, ControlError> {
    let versions: HashMap<&str, &str> = req
        .descriptors
        .iter()
        .map(|d| (d.id.as_str(), d.version.as_str()))
        .collect();
    let mut functions: Vec<ProvidedFunction> = Vec::new();
    let mut seen = HashSet::new();
    for f in req
        .functions
        .iter()
        .chain(req.descriptors.iter().map(|d| &d.id))
    {
        check_id("function id", f).map_err(ControlError::InvalidArgument)?;
        if seen.insert(f.as_str()) {
            functions.push(ProvidedFunction {
                id: f.clone(),
                version: versions.get(f.as_str()).unwrap_or(&"").to_string(),
            });
        }
    }
    Ok(functions)
}

/// Checks one declared descriptor against the size and schema limits; the error names the
/// function and the limit.
pub fn check_descriptor(
    d: &common::FunctionDescriptor,
    max_bytes: usize,
    limits: &SchemaLimits,
) -> Result<(), String> {
    use prost::Message as _;
    let bytes = d.encoded_len();
    if bytes > max_bytes {
        return Err(format!(
            "descriptor of {} is {bytes} bytes; at most {max_bytes} are allowed              (limits.max_descriptor_bytes)",
            d.id
        ));
    }
    for (what, schema) in [
        ("params_schema", &d.params_schema),
        ("result_schema", &d.result_schema),
    ] {
        let Some(schema) = schema else { continue };
        if let Err(e) = check_payload(Some(schema), usize::MAX) {
            return Err(format!("{what} of {} {e}", d.id));
        }
        let json = croupier_proto::json::struct_to_json(schema);
        check_limits(&json, limits).map_err(|e| format!("{what} of {} {e}", d.id))?;
        if what == "params_schema" {
            croupier_registry::schema::compile(&json)
                .map_err(|e| format!("{what} of {} {e}", d.id))?;
        }
    }
    Ok(())
}

fn expired(agent_id: &str) -> ControlError {
    ControlError::NotFound(format!(
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
            status: lock(&s.status).clone(),
        })
    }
}

/// Removes a pending invocation when its future is dropped before completion, and tells the
/// agent to cancel it.
struct InFlight<'a> {
    session: &'a Session,
    request_id: String,
    tx: FrameTx,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.session.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            return;
        }
        if lock(&self.session.pending)
            .remove(&self.request_id)
            .is_some()
        {
            let _ = self.tx.try_send(Ok(ServerFrame {
                frame: Some(server_frame::Frame::Cancel(pb::Cancel {
                    request_id: std::mem::take(&mut self.request_id),
                    reason: "caller gave up (deadline passed or call cancelled)".into(),
                })),
            }));
        }
    }
}

#[async_trait]
impl AgentLink for ControlPlane {
    fn is_connected(&self, agent_id: &str) -> bool {
        self.session(agent_id).is_some_and(|s| s.tunnel().is_some())
    }

    fn load(&self, agent_id: &str) -> Load {
        self.session(agent_id).map(|s| s.load()).unwrap_or_default()
    }

    async fn invoke(&self, agent_id: &str, invoke: pb::Invoke) -> Result<InvokeResult, LinkError> {
        let not_connected = || LinkError::NotConnected(agent_id.to_string());
        let session = self.session(agent_id).ok_or_else(not_connected)?;
        let tunnel = session.tunnel().ok_or_else(not_connected)?;
        let request_id = invoke.request_id.clone();
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Invoke(invoke)),
        };
        session.check_frame(&frame)?;
        let (tx, rx) = oneshot::channel();
        lock(&session.pending).insert(
            request_id.clone(),
            Pending {
                generation: tunnel.generation,
                tx,
            },
        );
        session.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut guard = InFlight {
            session: &session,
            request_id,
            tx: tunnel.tx.clone(),
            done: false,
        };
        if tunnel.tx.send(Ok(frame)).await.is_err() {
            lock(&session.pending).remove(&guard.request_id);
            guard.done = true;
            return Err(not_connected());
        }
        let outcome = rx.await;
        guard.done = true;
        outcome.unwrap_or_else(|_| Err(LinkError::Lost(agent_id.to_string())))
    }

    async fn start_job(&self, agent_id: &str, invoke: pb::Invoke) -> Result<u64, LinkError> {
        let not_connected = || LinkError::NotConnected(agent_id.to_string());
        let session = self.session(agent_id).ok_or_else(not_connected)?;
        let tunnel = session.tunnel().ok_or_else(not_connected)?;
        let job_id = invoke.job_id.clone();
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Invoke(invoke)),
        };
        session.check_frame(&frame)?;
        // Counted before it is sent, so that its terminal event cannot arrive first.
        session.running.started(&job_id);
        if tunnel.tx.send(Ok(frame)).await.is_err() {
            session.running.ended(&job_id);
            return Err(not_connected());
        }
        Ok(tunnel.generation)
    }

    fn send_frame(&self, agent_id: &str, frame: ServerFrame) -> bool {
        self.session(agent_id)
            .and_then(|s| s.tunnel())
            .is_some_and(|t| t.tx.try_send(Ok(frame)).is_ok())
    }

    fn has_session(&self, agent_id: &str) -> bool {
        self.session(agent_id).is_some()
    }
}
