//! Jobs (DESIGN §4): long work with a replayable, ordered stream of events.
//!
//! A job is created by `InvokeJob` ([`crate::Invoker::start_job`] routes it and calls
//! [`JobManager::create`]): its record is stored as `pending` and its `Invoke` goes down the
//! chosen agent's tunnel. The agent numbers the job's events 1, 2, 3… and sends them over the
//! tunnel; the manager (as the control plane's [`JobSink`]):
//! - appends each new event to the job's in-memory log, drops duplicates (seq already seen) and
//!   wakes the job's subscribers;
//! - has one writer task store new events in chunks under `/croupier-events/jobs/{id}/` and
//!   the record under `/croupier/jobs/{id}` when its status changes, and only then `Ack`s the
//!   stored seq to the agent, which keeps unacknowledged events and sends them again after a
//!   reconnect — so a server restart loses no event and subscribers see each seq once;
//! - reconciles the agent's `JobsReport` after a reconnect: a job the agent no longer runs ends
//!   `ERROR` ("agent lost"), as do the jobs of an agent that goes offline.
//!
//! `StreamJobEvents` replays from `from_seq` and follows until the terminal event; events
//! dropped by retention (count per job, age) are announced with one `GAP` event. Finished jobs
//! stay in memory for `linger`, then are served from the store until `record_retention` ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use croupier_control::{AgentLink, JobSink, LinkError};
use croupier_proto::control::v1::{self as cpb, RunningJob, ServerFrame, server_frame};
use croupier_proto::function::v1::{self as pb, EventType, JobEvent};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use croupier_registry::identity::{Identity, Role};
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::model::now_ms;
use croupier_registry::store::{CasOutcome, Expect, MAX_BATCH_OPS, Store, StoreError, WriteOp};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::FunctionError;
use crate::forward::Forwarder;

/// Job settings.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Events kept per job; older ones are dropped (subscribers asking for them get a `GAP`).
    /// Default 10 000.
    pub max_events: usize,
    /// Events older than this are dropped, and a finished job's events go this long after it
    /// ended. Default 24 h.
    pub max_event_age: Duration,
    /// How long a finished job's record is kept. Default 7 days.
    pub record_retention: Duration,
    /// Deadline of a job when neither the call nor a job descriptor sets one, and the longest
    /// allowed. Default 24 h.
    pub max_duration: Duration,
    /// How long a finished job stays in memory (fast replay) before it is served from the store.
    /// Default 60 s.
    pub linger: Duration,
    /// How long a job waits for its agent to come back (after a server restart, or while the
    /// agent has no session) before it ends `ERROR` "agent lost". Default 45 s.
    pub orphan_after: Duration,
    /// Most events per stored chunk. Default 512.
    pub chunk_events: usize,
    /// Most bytes of one event (encoded); a larger one keeps its type, seq and a cut message,
    /// and its data is replaced by a note of its size. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Bytes of events kept per job; older (stored) ones are dropped past it, like events past
    /// `max_events`. Default 16 MiB.
    pub max_job_bytes: usize,
    /// Bytes of events kept for all the jobs of one agent; past it, the oldest stored events of
    /// the job receiving events are dropped. Default 64 MiB.
    pub max_agent_bytes: usize,
    /// Bytes of events from one agent not yet stored; past it, the server stops reading the
    /// agent's tunnel until the writer catches up (backpressure). Default 16 MiB.
    pub max_agent_unstored_bytes: usize,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            max_events: 10_000,
            max_event_age: Duration::from_secs(24 * 3600),
            record_retention: Duration::from_secs(7 * 24 * 3600),
            max_duration: Duration::from_secs(24 * 3600),
            linger: Duration::from_secs(60),
            orphan_after: Duration::from_secs(45),
            chunk_events: 512,
            max_event_bytes: 1024 * 1024,
            max_job_bytes: 16 * 1024 * 1024,
            max_agent_bytes: 64 * 1024 * 1024,
            max_agent_unstored_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Created and sent to its agent, not started yet.
    #[default]
    Pending,
    /// Started on its agent.
    Running,
    /// Ended with `DONE`.
    Completed,
    /// Ended with `ERROR`.
    Failed,
    /// Ended with `CANCELLED`.
    Cancelled,
}

impl JobStatus {
    /// The name used in the API: pending, running, completed, failed, cancelled.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// True once the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job's stored record (`/croupier/jobs/{job_id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRecord {
    /// The job.
    pub job_id: String,
    /// Its function.
    pub function_id: String,
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Agent running it.
    pub agent_id: String,
    /// Identity of the caller who started it.
    pub caller: String,
    /// Status.
    pub status: JobStatus,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; 0 before it started.
    pub started_at: i64,
    /// Unix ms; 0 before it ended.
    pub ended_at: i64,
    /// Result when completed.
    pub result: serde_json::Value,
    /// Error when failed or cancelled.
    pub error: String,
    /// Error code when failed.
    pub error_code: String,
    /// Seq of the last event.
    pub last_seq: i64,
    /// Seq of the oldest retained event.
    pub first_seq: i64,
    /// Why it was cancelled, once a cancel was asked for.
    pub cancel_reason: String,
    /// Deadline given to the agent, in ms.
    pub timeout_ms: i64,
    /// The server that runs the job (holds its agent's tunnel and its live events).
    pub server_id: String,
}

impl JobRecord {
    /// The API form.
    pub fn to_proto(&self) -> pb::JobRecord {
        pb::JobRecord {
            job_id: self.job_id.clone(),
            function_id: self.function_id.clone(),
            game_id: self.game_id.clone(),
            env: self.env.clone(),
            agent_id: self.agent_id.clone(),
            caller: self.caller.clone(),
            status: self.status.as_str().to_string(),
            created_at: self.created_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            result: (!self.result.is_null()).then(|| json_to_struct(&self.result)),
            error: self.error.clone(),
            error_code: self.error_code.clone(),
            last_seq: self.last_seq,
            first_seq: self.first_seq,
            cancel_reason: self.cancel_reason.clone(),
        }
    }
}

/// One stored chunk of events.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    first: i64,
    last: i64,
}

struct JobState {
    record: JobRecord,
    /// Retained events, ascending seq.
    events: VecDeque<JobEvent>,
    /// Encoded bytes of `events`.
    bytes: usize,
    /// Highest seq stored.
    persisted_seq: i64,
    /// Bumped on each record change; the writer stores the record when it moved.
    record_version: u64,
    stored_version: u64,
    chunks: VecDeque<Chunk>,
    /// Tunnel generation the job was last seen on (0: unknown, e.g. loaded after a restart).
    generation: u64,
    cancel_requested: bool,
    cancel_sent: Option<Instant>,
    /// Since when the job has waited for its agent.
    orphan_since: Option<Instant>,
    /// When the job ended (for `linger`).
    ended: Option<Instant>,
    /// The replica the job moved to (its agent did); followers here are told to resume there.
    moved_to: Option<String>,
}

impl JobState {
    fn new(record: JobRecord) -> Self {
        JobState {
            record,
            events: VecDeque::new(),
            bytes: 0,
            persisted_seq: 0,
            record_version: 0,
            stored_version: 0,
            chunks: VecDeque::new(),
            generation: 0,
            cancel_requested: false,
            cancel_sent: None,
            orphan_since: None,
            ended: None,
            moved_to: None,
        }
    }

    fn touch_record(&mut self) {
        self.record_version += 1;
    }

    /// Index of the first retained event with seq >= `seq`.
    fn index_of(&self, seq: i64) -> usize {
        self.events.partition_point(|e| e.seq < seq)
    }

    /// Drops the oldest retained event if it is stored (and not the last one); returns its size.
    fn prune_one(&mut self) -> Option<usize> {
        let front = self.events.front()?;
        if front.seq > self.persisted_seq || front.seq >= self.record.last_seq {
            return None;
        }
        let ev = self.events.pop_front()?;
        let n = ev.encoded_len();
        self.bytes = self.bytes.saturating_sub(n);
        Some(n)
    }

    /// Seq of the oldest event a subscriber can still get.
    fn first_available(&self) -> i64 {
        self.events
            .front()
            .map(|e| e.seq)
            .unwrap_or(self.record.last_seq + 1)
    }
}

struct Job {
    id: String,
    st: Mutex<JobState>,
    changed: watch::Sender<()>,
}

impl Job {
    fn new(id: String, st: JobState) -> Arc<Job> {
        Arc::new(Job {
            id,
            st: Mutex::new(st),
            changed: watch::channel(()).0,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job's event stream for `StreamJobEvents`.
pub type EventStream = ReceiverStream<Result<JobEvent, Status>>;

/// Why [`JobManager::create`] failed.
#[derive(Debug)]
pub enum CreateError {
    /// The record could not be stored.
    Store(FunctionError),
    /// The agent could not be sent the job (nothing ran; another agent may take it).
    Link(LinkError),
}

/// Jobs of this server. Share it as `Arc<JobManager>`.
pub struct JobManager {
    cfg: JobConfig,
    store: Arc<dyn Store>,
    link: Arc<dyn AgentLink>,
    jobs: RwLock<HashMap<String, Arc<Job>>>,
    dirty: Mutex<HashSet<String>>,
    wake: Notify,
    forwarder: std::sync::OnceLock<Arc<Forwarder>>,
    /// Bytes of events per agent: kept in memory, and not yet stored.
    usage: Mutex<HashMap<String, AgentUsage>>,
    /// Notified when the writer stored events (agents waiting on backpressure look again).
    stored: Notify,
}

/// Bytes of one agent's job events.
#[derive(Default, Clone, Copy, Debug)]
struct AgentUsage {
    /// Kept in memory (all its live jobs).
    retained: usize,
    /// Received and not yet stored.
    unstored: usize,
}

const FOLLOW_BATCH: usize = 256;

/// Most bytes of events in one stored chunk (one event larger than this is a chunk alone).
const CHUNK_BYTES: usize = 1 << 20;

/// Splits `events` into runs of at most `max_events` events and `max_bytes` bytes (at least
/// one event each).
fn chunks_of(events: &[JobEvent], max_events: usize, max_bytes: usize) -> Vec<&[JobEvent]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let n = e.encoded_len();
        if i > start && (i - start >= max_events || bytes + n > max_bytes) {
            out.push(&events[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

impl JobManager {
    /// Loads unfinished jobs from the store (they wait for their agents to report them) and
    /// starts the writer and the sweeper, which end with `shutdown` (the writer flushes first).
    pub async fn start(
        cfg: JobConfig,
        store: Arc<dyn Store>,
        link: Arc<dyn AgentLink>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let m = Arc::new(JobManager {
            cfg,
            store,
            link,
            jobs: RwLock::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            forwarder: std::sync::OnceLock::new(),
            usage: Mutex::new(HashMap::new()),
            stored: Notify::new(),
        });
        m.load().await?;
        tokio::spawn(m.clone().run_writer(shutdown.clone()));
        tokio::spawn(m.clone().run_sweeper(shutdown));
        Ok(m)
    }

    /// The configuration.
    pub fn config(&self) -> &JobConfig {
        &self.cfg
    }

    /// Sends requests about jobs that run on other replicas to them. Set once.
    pub fn set_forwarder(&self, forwarder: Arc<Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    /// The replica running `record`'s job, when it is not finished and runs elsewhere.
    fn remote_owner(&self, record: &JobRecord) -> Option<&Arc<Forwarder>> {
        let fwd = self.forwarder.get()?;
        (!record.status.is_terminal() && fwd.is_remote_server(&record.server_id)).then_some(fwd)
    }

    fn get(&self, job_id: &str) -> Option<Arc<Job>> {
        self.jobs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(job_id)
            .cloned()
    }

    fn live(&self) -> Vec<Arc<Job>> {
        self.jobs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Lets a job go from memory (its bytes no longer count for its agent).
    fn remove(&self, job_id: &str) {
        let removed = self
            .jobs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id);
        if let Some(job) = removed {
            let st = lock(&job.st);
            let unstored: usize = st
                .events
                .iter()
                .filter(|e| e.seq > st.persisted_seq)
                .map(|e| e.encoded_len())
                .sum();
            self.account(
                &st.record.agent_id,
                -(st.bytes as isize),
                -(unstored as isize),
            );
        }
    }

    /// Adds to (or takes from) an agent's byte counts.
    fn account(&self, agent_id: &str, retained: isize, unstored: isize) {
        let mut usage = lock(&self.usage);
        let u = usage.entry(agent_id.to_string()).or_default();
        u.retained = u.retained.saturating_add_signed(retained);
        u.unstored = u.unstored.saturating_add_signed(unstored);
        if u.retained == 0 && u.unstored == 0 {
            usage.remove(agent_id);
        }
    }

    fn usage_of(&self, agent_id: &str) -> AgentUsage {
        lock(&self.usage).get(agent_id).copied().unwrap_or_default()
    }

    /// Waits while `agent_id` has more unstored event bytes than its budget: the tunnel's reader
    /// waits here, so the agent is slowed by HTTP/2 flow control instead of filling memory.
    async fn backpressure(&self, agent_id: &str) {
        let budget = self.cfg.max_agent_unstored_bytes;
        let mut logged = false;
        loop {
            let stored = self.stored.notified();
            let unstored = self.usage_of(agent_id).unstored;
            if unstored <= budget {
                return;
            }
            if !logged {
                logged = true;
                metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "job_event_backpressure")
                    .increment(1);
                tracing::warn!(
                    agent_id,
                    unstored,
                    budget,
                    "agent's job events arrive faster than they are stored; reading its tunnel waits"
                );
            }
            self.wake.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), stored).await;
        }
    }

    async fn load(&self) -> Result<(), StoreError> {
        let all = self.store.range(keys::JOBS).await?;
        let mut loaded = 0;
        for kv in all.kvs {
            let Ok(record) = serde_json::from_slice::<JobRecord>(&kv.value) else {
                tracing::warn!(key = %kv.key, "unreadable job record skipped");
                continue;
            };
            if record.status.is_terminal() {
                continue;
            }
            let (events, chunks) = self.load_events(&record.job_id).await?;
            let mut st = self.restore(record, events, chunks);
            if !st.record.status.is_terminal() {
                st.orphan_since = Some(Instant::now());
            }
            let id = st.record.job_id.clone();
            let ended = st.record.status.is_terminal();
            let job = Job::new(id.clone(), st);
            self.jobs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, job.clone());
            if ended {
                self.mark(&job); // its record catches up with its stored terminal event
            }
            loaded += 1;
        }
        if loaded > 0 {
            tracing::info!(
                jobs = loaded,
                "unfinished jobs loaded; waiting for their agents"
            );
        }
        Ok(())
    }

    /// A job's state from its stored record and events. When the events end with a terminal
    /// event whose record update was not stored (a crash between the two writes), the job ends
    /// as that event says: it never gets a second terminal event.
    fn restore(
        &self,
        record: JobRecord,
        events: VecDeque<JobEvent>,
        chunks: VecDeque<Chunk>,
    ) -> JobState {
        let mut st = JobState::new(record);
        if let Some(last) = events.back() {
            st.record.last_seq = st.record.last_seq.max(last.seq);
            let kind = EventType::try_from(last.r#type).unwrap_or(EventType::Log);
            if is_terminal_event(last.r#type) && !st.record.status.is_terminal() {
                tracing::info!(job_id = %st.record.job_id, "stored terminal event ends the job");
                record_end(&mut st.record, kind, last);
                st.ended = Some(Instant::now());
                st.touch_record();
            }
        }
        st.persisted_seq = st.record.last_seq;
        st.record.first_seq = events.front().map(|e| e.seq).unwrap_or(0);
        st.bytes = events.iter().map(|e| e.encoded_len()).sum();
        self.account(&st.record.agent_id, st.bytes as isize, 0);
        st.events = events;
        st.chunks = chunks;
        st
    }

    async fn load_events(
        &self,
        job_id: &str,
    ) -> Result<(VecDeque<JobEvent>, VecDeque<Chunk>), StoreError> {
        let kvs = self.store.range(&keys::job_events(job_id)).await?.kvs;
        let mut events = VecDeque::new();
        let mut chunks = VecDeque::new();
        for kv in kvs {
            let mut buf = kv.value.as_slice();
            let start = events.len();
            while !buf.is_empty() {
                match JobEvent::decode_length_delimited(&mut buf) {
                    Ok(mut e) => {
                        if e.received_at == 0 {
                            e.received_at = now_ms(); // stored before receive times were kept
                        }
                        events.push_back(e)
                    }
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "corrupt job event chunk cut short");
                        break;
                    }
                }
            }
            if let (Some(first), Some(last)) = (events.get(start), events.back()) {
                chunks.push_back(Chunk {
                    first: first.seq,
                    last: last.seq,
                });
            }
        }
        Ok((events, chunks))
    }

    async fn load_record(&self, job_id: &str) -> Result<Option<JobRecord>, FunctionError> {
        let kv = self
            .store
            .get(&keys::job(job_id))
            .await
            .map_err(FunctionError::store("reading the job record"))?;
        kv.map(|kv| {
            serde_json::from_slice::<JobRecord>(&kv.value)
                .map_err(|e| FunctionError::Internal(format!("job record {job_id}: {e}")))
        })
        .transpose()
    }

    /// Stores a new job's record and sends its `Invoke` to `record.agent_id`. On a link error
    /// nothing ran and the record is gone again, so the caller may pick another agent.
    pub async fn create(&self, record: JobRecord, invoke: cpb::Invoke) -> Result<(), CreateError> {
        let id = record.job_id.clone();
        let agent = record.agent_id.clone();
        let value = serde_json::to_vec(&record)
            .map_err(|e| CreateError::Store(FunctionError::Internal(format!("job record: {e}"))))?;
        let job = Job::new(id.clone(), JobState::new(record));
        self.jobs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), job.clone());
        let stored = self
            .store
            .compare_and_put(&keys::job(&id), Expect::Absent, value, None)
            .await;
        match stored {
            Ok(CasOutcome::Done(_)) => {}
            Ok(CasOutcome::Conflict(_)) => {
                self.remove(&id);
                return Err(CreateError::Store(FunctionError::Internal(format!(
                    "job id {id} already exists"
                ))));
            }
            Err(e) => {
                self.remove(&id);
                return Err(CreateError::Store(FunctionError::store(
                    "storing the job record",
                )(e)));
            }
        }
        match self.link.start_job(&agent, invoke).await {
            Ok(generation) => {
                let mut st = lock(&job.st);
                st.generation = st.generation.max(generation);
                Ok(())
            }
            Err(e) => {
                self.remove(&id);
                if let Err(se) = self.store.delete(&keys::job(&id)).await {
                    tracing::warn!(job_id = %id, error = %se, "removing the record of an unsent job failed");
                }
                Err(CreateError::Link(e))
            }
        }
    }

    /// `GetJob`.
    pub async fn get_job(
        &self,
        who: &Identity,
        job_id: &str,
    ) -> Result<pb::JobRecord, FunctionError> {
        check_id("job_id", job_id).map_err(FunctionError::InvalidArgument)?;
        if let Some(job) = self.get(job_id) {
            return Ok(lock(&job.st).record.to_proto());
        }
        let record = self
            .load_record(job_id)
            .await?
            .ok_or_else(|| not_found(job_id))?;
        if let Some(fwd) = self.remote_owner(&record) {
            // The live record (last seq, status) is on the replica running it.
            match fwd.get_job(&record.server_id, who, job_id).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!(job_id, error = %e, "live job record not reachable; answering the stored one")
                }
            }
        }
        Ok(record.to_proto())
    }

    /// `ListJobs`: filtered, newest first, paged by `page_token` (the last job of the previous
    /// page).
    pub async fn list_jobs(
        &self,
        req: &pb::ListJobsRequest,
    ) -> Result<pb::ListJobsResponse, FunctionError> {
        let status = if req.status.is_empty() {
            None
        } else {
            Some(JobStatus::parse(&req.status).ok_or_else(|| {
                FunctionError::InvalidArgument(format!(
                    "status {:?} is not one of pending, running, completed, failed, cancelled",
                    req.status
                ))
            })?)
        };
        if req.page_size < 0 {
            return Err(FunctionError::InvalidArgument(format!(
                "page_size is {}; give 1-1000, or 0 for 50",
                req.page_size
            )));
        }
        let size = if req.page_size == 0 {
            50
        } else {
            req.page_size.min(1000) as usize
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(parse_token(&req.page_token)?)
        };
        let stored = self
            .store
            .range(keys::JOBS)
            .await
            .map_err(FunctionError::store("listing jobs"))?;
        let mut records: HashMap<String, JobRecord> = stored
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<JobRecord>(&kv.value).ok())
            .map(|r| (r.job_id.clone(), r))
            .collect();
        for job in self.live() {
            let r = lock(&job.st).record.clone();
            records.insert(r.job_id.clone(), r);
        }
        let keep = |r: &JobRecord| {
            (req.function_id.is_empty() || r.function_id == req.function_id)
                && (req.agent_id.is_empty() || r.agent_id == req.agent_id)
                && (req.game_id.is_empty() || r.game_id == req.game_id)
                && (req.env.is_empty() || r.env == req.env)
                && status.is_none_or(|s| r.status == s)
        };
        let mut matching: Vec<JobRecord> = records.into_values().filter(keep).collect();
        matching.sort_by(|a, b| {
            (b.created_at, &b.job_id).cmp(&(a.created_at, &a.job_id)) // newest first
        });
        let start = match &after {
            Some((at, id)) => matching.partition_point(|r| (r.created_at, &r.job_id) >= (*at, id)),
            None => 0,
        };
        let page: Vec<JobRecord> = matching.iter().skip(start).take(size).cloned().collect();
        let next_page_token = if start + page.len() < matching.len() {
            page.last()
                .map(|r| format!("{}.{}", r.created_at, r.job_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListJobsResponse {
            jobs: page.iter().map(JobRecord::to_proto).collect(),
            next_page_token,
        })
    }

    /// `StreamJobEvents`: replays from `from_seq` (0 or 1: from the start), then follows live
    /// until the terminal event.
    pub async fn subscribe(
        &self,
        who: &Identity,
        job_id: &str,
        from_seq: i64,
    ) -> Result<EventStream, FunctionError> {
        check_id("job_id", job_id).map_err(FunctionError::InvalidArgument)?;
        if from_seq < 0 {
            return Err(FunctionError::InvalidArgument(format!(
                "from_seq is {from_seq}; give 0 or 1 for the whole stream, or a later seq"
            )));
        }
        let from = from_seq.max(1);
        let (tx, rx) = mpsc::channel(FOLLOW_BATCH);
        if let Some(job) = self.get(job_id) {
            tokio::spawn(follow(job, from, tx));
            return Ok(ReceiverStream::new(rx));
        }
        let record = self
            .load_record(job_id)
            .await?
            .ok_or_else(|| not_found(job_id))?;
        if let Some(fwd) = self.remote_owner(&record) {
            let req = pb::StreamJobEventsRequest {
                job_id: job_id.to_string(),
                from_seq,
            };
            let mut remote = fwd.stream_job_events(&record.server_id, who, req).await?;
            tokio::spawn(async move {
                loop {
                    let item = tokio::select! {
                        m = remote.message() => m,
                        _ = tx.closed() => return,
                    };
                    let out = match item {
                        Ok(Some(e)) => Ok(e),
                        Ok(None) => return,
                        Err(s) => Err(s),
                    };
                    let end = out.is_err();
                    if tx.send(out).await.is_err() || end {
                        return;
                    }
                }
            });
            return Ok(ReceiverStream::new(rx));
        }
        let (events, _) = self
            .load_events(job_id)
            .await
            .map_err(FunctionError::store("reading the job's events"))?;
        tokio::spawn(async move {
            let first = events.front().map(|e| e.seq).unwrap_or(record.last_seq + 1);
            let mut next = from;
            if next < first {
                if tx.send(Ok(gap(&record.job_id, next, first))).await.is_err() {
                    return;
                }
                next = first;
            }
            for e in events.into_iter().filter(|e| e.seq >= next) {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// `CancelJob`: asks the job's agent to cancel it; only the caller who started the job or
    /// an admin may.
    pub async fn cancel(
        &self,
        who: &Identity,
        job_id: &str,
        reason: &str,
    ) -> Result<pb::CancelJobResponse, FunctionError> {
        check_id("job_id", job_id).map_err(FunctionError::InvalidArgument)?;
        let Some(job) = self.get(job_id) else {
            let record = self
                .load_record(job_id)
                .await?
                .ok_or_else(|| not_found(job_id))?;
            if let Some(fwd) = self.remote_owner(&record) {
                let req = pb::CancelJobRequest {
                    job_id: job_id.to_string(),
                    reason: reason.to_string(),
                };
                return Ok(fwd.cancel_job(&record.server_id, who, req).await?);
            }
            if !record.status.is_terminal() {
                return Err(FunctionError::Unavailable(format!(
                    "job {job_id} runs on server {:?}, which is not reachable now",
                    record.server_id
                )));
            }
            return Ok(already_finished(&record));
        };
        let reason = if reason.is_empty() {
            format!("cancelled by {}", who.uri())
        } else {
            reason.to_string()
        };
        let (agent, status) = {
            let mut st = lock(&job.st);
            if st.record.status.is_terminal() {
                return Ok(already_finished(&st.record));
            }
            if who.role != Role::Admin && who.uri() != st.record.caller {
                return Err(FunctionError::PermissionDenied(format!(
                    "identity {who} may not cancel job {job_id}: only its caller ({}) or an \
                     admin may",
                    st.record.caller
                )));
            }
            if !st.cancel_requested {
                st.cancel_requested = true;
                st.record.cancel_reason = reason.clone();
                st.touch_record();
            }
            (st.record.agent_id.clone(), st.record.status)
        };
        self.mark(&job);
        if !self.link.has_session(&agent) {
            // Nobody can stop it on the agent now; end it here. Should the agent come back
            // and report the job, it is told to cancel it.
            self.end(
                &job,
                EventType::Cancelled,
                format!("{reason} (the job's agent {agent} was not connected)"),
                "CANCELLED",
            );
            return Ok(pb::CancelJobResponse {
                success: true,
                status: JobStatus::Cancelled.as_str().into(),
                message: format!("job cancelled; its agent {agent} is not connected"),
            });
        }
        self.send_cancel(&job);
        Ok(pb::CancelJobResponse {
            success: true,
            status: status.as_str().into(),
            message: "cancellation sent to the agent; the job ends CANCELLED when its handler \
                      stops"
                .into(),
        })
    }

    fn send_cancel(&self, job: &Job) {
        let (agent, reason) = {
            let mut st = lock(&job.st);
            st.cancel_sent = Some(Instant::now());
            (st.record.agent_id.clone(), st.record.cancel_reason.clone())
        };
        self.link.send_frame(&agent, cancel_frame(&job.id, &reason));
    }

    /// Ends a job on the server's side with a synthesized terminal event.
    fn end(&self, job: &Job, kind: EventType, message: String, code: &str) {
        {
            let mut st = lock(&job.st);
            if st.record.status.is_terminal() {
                return;
            }
            let now = now_ms();
            let ev = JobEvent {
                job_id: job.id.clone(),
                r#type: kind as i32,
                message,
                progress: 0.0,
                timestamp: now,
                data: Some(json_to_struct(&serde_json::json!({ "code": code }))),
                seq: st.record.last_seq + 1,
                received_at: now,
            };
            let (added, dropped) = apply(&self.cfg, &mut st, ev);
            let agent = st.record.agent_id.clone();
            drop(st);
            self.account(&agent, added as isize - dropped as isize, added as isize);
        }
        job.changed.send_replace(());
        self.mark(job);
    }

    fn mark(&self, job: &Job) {
        lock(&self.dirty).insert(job.id.clone());
        self.wake.notify_one();
    }

    async fn run_writer(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.flush().await;
                    return;
                }
                _ = self.wake.notified() => {}
            }
            if !self.flush().await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Stores what changed; false when something failed (it stays dirty and is retried).
    async fn flush(&self) -> bool {
        let ids: Vec<String> = lock(&self.dirty).drain().collect();
        let mut ok = true;
        for id in ids {
            let Some(job) = self.get(&id) else { continue };
            if let Err(e) = self.persist(&job).await {
                tracing::warn!(job_id = %id, error = %e, "storing job events failed; retrying");
                lock(&self.dirty).insert(id);
                ok = false;
            }
        }
        if !ok {
            self.wake.notify_one();
        }
        ok
    }

    async fn persist(&self, job: &Job) -> Result<(), StoreError> {
        let (batch, record, agent) = {
            let st = lock(&job.st);
            let from = st.index_of(st.persisted_seq + 1);
            let batch: Vec<JobEvent> = st.events.range(from..).cloned().collect();
            let record = (st.record_version != st.stored_version)
                .then(|| (st.record.clone(), st.record_version));
            (batch, record, st.record.agent_id.clone())
        };
        // The chunks and the record go in one atomic write, so a crash never leaves a record
        // without the events it counts, nor the reverse.
        let mut puts = Vec::new();
        let mut stored = Vec::new();
        for chunk in chunks_of(&batch, self.cfg.chunk_events.max(1), CHUNK_BYTES) {
            let mut buf = Vec::new();
            for e in chunk {
                e.encode_length_delimited(&mut buf)
                    .map_err(|e| StoreError::Unavailable(format!("encoding job event: {e}")))?;
            }
            let (first, last) = (&chunk[0], &chunk[chunk.len() - 1]);
            puts.push(WriteOp::put(keys::job_event_chunk(&job.id, first.seq), buf));
            stored.push(Chunk {
                first: first.seq,
                last: last.seq,
            });
        }
        if let Some((record, _)) = &record {
            let value = serde_json::to_vec(record)
                .map_err(|e| StoreError::Unavailable(format!("encoding job record: {e}")))?;
            puts.push(WriteOp::put(keys::job(&job.id), value));
        }
        // A backlog too big for one write (etcd takes about 1.5 MiB) sends its oldest chunks
        // ahead one by one; the newest chunk and the record still share the last write.
        const BATCH_BYTES: usize = 1 << 20;
        let bytes: usize = puts
            .iter()
            .map(|op| match op {
                WriteOp::Put { value, .. } => value.len(),
                WriteOp::Delete { .. } => 0,
            })
            .sum();
        if puts.len() > MAX_BATCH_OPS || bytes > BATCH_BYTES {
            let ahead = puts.len().saturating_sub(2);
            for op in puts.drain(..ahead) {
                self.store.write_all(vec![op]).await?;
            }
        }
        if !puts.is_empty() {
            self.store.write_all(puts).await?;
        }
        {
            let mut st = lock(&job.st);
            for chunk in stored {
                st.persisted_seq = st.persisted_seq.max(chunk.last);
                st.chunks.push_back(chunk);
            }
            if let Some((_, version)) = record {
                st.stored_version = st.stored_version.max(version);
            }
        }
        if !batch.is_empty() {
            let bytes: usize = batch.iter().map(|e| e.encoded_len()).sum();
            self.account(&agent, 0, -(bytes as isize));
            self.stored.notify_waiters();
        }
        if let Some(last) = batch.last() {
            self.link.send_frame(&agent, ack_frame(&job.id, last.seq));
        }
        Ok(())
    }

    async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_store_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sweep_live().await;
            if last_store_sweep.elapsed() >= Duration::from_secs(15) {
                last_store_sweep = Instant::now();
                if let Err(e) = self.sweep_stored().await {
                    tracing::warn!(error = %e, "sweeping finished jobs failed");
                }
            }
        }
    }

    /// Ends orphaned jobs, repeats unanswered cancels, applies retention to live jobs and lets
    /// finished ones go from memory.
    async fn sweep_live(&self) {
        let now_wall = now_ms();
        let age_limit = now_wall - self.cfg.max_event_age.as_millis() as i64;
        let mut drop_chunks: Vec<String> = Vec::new();
        for job in self.live() {
            let mut orphaned = false;
            let mut resend_cancel = false;
            let mut release = false;
            {
                let mut st = lock(&job.st);
                if st.record.status.is_terminal() {
                    release = st.ended.is_some_and(|t| t.elapsed() >= self.cfg.linger)
                        && st.persisted_seq >= st.record.last_seq
                        && st.stored_version == st.record_version;
                } else {
                    let has_session = self.link.has_session(&st.record.agent_id);
                    if !has_session && st.orphan_since.is_none() {
                        st.orphan_since = Some(Instant::now());
                    }
                    orphaned = st
                        .orphan_since
                        .is_some_and(|t| t.elapsed() >= self.cfg.orphan_after);
                    resend_cancel = st.cancel_requested
                        && has_session
                        && st
                            .cancel_sent
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
                }
                // Age retention (by the server's receive time), never past what is stored.
                let mut pruned = 0;
                while st.events.front().is_some_and(|e| e.received_at < age_limit) {
                    let Some(n) = st.prune_one() else { break };
                    pruned += n;
                }
                if pruned > 0 {
                    st.record.first_seq = st.first_available();
                    let agent = st.record.agent_id.clone();
                    self.account(&agent, -(pruned as isize), 0);
                }
                let first = st.first_available();
                while st.chunks.front().is_some_and(|c| c.last < first) {
                    if let Some(c) = st.chunks.pop_front() {
                        drop_chunks.push(keys::job_event_chunk(&job.id, c.first));
                    }
                }
            }
            if orphaned {
                let agent = lock(&job.st).record.agent_id.clone();
                tracing::warn!(job_id = %job.id, agent_id = %agent, "job orphaned: agent did not come back");
                self.end(
                    &job,
                    EventType::Error,
                    format!(
                        "agent lost: {agent} did not reconnect and report the job within {:?}",
                        self.cfg.orphan_after
                    ),
                    "AGENT_LOST",
                );
            } else if resend_cancel {
                self.send_cancel(&job);
            } else if release {
                self.remove(&job.id);
            }
        }
        for key in drop_chunks {
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(key = %key, error = %e, "dropping an old job event chunk failed");
            }
        }
    }

    /// Retention of finished jobs in the store: events go after `max_event_age`, records after
    /// `record_retention`.
    async fn sweep_stored(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let records = self.store.range(keys::JOBS).await?;
        for kv in records.kvs {
            let Ok(mut r) = serde_json::from_slice::<JobRecord>(&kv.value) else {
                continue;
            };
            if self.get(&r.job_id).is_some() {
                continue;
            }
            if !r.status.is_terminal() {
                self.end_abandoned(r, kv.mod_revision, now).await?;
                continue;
            }
            let age = now - r.ended_at;
            let drop_record = age > self.cfg.record_retention.as_millis() as i64;
            let drop_events = age > self.cfg.max_event_age.as_millis() as i64;
            if (drop_record || drop_events) && r.first_seq <= r.last_seq {
                for c in self.store.range(&keys::job_events(&r.job_id)).await?.kvs {
                    self.store.delete(&c.key).await?;
                }
            }
            if drop_record {
                self.store
                    .compare_and_delete(&kv.key, kv.mod_revision)
                    .await?;
            } else if drop_events && r.first_seq <= r.last_seq {
                r.first_seq = r.last_seq + 1;
                if let Ok(value) = serde_json::to_vec(&r) {
                    self.store
                        .compare_and_put(&kv.key, Expect::ModRevision(kv.mod_revision), value, None)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Ends a stored, unfinished job that no server runs: its server is gone and its agent did
    /// not come back anywhere (else the agent's new server would have adopted it). Compare-and-
    /// set on the record, so only one replica does it.
    async fn end_abandoned(
        &self,
        mut r: JobRecord,
        mod_revision: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let Some(fwd) = self.forwarder.get() else {
            return Ok(());
        };
        let abandoned = r.server_id != fwd.server_id()
            && !fwd.is_remote_server(&r.server_id)
            && !fwd.agent_known(&r.agent_id)
            && now - r.created_at > self.cfg.orphan_after.as_millis() as i64;
        if !abandoned {
            return Ok(());
        }
        let (events, _) = self.load_events(&r.job_id).await?;
        if let Some(last) = events.back().filter(|e| is_terminal_event(e.r#type)) {
            // It ended, and only its record missed the news: the record catches up.
            let kind = EventType::try_from(last.r#type).unwrap_or(EventType::Error);
            record_end(&mut r, kind, last);
            r.last_seq = r.last_seq.max(last.seq);
            let value = serde_json::to_vec(&r)
                .map_err(|e| StoreError::Unavailable(format!("encoding job record: {e}")))?;
            self.store
                .compare_and_put(
                    &keys::job(&r.job_id),
                    Expect::ModRevision(mod_revision),
                    value,
                    None,
                )
                .await?;
            return Ok(());
        }
        let seq = events
            .back()
            .map(|e| e.seq)
            .unwrap_or(r.last_seq)
            .max(r.last_seq)
            + 1;
        let message = format!(
            "agent lost: {} did not come back after its server {} went away",
            r.agent_id, r.server_id
        );
        let ev = JobEvent {
            job_id: r.job_id.clone(),
            r#type: EventType::Error as i32,
            message: message.clone(),
            progress: 0.0,
            timestamp: now,
            data: Some(json_to_struct(&serde_json::json!({ "code": "AGENT_LOST" }))),
            seq,
            received_at: now,
        };
        r.status = JobStatus::Failed;
        r.ended_at = now;
        r.error = message;
        r.error_code = "AGENT_LOST".into();
        r.last_seq = seq;
        let value = serde_json::to_vec(&r)
            .map_err(|e| StoreError::Unavailable(format!("encoding job record: {e}")))?;
        if let CasOutcome::Done(_) = self
            .store
            .compare_and_put(
                &keys::job(&r.job_id),
                Expect::ModRevision(mod_revision),
                value,
                None,
            )
            .await?
        {
            let mut buf = Vec::new();
            ev.encode_length_delimited(&mut buf)
                .map_err(|e| StoreError::Unavailable(format!("encoding job event: {e}")))?;
            self.store
                .put(&keys::job_event_chunk(&r.job_id, seq), buf, None)
                .await?;
            tracing::warn!(job_id = %r.job_id, agent_id = %r.agent_id, server_id = %r.server_id, "abandoned job ended: agent lost");
        }
        Ok(())
    }

    /// Tells an agent that a job it sent events for is over here: acks the event (so the
    /// agent lets it go) and, unless the event ended the job, cancels it.
    fn refuse(&self, agent_id: &str, ev: &JobEvent) {
        self.link
            .send_frame(agent_id, ack_frame(&ev.job_id, ev.seq));
        if !is_terminal_event(ev.r#type) {
            self.link.send_frame(
                agent_id,
                cancel_frame(
                    &ev.job_id,
                    "the server has no running job with this id (it ended, e.g. as agent lost)",
                ),
            );
        }
    }
}

impl JobManager {
    /// Takes one event from an agent's tunnel: checks it belongs to a live job of the agent,
    /// bounds its size, notes when it arrived and appends it (see [`apply`]).
    fn accept_event(&self, agent_id: &str, generation: u64, mut ev: JobEvent) {
        let Some(job) = self.get(&ev.job_id) else {
            self.refuse(agent_id, &ev);
            return;
        };
        {
            let mut st = lock(&job.st);
            if st.record.agent_id != agent_id {
                tracing::warn!(job_id = %job.id, agent_id, owner = %st.record.agent_id, "job event from an agent that does not run the job dropped");
                return;
            }
            if st.record.status.is_terminal() {
                let persisted = st.persisted_seq;
                drop(st);
                if ev.seq <= persisted {
                    self.link
                        .send_frame(agent_id, ack_frame(&job.id, persisted));
                } else {
                    self.refuse(agent_id, &ev);
                }
                return;
            }
            st.generation = st.generation.max(generation);
            st.orphan_since = None;
            if ev.seq <= st.record.last_seq {
                // Sent again after a reconnect: already have it.
                let persisted = st.persisted_seq;
                if ev.seq <= persisted {
                    drop(st);
                    self.link
                        .send_frame(agent_id, ack_frame(&job.id, persisted));
                }
                return;
            }
            if ev.seq != st.record.last_seq + 1 {
                tracing::warn!(job_id = %job.id, expected = st.record.last_seq + 1, got = ev.seq, "job events arrived with a gap");
            }
            if ev.r#type == EventType::Gap as i32 {
                ev.r#type = EventType::Log as i32; // GAP is the server's to send
            }
            ev.received_at = now_ms();
            bound_event(&mut ev, self.cfg.max_event_bytes);
            let (added, mut dropped) = apply(&self.cfg, &mut st, ev);
            // The agent's jobs together keep at most max_agent_bytes.
            let retained = self.usage_of(agent_id).retained + added - dropped;
            let mut over = retained.saturating_sub(self.cfg.max_agent_bytes);
            while over > 0 {
                let Some(n) = st.prune_one() else { break };
                over = over.saturating_sub(n);
                dropped += n;
            }
            if over == 0 && retained > self.cfg.max_agent_bytes {
                st.record.first_seq = st.first_available();
                metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "agent_event_bytes")
                    .increment(1);
            }
            self.account(agent_id, added as isize - dropped as isize, added as isize);
        }
        job.changed.send_replace(());
        self.mark(&job);
    }
}

impl JobManager {
    /// Takes over an unfinished job whose agent now holds its tunnel here (it moved from
    /// another server): its record and stored events come from the store, and the agent sends
    /// again what was not stored. False when the store has no such job for this agent.
    async fn adopt(&self, agent_id: &str, job_id: &str) -> bool {
        if self.get(job_id).is_some() {
            return true;
        }
        let record = match self.load_record(job_id).await {
            Ok(Some(r)) if r.agent_id == agent_id && !r.status.is_terminal() => r,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "reading a reported job failed");
                return false;
            }
        };
        let (events, chunks) = match self.load_events(job_id).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "reading a reported job's events failed");
                return false;
            }
        };
        let previous = record.server_id.clone();
        let mut st = self.restore(record, events, chunks);
        if let Some(fwd) = self.forwarder.get() {
            st.record.server_id = fwd.server_id().to_string();
        }
        st.touch_record();
        let job = Job::new(job_id.to_string(), st);
        self.jobs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job_id.to_string())
            .or_insert(job.clone());
        self.mark(&job);
        tracing::info!(job_id, agent_id, from = %previous, "job adopted: its agent moved here");
        true
    }
}

#[async_trait::async_trait]
impl JobSink for JobManager {
    async fn event(&self, agent_id: &str, generation: u64, ev: JobEvent) {
        self.accept_event(agent_id, generation, ev);
        self.backpressure(agent_id).await;
    }

    async fn report(&self, agent_id: &str, generation: u64, jobs: Vec<RunningJob>) {
        for j in &jobs {
            if self.get(&j.job_id).is_none() {
                self.adopt(agent_id, &j.job_id).await;
            }
        }
        let reported: HashSet<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        let mut lost = Vec::new();
        let mut cancel = Vec::new();
        for job in self.live() {
            let mut st = lock(&job.st);
            if st.record.agent_id != agent_id || st.record.status.is_terminal() {
                continue;
            }
            if reported.contains(job.id.as_str()) {
                st.generation = st.generation.max(generation);
                st.orphan_since = None;
                if st.cancel_requested {
                    cancel.push(job.clone());
                }
            } else if st.generation < generation {
                lost.push(job.clone());
            }
        }
        for job in cancel {
            self.send_cancel(&job);
        }
        for job in lost {
            tracing::warn!(job_id = %job.id, agent_id, "agent no longer runs the job");
            self.end(
                &job,
                EventType::Error,
                format!(
                    "agent lost: {agent_id} no longer runs the job (it restarted, or never received it)"
                ),
                "AGENT_LOST",
            );
        }
        for j in &jobs {
            let running_here = self
                .get(&j.job_id)
                .is_some_and(|job| !lock(&job.st).record.status.is_terminal());
            if !running_here {
                self.link.send_frame(
                    agent_id,
                    cancel_frame(
                        &j.job_id,
                        "the server has no running job with this id (it ended, e.g. as agent lost)",
                    ),
                );
            }
        }
    }

    fn node_disabled(&self, agent_id: &str, reason: &str) {
        for job in self.live() {
            let cancel = {
                let mut st = lock(&job.st);
                let mine = st.record.agent_id == agent_id && !st.record.status.is_terminal();
                if mine && !st.cancel_requested {
                    st.cancel_requested = true;
                    st.record.cancel_reason = reason.to_string();
                    st.touch_record();
                }
                mine
            };
            if cancel {
                tracing::info!(job_id = %job.id, agent_id, "cancelling job: node disabled");
                self.mark(&job);
                self.send_cancel(&job);
            }
        }
    }

    fn agent_gone(&self, agent_id: &str, reason: &str) {
        if let Some(fwd) = self.forwarder.get()
            && let Some(owner) = fwd.remote_owner(agent_id)
        {
            // The agent moved to another replica, which adopts its jobs: let them go here.
            for job in self.live() {
                let mine = {
                    let st = lock(&job.st);
                    st.record.agent_id == agent_id && !st.record.status.is_terminal()
                };
                if mine {
                    tracing::info!(job_id = %job.id, agent_id, owner = %owner, "job handed over: its agent moved");
                    lock(&job.st).moved_to = Some(owner.clone());
                    job.changed.send_replace(());
                    self.remove(&job.id);
                }
            }
            return;
        }
        for job in self.live() {
            let mine = {
                let st = lock(&job.st);
                st.record.agent_id == agent_id && !st.record.status.is_terminal()
            };
            if mine {
                tracing::warn!(job_id = %job.id, agent_id, reason, "job ends: agent lost");
                self.end(
                    &job,
                    EventType::Error,
                    format!("agent lost: {agent_id} went away ({reason})"),
                    "AGENT_LOST",
                );
            }
        }
    }
}

/// Appends a new event to a job and applies what it means to the record; then drops the oldest
/// stored events past the job's count and byte retention. Returns the bytes added and dropped.
fn apply(cfg: &JobConfig, st: &mut JobState, ev: JobEvent) -> (usize, usize) {
    let kind = EventType::try_from(ev.r#type).unwrap_or(EventType::Log);
    let r = &mut st.record;
    match kind {
        EventType::Start | EventType::Progress | EventType::Log | EventType::Gap => {
            if r.status == JobStatus::Pending {
                r.status = JobStatus::Running;
                r.started_at = if ev.timestamp > 0 {
                    ev.timestamp
                } else {
                    now_ms()
                };
                st.record_version += 1;
            }
        }
        EventType::Done | EventType::Error | EventType::Cancelled => {
            record_end(r, kind, &ev);
            st.ended = Some(Instant::now());
            st.record_version += 1;
        }
    }
    let r = &mut st.record;
    r.last_seq = ev.seq;
    if r.first_seq == 0 {
        r.first_seq = ev.seq;
    }
    let added = ev.encoded_len();
    st.bytes += added;
    st.events.push_back(ev);
    // Count and byte retention, never past what is stored.
    let mut dropped = 0;
    while st.events.len() > cfg.max_events.max(1) || st.bytes > cfg.max_job_bytes {
        let Some(n) = st.prune_one() else { break };
        dropped += n;
    }
    if dropped > 0 {
        st.record.first_seq = st.first_available();
        if st.bytes + dropped > cfg.max_job_bytes {
            metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "job_event_bytes").increment(1);
        }
    }
    (added, dropped)
}

/// Writes what a terminal event means into the job's record: status, end time, result or error.
fn record_end(r: &mut JobRecord, kind: EventType, ev: &JobEvent) {
    let data = opt_struct_to_json(ev.data.as_ref());
    r.status = match kind {
        EventType::Done => JobStatus::Completed,
        EventType::Error => JobStatus::Failed,
        _ => JobStatus::Cancelled,
    };
    r.ended_at = if ev.timestamp > 0 {
        ev.timestamp
    } else {
        now_ms()
    };
    if r.started_at == 0 {
        r.started_at = r.ended_at;
    }
    match kind {
        EventType::Done => r.result = data,
        _ => {
            r.error = ev.message.clone();
            r.error_code = data
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or(if kind == EventType::Cancelled {
                    "CANCELLED"
                } else {
                    "ERROR"
                })
                .to_string();
        }
    }
}

/// Keeps an event within `max_bytes`: a larger one keeps its type, seq and times, its message
/// is cut, and its data becomes a note of its size (a `DONE` whose result is dropped becomes an
/// `ERROR`, since its result is gone).
fn bound_event(ev: &mut JobEvent, max_bytes: usize) {
    let bytes = ev.encoded_len();
    if bytes <= max_bytes {
        return;
    }
    metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "job_event_size").increment(1);
    tracing::warn!(job_id = %ev.job_id, seq = ev.seq, bytes, max_bytes, "job event too large; its data was dropped");
    let mut message = croupier_proto::limits::excerpt(&ev.message, 4096);
    let mut code = "EVENT_TOO_LARGE";
    if ev.r#type == EventType::Done as i32 {
        ev.r#type = EventType::Error as i32;
        code = "RESULT_TOO_LARGE";
        message = format!(
            "the job's result was {bytes} bytes, more than the {max_bytes} an event may hold \
             (jobs.max_event_bytes)"
        );
    }
    ev.message = message;
    ev.data = Some(json_to_struct(&serde_json::json!({
        "code": code,
        "bytes": bytes,
        "limit": max_bytes,
    })));
}

/// Follows a live job for one subscriber.
async fn follow(job: Arc<Job>, mut next: i64, tx: mpsc::Sender<Result<JobEvent, Status>>) {
    let mut changed = job.changed.subscribe();
    loop {
        let (gap_ev, batch, caught_up_and_done, moved) = {
            let st = lock(&job.st);
            let first = st.first_available();
            let gap_ev = (next < first).then(|| gap(&job.id, next, first));
            if gap_ev.is_some() {
                next = first;
            }
            let i = st.index_of(next);
            let batch: Vec<JobEvent> = st.events.range(i..).take(FOLLOW_BATCH).cloned().collect();
            let last_in_batch = batch.last().map(|e| e.seq).unwrap_or(next - 1);
            let done = st.record.status.is_terminal() && last_in_batch >= st.record.last_seq;
            let moved = st
                .moved_to
                .clone()
                .filter(|_| last_in_batch >= st.record.last_seq);
            (gap_ev, batch, done, moved)
        };
        if let Some(g) = gap_ev
            && tx.send(Ok(g)).await.is_err()
        {
            return;
        }
        let full = batch.len() == FOLLOW_BATCH;
        for e in batch {
            next = e.seq + 1;
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        if caught_up_and_done {
            return;
        }
        if let Some(server) = moved {
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "job {} moved to server {server} with its agent; resume with from_seq {next}",
                    job.id
                ))))
                .await;
            return;
        }
        if full {
            continue;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

fn gap(job_id: &str, from: i64, next: i64) -> JobEvent {
    JobEvent {
        job_id: job_id.to_string(),
        r#type: EventType::Gap as i32,
        message: format!(
            "events {from}..={} were dropped by the server's retention and cannot be replayed; \
             continuing with {next}",
            next - 1
        ),
        progress: 0.0,
        timestamp: now_ms(),
        data: Some(json_to_struct(
            &serde_json::json!({ "from_seq": from, "next_seq": next }),
        )),
        seq: 0,
        received_at: 0,
    }
}

fn is_terminal_event(kind: i32) -> bool {
    matches!(
        EventType::try_from(kind),
        Ok(EventType::Done | EventType::Error | EventType::Cancelled)
    )
}

fn ack_frame(job_id: &str, seq: i64) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::Ack(cpb::Ack {
            job_id: job_id.to_string(),
            seq,
        })),
    }
}

fn cancel_frame(job_id: &str, reason: &str) -> ServerFrame {
    ServerFrame {
        frame: Some(server_frame::Frame::Cancel(cpb::Cancel {
            request_id: job_id.to_string(),
            reason: reason.to_string(),
        })),
    }
}

fn not_found(job_id: &str) -> FunctionError {
    FunctionError::NotFound(format!(
        "job {job_id:?} does not exist (or its record passed retention); `croupier job list` \
         shows the jobs there are"
    ))
}

fn already_finished(r: &JobRecord) -> pb::CancelJobResponse {
    pb::CancelJobResponse {
        success: false,
        status: r.status.as_str().into(),
        message: format!("job {} already finished ({})", r.job_id, r.status.as_str()),
    }
}

fn parse_token(token: &str) -> Result<(i64, String), FunctionError> {
    let bad = || {
        FunctionError::InvalidArgument(format!(
            "page_token {token:?} is not a token from a previous ListJobs page"
        ))
    };
    let (at, id) = token.split_once('.').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, kind: EventType) -> JobEvent {
        JobEvent {
            job_id: "j".into(),
            r#type: kind as i32,
            seq,
            timestamp: 1,
            ..Default::default()
        }
    }

    #[test]
    fn apply_moves_the_status_and_keeps_stored_events() {
        let cfg = JobConfig {
            max_events: 2,
            ..Default::default()
        };
        let mut st = JobState::new(JobRecord::default());
        apply(&cfg, &mut st, ev(1, EventType::Start));
        assert_eq!(st.record.status, JobStatus::Running);
        apply(&cfg, &mut st, ev(2, EventType::Log));
        apply(&cfg, &mut st, ev(3, EventType::Log));
        // Nothing is stored yet, so nothing may be dropped.
        assert_eq!(st.events.len(), 3);
        st.persisted_seq = 3;
        apply(&cfg, &mut st, ev(4, EventType::Done));
        assert_eq!(
            st.events.len(),
            2,
            "count retention applies to stored events"
        );
        assert_eq!(st.record.first_seq, 3);
        assert_eq!(st.record.status, JobStatus::Completed);
        assert_eq!(st.record.last_seq, 4);
        assert_eq!(st.index_of(4), 1);
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(parse_token("12.abc").unwrap(), (12, "abc".to_string()));
        assert!(parse_token("nonsense").is_err());
    }
}
