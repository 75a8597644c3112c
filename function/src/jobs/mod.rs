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
//!
//! Layout:
//! - `record` — settings, status, the stored record.
//! - `state` — a job in memory: events, what is stored.
//! - `persist` — the writer: events and record in one atomic write, then `Ack`.
//! - `follow` — `StreamJobEvents`: replay, follow, gaps.
//! - `sweep` — orphans, repeated cancels, retention.
//! - `sink` — the tunnel's job frames (`JobSink`).
//! - `steps` — pipeline step logs: gathered, stored when a step ends, read, followed.

mod follow;
mod persist;
mod record;
mod sink;
mod state;
mod steps;
mod sweep;
#[cfg(test)]
mod tests;

pub use record::{JobConfig, JobRecord, JobStatus};
use sink::AgentUsage;
use state::*;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::FunctionError;
use crate::forward::Forwarder;
use croupier_control::audit::{AuditLog, AuditRecord};
use croupier_control::{AgentLink, LinkError};
use croupier_proto::control::v1::{self as cpb, ServerFrame, server_frame};
use croupier_proto::function::v1::{self as pb, EventType, JobEvent};
use croupier_proto::json::json_to_struct;
use croupier_registry::identity::{Identity, Role};
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::model::now_ms;
use croupier_registry::policy::{Action, Policy, Request as PolicyRequest};
use croupier_registry::store::{CasOutcome, Expect, Store, StoreError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

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
    forwarder: Option<Arc<Forwarder>>,
    audit: AuditLog,
    /// Bytes of events per agent, kept in memory and not yet stored, and their sum.
    usage: Mutex<(HashMap<String, AgentUsage>, AgentUsage)>,
    /// Notified when the writer stored events (agents waiting on backpressure look again).
    stored: Notify,
    /// Where the admin policy comes from (unset: the built-in policy).
    policy: std::sync::OnceLock<Arc<croupier_registry::view::RegistryView>>,
    /// Where a failed job is told as a node event (unset: nowhere).
    node_events: std::sync::OnceLock<Arc<croupier_control::fleet::EventLog>>,
}

impl JobManager {
    /// Loads unfinished jobs from the store (they wait for their agents to report them) and
    /// starts the writer and the sweeper on `tasks`; they end with `shutdown` (the writer
    /// flushes first), so waiting for `tasks` waits for the last flush.
    pub async fn start(
        cfg: JobConfig,
        store: Arc<dyn Store>,
        link: Arc<dyn AgentLink>,
        forwarder: Option<Arc<Forwarder>>,
        audit: AuditLog,
        tasks: &croupier_proto::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let m = Arc::new(JobManager {
            cfg,
            store,
            link,
            jobs: RwLock::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            forwarder,
            audit,
            usage: Mutex::new((HashMap::new(), AgentUsage::default())),
            stored: Notify::new(),
            policy: std::sync::OnceLock::new(),
            node_events: std::sync::OnceLock::new(),
        });
        m.load().await?;
        croupier_proto::task::spawn_on(tasks, "job writer", m.clone().run_writer(shutdown.clone()));
        croupier_proto::task::spawn_on(tasks, "job sweeper", m.clone().run_sweeper(shutdown));
        Ok(m)
    }

    /// The configuration.
    pub fn config(&self) -> &JobConfig {
        &self.cfg
    }

    /// The replica running `record`'s job, when it is not finished and runs elsewhere.
    fn remote_owner(&self, record: &JobRecord) -> Option<&Arc<Forwarder>> {
        let fwd = self.forwarder.as_ref()?;
        (!record.status.is_terminal() && fwd.is_remote_server(&record.server_id)).then_some(fwd)
    }

    fn get(&self, job_id: &str) -> Option<Arc<Job>> {
        self.jobs.read().get(job_id).cloned()
    }

    fn live(&self) -> Vec<Arc<Job>> {
        self.jobs.read().values().cloned().collect()
    }

    /// Jobs this server runs now (not ended; jobs a replica runs are counted by that replica).
    pub fn running(&self) -> usize {
        self.jobs
            .read()
            .values()
            .filter(|j| !j.st.lock().record.status.is_terminal())
            .count()
    }

    /// Lets a job go from memory (its bytes no longer count for its agent).
    fn remove(&self, job_id: &str) {
        let removed = self.jobs.write().remove(job_id);
        if let Some(job) = removed {
            let st = job.st.lock();
            let unstored: usize = st
                .events
                .iter()
                .filter(|e| e.seq > st.persisted_seq)
                .map(prost::Message::encoded_len)
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
        let mut guard = self.usage.lock();
        let (usage, total) = &mut *guard;
        let u = usage.entry(agent_id.to_string()).or_default();
        u.retained = u.retained.saturating_add_signed(retained);
        u.unstored = u.unstored.saturating_add_signed(unstored);
        if u.retained == 0 && u.unstored == 0 {
            usage.remove(agent_id);
        }
        total.retained = total.retained.saturating_add_signed(retained);
        total.unstored = total.unstored.saturating_add_signed(unstored);
        let bytes = crate::metrics::JOB_EVENT_BYTES;
        metrics::gauge!(bytes, "state" => "retained").set(total.retained as f64);
        metrics::gauge!(bytes, "state" => "unstored").set(total.unstored as f64);
    }

    fn usage_of(&self, agent_id: &str) -> AgentUsage {
        self.usage
            .lock()
            .0
            .get(agent_id)
            .copied()
            .unwrap_or_default()
    }

    /// Stores a new job's record and sends its `Invoke` to `record.agent_id`. On a link error
    /// nothing ran and the record is gone again, so the caller may pick another agent.
    pub async fn create(&self, record: JobRecord, invoke: cpb::Invoke) -> Result<(), CreateError> {
        let id = record.job_id.clone();
        let agent = record.agent_id.clone();
        let value = serde_json::to_vec(&record)
            .map_err(|e| CreateError::Store(FunctionError::Corrupt(format!("job record: {e}"))))?;
        let job = Job::new(id.clone(), JobState::new(record));
        self.jobs.write().insert(id.clone(), job.clone());
        let stored = self
            .store
            .compare_and_put(&keys::job(&id), Expect::Absent, value, None)
            .await;
        match stored {
            Ok(CasOutcome::Done(_)) => {}
            Ok(CasOutcome::Conflict(_)) => {
                self.remove(&id);
                return Err(CreateError::Store(FunctionError::Corrupt(format!(
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
                let mut st = job.st.lock();
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

    /// Decides reads and cancels of others' jobs by the policy `view` follows. Set once, at
    /// start; until then the built-in policy applies.
    pub fn set_policy_source(&self, view: Arc<croupier_registry::view::RegistryView>) {
        let _ = self.policy.set(view);
    }

    /// Tells every job that fails here as a `job.failed` node event of its agent in `log`.
    /// Set once; later calls are ignored.
    pub fn set_node_events(&self, log: Arc<croupier_control::fleet::EventLog>) {
        let _ = self.node_events.set(log);
    }

    /// A `job.failed` node event for a job that just failed.
    pub(super) fn tell_failed(&self, r: &JobRecord) {
        let Some(log) = self.node_events.get() else {
            return;
        };
        log.record(croupier_proto::control::v1::NodeEvent {
            r#type: "job.failed".into(),
            node_id: r.agent_id.clone(),
            entity_id: r.job_id.clone(),
            status: "failed".into(),
            message: format!("job {} of {} failed: {}", r.job_id, r.function_id, r.error),
            data: [
                ("function".to_string(), r.function_id.clone()),
                ("error_code".to_string(), r.error_code.clone()),
            ]
            .into_iter()
            .collect(),
            game_id: r.game_id.clone(),
            env: r.env.clone(),
            ..Default::default()
        });
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy
            .get()
            .map_or_else(|| Arc::new(Policy::builtin()), |v| v.policy())
    }

    /// Whether `who` may read (get, list, follow) the job of `record`; see [`job_access`].
    pub fn may_read(&self, who: &Identity, record: &JobRecord) -> Result<(), FunctionError> {
        self.job_access(who, record, Action::Read)
    }

    /// True when `who` may `action` the job of `record`: servers always (they forward for a
    /// caller the first server checked); anyone else inside their scopes, and then the job's
    /// caller, whoever the policy grants `action` on the job's function, or (reads, with
    /// `jobs.clients_read_all`) every client.
    fn may_access(
        &self,
        who: &Identity,
        record: &JobRecord,
        action: Action,
        policy: &Policy,
    ) -> bool {
        who.role == Role::Server
            || (who.scopes.allows(&record.game_id, &record.env)
                && (who.uri() == record.caller
                    || (action == Action::Read
                        && self.cfg.clients_read_all
                        && who.role == Role::Client)
                    || policy
                        .decide(
                            who,
                            PolicyRequest {
                                action,
                                function: &record.function_id,
                                game: &record.game_id,
                                env: &record.env,
                            },
                        )
                        .allowed))
    }

    /// [`JobManager::may_access`] as a status that says what would allow it.
    fn job_access(
        &self,
        who: &Identity,
        record: &JobRecord,
        action: Action,
    ) -> Result<(), FunctionError> {
        let policy = self.policy();
        if self.may_access(who, record, action, &policy) {
            return Ok(());
        }
        let verb = if action == Action::Read {
            "read"
        } else {
            "cancel"
        };
        if let Some(refusal) =
            who.out_of_scope(&format!("{verb} jobs"), &record.game_id, &record.env)
        {
            return Err(FunctionError::NotAllowed(refusal));
        }
        Err(FunctionError::NotAllowed(format!(
            "identity {who} may not {verb} job {}: it was started by {}, and only its caller or \
             an identity the policy grants `{}` on {} may (an admin can add a rule with \
             `croupier policy put`)",
            record.job_id,
            record.caller,
            action.as_str(),
            record.function_id
        )))
    }

    /// `GetJob`.
    pub async fn get_job(
        &self,
        who: &Identity,
        job_id: &str,
    ) -> Result<pb::JobRecord, FunctionError> {
        check_id("job_id", job_id).map_err(FunctionError::BadRequest)?;
        if let Some(job) = self.get(job_id) {
            let record = job.st.lock().record.clone();
            self.may_read(who, &record)?;
            return Ok(record.to_proto());
        }
        let record = self
            .load_record(job_id)
            .await?
            .ok_or_else(|| not_found(job_id))?;
        self.may_read(who, &record)?;
        if let Some(fwd) = self.remote_owner(&record) {
            // The live record (last seq, status) is on the replica running it.
            match fwd.get_job(&record.server_id, who, job_id).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!(job_id, error = %e, "live job record not reachable; answering the stored one");
                }
            }
        }
        Ok(record.to_proto())
    }

    /// `ListJobs`: filtered, newest first, paged by `page_token` (the last job of the previous
    /// page).
    pub async fn list_jobs(
        &self,
        who: &Identity,
        req: &pb::ListJobsRequest,
    ) -> Result<pb::ListJobsResponse, FunctionError> {
        let status = if req.status.is_empty() {
            None
        } else {
            Some(JobStatus::parse(&req.status).ok_or_else(|| {
                FunctionError::BadRequest(format!(
                    "status {:?} is not one of pending, running, completed, failed, cancelled",
                    req.status
                ))
            })?)
        };
        if req.page_size < 0 {
            return Err(FunctionError::BadRequest(format!(
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
            let r = job.st.lock().record.clone();
            records.insert(r.job_id.clone(), r);
        }
        let policy = self.policy();
        let keep = |r: &JobRecord| {
            (req.function_id.is_empty() || r.function_id == req.function_id)
                && (req.agent_id.is_empty() || r.agent_id == req.agent_id)
                && (req.game_id.is_empty() || r.game_id == req.game_id)
                && (req.env.is_empty() || r.env == req.env)
                && status.is_none_or(|s| r.status == s)
                && self.may_access(who, r, Action::Read, &policy)
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

    /// `CancelJob`: asks the job's agent to cancel it; only the caller who started the job or
    /// an admin may.
    pub async fn cancel(
        &self,
        who: &Identity,
        job_id: &str,
        reason: &str,
    ) -> Result<pb::CancelJobResponse, FunctionError> {
        let outcome = self.cancel_inner(who, job_id, reason).await;
        let result = match &outcome {
            Ok(r) if r.success => "ok".to_string(),
            Ok(r) => r.message.clone(),
            Err(e) => e.code_name().to_string(),
        };
        self.audit
            .record(
                AuditRecord::new(who.uri(), "cancel_job", job_id)
                    .outcome(result)
                    .details(serde_json::json!({ "reason": reason })),
            )
            .await;
        outcome
    }

    async fn cancel_inner(
        &self,
        who: &Identity,
        job_id: &str,
        reason: &str,
    ) -> Result<pb::CancelJobResponse, FunctionError> {
        check_id("job_id", job_id).map_err(FunctionError::BadRequest)?;
        let Some(job) = self.get(job_id) else {
            let record = self
                .load_record(job_id)
                .await?
                .ok_or_else(|| not_found(job_id))?;
            self.job_access(who, &record, Action::Cancel)?;
            if let Some(fwd) = self.remote_owner(&record) {
                let req = pb::CancelJobRequest {
                    job_id: job_id.to_string(),
                    reason: reason.to_string(),
                };
                return Ok(fwd.cancel_job(&record.server_id, who, req).await?);
            }
            if !record.status.is_terminal() {
                return Err(FunctionError::ReplicaUnreachable(format!(
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
            let mut st = job.st.lock();
            // Who may cancel is checked first: a finished job's state is not told to others.
            self.job_access(who, &st.record, Action::Cancel)?;
            if st.record.status.is_terminal() {
                return Ok(already_finished(&st.record));
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
            let mut st = job.st.lock();
            st.cancel_sent = Some(Instant::now());
            (st.record.agent_id.clone(), st.record.cancel_reason.clone())
        };
        self.link.send_frame(&agent, cancel_frame(&job.id, &reason));
    }

    /// Ends a job on the server's side with a synthesized terminal event.
    fn end(&self, job: &Job, kind: EventType, message: String, code: &str) {
        {
            let mut st = job.st.lock();
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
            if kind == EventType::Error {
                self.tell_failed(&st.record);
            }
            let agent = st.record.agent_id.clone();
            drop(st);
            self.account(&agent, added as isize - dropped as isize, added as isize);
        }
        job.changed.send_replace(());
        self.mark(job);
    }

    fn mark(&self, job: &Job) {
        self.dirty.lock().insert(job.id.clone());
        self.wake.notify_one();
    }
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
    FunctionError::JobNotFound(job_id.to_string())
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
        FunctionError::BadRequest(format!(
            "page_token {token:?} is not a token from a previous ListJobs page"
        ))
    };
    let (at, id) = token.split_once('.').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}
