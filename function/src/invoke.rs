//! [`Invoker`]: one invocation from request to response — resolve the function, authorise the
//! caller, validate the payload, apply idempotency, route, enforce the deadline, retry only
//! when it is safe, and answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use croupier_control::audit::{AuditLog, AuditRecord};
use croupier_control::{AgentLink, LinkError};
use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::control::v1::{Invoke, InvokeResult};
use croupier_proto::function::v1::{
    AgentResult, InvokeFunctionRequest, InvokeFunctionResponse, InvokeJobRequest, InvokeJobResponse,
};
use croupier_proto::json::opt_struct_to_json;
use croupier_proto::limits::{PayloadError, check_payload};
use croupier_registry::identity::{Identity, Role};
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::model::{DescriptorRecord, DescriptorSource, NodeState, now_ms};
use croupier_registry::schema::{PayloadCheckError, SchemaCache, SchemaLimits};
use croupier_registry::store::Store;
use croupier_registry::view::{Candidate, FnKey, RegistryView};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::FunctionError;
use crate::forward::Forwarder;
use crate::idempotency::{Begin, Idempotency, payload_hash};
use crate::jobs::{CreateError, JobManager, JobRecord, JobStatus};
use crate::pipeline::Pipelines;
use crate::router::{Mode, Rotation, Slot, rendezvous};

/// Invocation settings.
#[derive(Clone, Debug)]
pub struct InvokeConfig {
    /// Deadline when neither the call nor the descriptor sets one. Default 30 s.
    pub default_timeout: Duration,
    /// Longest deadline accepted. Default 1 h.
    pub max_timeout: Duration,
    /// How long idempotent outcomes are kept. Default 24 h.
    pub idempotency_retention: Duration,
    /// Most calls one caller identity may have in flight. Default 1024.
    pub max_concurrent_per_caller: usize,
    /// The server's message limit: payloads must fit in it with room for the tunnel frame.
    /// Default 10 MiB.
    pub max_message_bytes: usize,
    /// Bounds on params schemas.
    pub schema_limits: SchemaLimits,
    /// Longest a payload's schema validation may take. Default 1 s.
    pub schema_budget: Duration,
    /// Most bytes of one function descriptor, encoded. Default 64 KiB.
    pub max_descriptor_bytes: usize,
    /// How long after the deadline of a call with an idempotency key the server still waits for
    /// the agent's answer (the key stays claimed meanwhile, so nothing runs twice). Default 30 s.
    pub late_answer_grace: Duration,
}

impl Default for InvokeConfig {
    fn default() -> Self {
        InvokeConfig {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(3600),
            idempotency_retention: Duration::from_secs(24 * 3600),
            max_concurrent_per_caller: 1024,
            max_message_bytes: croupier_proto::limits::DEFAULT_MAX_MESSAGE_BYTES,
            schema_limits: SchemaLimits::default(),
            schema_budget: Duration::from_secs(1),
            max_descriptor_bytes: 64 * 1024,
            late_answer_grace: Duration::from_secs(30),
        }
    }
}

/// Runs invocations. Share it as `Arc<Invoker>`.
pub struct Invoker {
    cfg: InvokeConfig,
    store: Arc<dyn Store>,
    view: Arc<RegistryView>,
    link: Arc<dyn AgentLink>,
    idem: Arc<Idempotency>,
    schemas: SchemaCache,
    rotation: Rotation,
    audit: AuditLog,
    per_caller: Mutex<HashMap<String, Arc<Semaphore>>>,
    jobs: Option<Arc<JobManager>>,
    forwarder: Option<Arc<Forwarder>>,
    pipelines: Pipelines,
}

/// A request whose function is resolved, caller authorised and payload checked.
struct Prepared {
    key: FnKey,
    descriptor: Option<Arc<DescriptorRecord>>,
    opts: croupier_proto::function::v1::InvokeOptions,
    mode: Mode,
    /// The payload as JSON, when it was needed (schema or idempotency key).
    payload_json: Option<Arc<serde_json::Value>>,
    /// Another replica forwarded the request: only this server's agents may take it.
    local_only: bool,
}

/// A call, resolved and checked, ready to route.
struct Call<'a> {
    local_only: bool,
    who: &'a Identity,
    key: FnKey,
    req: &'a InvokeFunctionRequest,
    deadline: Instant,
    timeout: Duration,
    retry_safe: bool,
    /// The call claimed an idempotency key: an answer after the deadline still counts.
    keyed: bool,
    /// Set by [`Invoker::send`] when the deadline passed while the agent still ran the call.
    late: Mutex<Option<LateAnswer>>,
}

/// A call whose deadline passed on an agent that may still be running it.
struct LateAnswer {
    agent: String,
    answer: AbortOnDrop<Result<InvokeResult, LinkError>>,
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Invoker {
    /// Builds an invoker over the registry `view`, reaching agents through `link`.
    pub fn new(
        cfg: InvokeConfig,
        store: Arc<dyn Store>,
        view: Arc<RegistryView>,
        link: Arc<dyn AgentLink>,
        audit: AuditLog,
    ) -> Self {
        let idem = Arc::new(Idempotency::new(store.clone(), cfg.idempotency_retention));
        let pipelines = Pipelines::new(store.clone());
        let schemas = SchemaCache::new(cfg.schema_limits, cfg.schema_budget);
        Invoker {
            cfg,
            store,
            view,
            link,
            idem,
            schemas,
            rotation: Rotation::default(),
            audit,
            per_caller: Mutex::new(HashMap::new()),
            jobs: None,
            forwarder: None,
            pipelines,
        }
    }

    /// Forwards calls and jobs for agents held by other replicas through `forwarder`.
    pub fn with_forwarder(mut self, forwarder: Arc<Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// Runs jobs with `jobs` (without it, `InvokeJob` answers UNAVAILABLE).
    pub fn with_jobs(mut self, jobs: Arc<JobManager>) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// The pipeline templates.
    pub fn pipelines(&self) -> &Pipelines {
        &self.pipelines
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The job manager, when jobs are served.
    pub fn jobs(&self) -> Option<&Arc<JobManager>> {
        self.jobs.as_ref()
    }

    /// The idempotency records (for the periodic sweep).
    pub fn idempotency(&self) -> &Idempotency {
        &self.idem
    }

    /// Invokes a function for `who`. `caller_timeout` is the gRPC deadline the caller sent.
    #[tracing::instrument(level = "debug", skip_all, fields(function = %req.function_id, caller = %who))]
    pub async fn invoke(
        &self,
        who: &Identity,
        req: InvokeFunctionRequest,
        caller_timeout: Option<Duration>,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        self.invoke_as(who, req, caller_timeout, false).await
    }

    /// Like [`Invoker::invoke`]; with `forwarded` (another replica sent it), only this
    /// server's agents are candidates.
    pub async fn invoke_as(
        &self,
        who: &Identity,
        req: InvokeFunctionRequest,
        caller_timeout: Option<Duration>,
        forwarded: bool,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let started = Instant::now();
        let _permit = self.admit(who)?;
        let result = self
            .invoke_inner(who, &req, caller_timeout, started, forwarded)
            .await;
        if self.audit.enabled() {
            let descriptor =
                self.view
                    .descriptor(&FnKey::new(&req.game_id, &req.env, &req.function_id));
            let sensitive = descriptor
                .map(|d| d.sensitive_fields.clone())
                .unwrap_or_default();
            let outcome = match &result {
                Ok(r) if r.success => "ok".to_string(),
                Ok(r) => format!("handler error: {}", r.error_code),
                Err(e) => e.code_name().to_string(),
            };
            self.audit.record(AuditRecord {
                at: now_ms(),
                who: who.uri(),
                action: "invoke",
                target: format!("{}/{}/{}", req.game_id, req.env, req.function_id),
                outcome,
                details: serde_json::json!({
                    "agent": result.as_ref().map(|r| r.agent_id.clone()).unwrap_or_default(),
                    "payload": self.audit.payload(&opt_struct_to_json(req.payload.as_ref()), &sensitive),
                    "millis": started.elapsed().as_millis() as u64,
                }),
            });
        }
        result
    }

    /// Takes one of the caller's concurrency slots.
    fn admit(&self, who: &Identity) -> Result<OwnedSemaphorePermit, FunctionError> {
        let limit = self.cfg.max_concurrent_per_caller;
        let sem = {
            let mut map = self.per_caller.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > 10_000 {
                map.retain(|_, s| s.available_permits() < limit);
            }
            map.entry(who.uri())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| {
            FunctionError::ResourceExhausted(format!(
                "identity {who} already has {limit} calls in flight (the per-caller limit); \
                 wait for some to finish"
            ))
        })
    }

    /// Checks ids, resolves the function, authorises the caller and validates the payload
    /// (its depth and size against the limits every decoder shares, then its schema, within
    /// the caller's deadline).
    async fn prepare(
        &self,
        who: &Identity,
        req: &InvokeFunctionRequest,
        local_only: bool,
        caller_timeout: Option<Duration>,
    ) -> Result<Prepared, FunctionError> {
        check_id("game_id", &req.game_id).map_err(FunctionError::InvalidArgument)?;
        check_id("env", &req.env).map_err(FunctionError::InvalidArgument)?;
        check_id("function_id", &req.function_id).map_err(FunctionError::InvalidArgument)?;
        check_payload(req.payload.as_ref(), self.cfg.max_message_bytes).map_err(|e| {
            let msg = format!("the payload of {} {e}", req.function_id);
            match e {
                PayloadError::TooDeep { .. } => FunctionError::InvalidArgument(msg),
                PayloadError::TooLarge { .. } => FunctionError::ResourceExhausted(msg),
            }
        })?;
        let opts = req.options.clone().unwrap_or_default();
        let mode = Mode::parse(&opts.routing_mode)?;
        let key = FnKey::new(&req.game_id, &req.env, &req.function_id);
        let descriptor = self.view.descriptor(&key);
        if descriptor.is_none() && self.view.candidates(&key).is_empty() {
            return Err(FunctionError::NotFound(format!(
                "function {} is not registered in game {:?} env {:?}; `croupier functions` lists \
                 what is",
                req.function_id, req.game_id, req.env
            )));
        }
        if let Some(d) = &descriptor {
            authorize(who, d)?;
        }
        let keyed = !opts.idempotency_key.is_empty();
        let payload_json = if keyed
            || descriptor
                .as_ref()
                .is_some_and(|d| !d.params_schema.is_null())
        {
            Some(Arc::new(opt_struct_to_json(req.payload.as_ref())))
        } else {
            None
        };
        if let (Some(d), Some(p)) = (&descriptor, &payload_json) {
            let deadline = caller_timeout.map(|t| Instant::now() + t);
            self.schemas
                .check(&key, d, p.clone(), deadline)
                .await
                .map_err(|e| match e {
                    PayloadCheckError::Mismatch(e) => FunctionError::InvalidArgument(format!(
                        "payload does not match the params schema of {}: {e}",
                        req.function_id
                    )),
                    PayloadCheckError::BadSchema(e) => FunctionError::FailedPrecondition(format!(
                        "the params_schema of {} {e}; fix its descriptor",
                        req.function_id
                    )),
                    PayloadCheckError::Overran(t) => FunctionError::ResourceExhausted(format!(
                        "checking the payload against the params schema of {} took longer than \
                         {t:?}; the schema is too costly, and calls of {} are refused until its \
                         descriptor changes",
                        req.function_id, req.function_id
                    )),
                })?;
        }
        Ok(Prepared {
            key,
            descriptor,
            opts,
            mode,
            payload_json,
            local_only,
        })
    }

    async fn invoke_inner(
        &self,
        who: &Identity,
        req: &InvokeFunctionRequest,
        caller_timeout: Option<Duration>,
        started: Instant,
        forwarded: bool,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let Prepared {
            key,
            descriptor,
            opts,
            mode,
            payload_json,
            local_only,
        } = self.prepare(who, req, forwarded, caller_timeout).await?;
        let timeout = self.timeout(opts.timeout, descriptor.as_deref(), caller_timeout)?;
        let idem_key = (!opts.idempotency_key.is_empty()).then_some(opts.idempotency_key.as_str());
        let call = Call {
            local_only,
            who,
            key,
            retry_safe: idem_key.is_some() || descriptor.as_ref().is_some_and(|d| d.idempotent),
            req,
            deadline: started + timeout,
            timeout,
            keyed: idem_key.is_some() && mode != Mode::Broadcast,
            late: Mutex::new(None),
        };
        let Some(idem_key) = idem_key else {
            return self.route(&call, mode, &opts).await;
        };
        let record = Idempotency::record_key(&req.game_id, &req.env, &req.function_id, idem_key);
        let hash = payload_hash(payload_json.as_deref().unwrap_or(&serde_json::Value::Null));
        let hold = timeout + self.cfg.late_answer_grace;
        match self.idem.begin(record, hash, timeout, hold).await? {
            Begin::Replay(resp) => Ok(resp),
            Begin::Execute(ticket) => match self.route(&call, mode, &opts).await {
                Ok(resp) => {
                    self.idem.finish(ticket, &resp).await;
                    Ok(resp)
                }
                Err(e) => {
                    let late = call.late.lock().unwrap_or_else(|e| e.into_inner()).take();
                    match late {
                        Some(late) => self.await_late_answer(ticket, late),
                        None => self.idem.abandon(ticket).await,
                    }
                    Err(e)
                }
            },
        }
    }

    /// The deadline of a keyed call passed while its agent may still run it: the key stays
    /// claimed while the server waits (up to `late_answer_grace`) for the agent's answer. A
    /// handler that completed stores its outcome (repeats get it); one that was cancelled or
    /// timed out frees the key; no answer leaves the claim to expire.
    fn await_late_answer(&self, ticket: crate::idempotency::Ticket, mut late: LateAnswer) {
        let idem = self.idem.clone();
        let grace = self.cfg.late_answer_grace;
        tokio::spawn(async move {
            match tokio::time::timeout(grace, &mut late.answer.0).await {
                Ok(Ok(Ok(r)))
                    if r.success
                        || !matches!(r.error_code.as_str(), "DEADLINE_EXCEEDED" | "CANCELLED") =>
                {
                    tracing::info!(agent_id = %late.agent, "late answer of a keyed call stored");
                    idem.finish(ticket, &response(r, &late.agent)).await;
                }
                Ok(_) => idem.abandon(ticket).await,
                Err(_) => tracing::warn!(
                    agent_id = %late.agent,
                    "no answer from the agent within the grace after the deadline; the \
                     idempotency key stays claimed until it expires"
                ),
            }
        });
    }

    /// Starts a function as a job for `who` (`InvokeJob`): routes like `InvokeFunction`, stores
    /// the job and answers with its id at once. The same idempotency key returns the same job.
    #[tracing::instrument(skip_all, fields(function = %req.function_id, caller = %who))]
    pub async fn start_job(
        &self,
        who: &Identity,
        req: InvokeJobRequest,
    ) -> Result<InvokeJobResponse, FunctionError> {
        self.start_job_as(who, req, false).await
    }

    /// Like [`Invoker::start_job`]; with `forwarded`, only this server's agents are candidates.
    pub async fn start_job_as(
        &self,
        who: &Identity,
        req: InvokeJobRequest,
        forwarded: bool,
    ) -> Result<InvokeJobResponse, FunctionError> {
        let jobs = self
            .jobs
            .clone()
            .ok_or_else(|| FunctionError::Unavailable("this server does not run jobs".into()))?;
        let _permit = self.admit(who)?;
        let mut req = InvokeFunctionRequest {
            game_id: req.game_id,
            env: req.env,
            function_id: req.function_id,
            payload: req.payload,
            options: req.options,
        };
        if req.function_id == crate::pipeline::START && !forwarded {
            // The server fills the template's args; the agent gets the whole template.
            let given = opt_struct_to_json(req.payload.as_ref());
            let prepared = self.pipelines.prepare_start(&given).await?;
            req.payload = Some(croupier_proto::json::json_to_struct(&prepared));
        }
        let p = self.prepare(who, &req, forwarded, None).await?;
        if p.mode == Mode::Broadcast {
            return Err(FunctionError::InvalidArgument(
                "routing_mode broadcast is not supported for jobs: a job runs on one agent; \
                 start one job per agent with routing_mode targeted"
                    .into(),
            ));
        }
        if p.opts.timeout < 0 {
            return Err(FunctionError::InvalidArgument(format!(
                "options.timeout is {}; give seconds > 0, or 0 for the default",
                p.opts.timeout
            )));
        }
        let max = jobs.config().max_duration;
        let timeout = if p.opts.timeout > 0 {
            Duration::from_secs(p.opts.timeout as u64)
        } else {
            p.descriptor
                .as_ref()
                .filter(|d| d.job && d.timeout_secs > 0)
                .map_or(max, |d| Duration::from_secs(d.timeout_secs as u64))
        }
        .min(max);
        let started = Instant::now();
        let outcome = if p.opts.idempotency_key.is_empty() {
            self.dispatch_job(who, &req, &p, timeout, &jobs).await
        } else {
            // Scoped apart from InvokeFunction's keys: a job and a call of the same function may
            // use the same key without meeting.
            let record = Idempotency::record_key(
                &req.game_id,
                &req.env,
                &req.function_id,
                &format!("job:{}", p.opts.idempotency_key),
            );
            let hash = payload_hash(
                p.payload_json
                    .as_deref()
                    .unwrap_or(&serde_json::Value::Null),
            );
            match self
                .idem
                .begin(
                    record,
                    hash,
                    Duration::from_secs(30),
                    Duration::from_secs(30),
                )
                .await?
            {
                Begin::Replay(resp) => {
                    let job_id = opt_struct_to_json(resp.result.as_ref())["job_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let status = jobs
                        .get_job(who, &job_id)
                        .await
                        .map(|r| r.status)
                        .unwrap_or_default();
                    return Ok(InvokeJobResponse {
                        success: true,
                        job_id,
                        status,
                    });
                }
                Begin::Execute(ticket) => {
                    match self.dispatch_job(who, &req, &p, timeout, &jobs).await {
                        Ok((job_id, agent)) => {
                            // Stored as an InvokeFunctionResponse whose result holds the job id.
                            let resp = InvokeFunctionResponse {
                                success: true,
                                result: Some(croupier_proto::json::json_to_struct(
                                    &serde_json::json!({ "job_id": job_id }),
                                )),
                                agent_id: agent.clone(),
                                ..Default::default()
                            };
                            self.idem.finish(ticket, &resp).await;
                            Ok((job_id, agent))
                        }
                        Err(e) => {
                            self.idem.abandon(ticket).await;
                            Err(e)
                        }
                    }
                }
            }
        };
        let outcome_name = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code_name().to_string(),
        };
        self.audit.record(AuditRecord {
            at: now_ms(),
            who: who.uri(),
            action: "invoke_job",
            target: format!("{}/{}/{}", req.game_id, req.env, req.function_id),
            outcome: outcome_name,
            details: serde_json::json!({
                "job_id": outcome.as_ref().map(|(j, _)| j.clone()).unwrap_or_default(),
                "agent": outcome.as_ref().map(|(_, a)| a.clone()).unwrap_or_default(),
                "payload": self.audit.payload(
                    &opt_struct_to_json(req.payload.as_ref()),
                    &p.descriptor.as_ref().map(|d| d.sensitive_fields.clone()).unwrap_or_default(),
                ),
                "millis": started.elapsed().as_millis() as u64,
            }),
        });
        let (job_id, _) = outcome?;
        Ok(InvokeJobResponse {
            success: true,
            job_id,
            status: JobStatus::Pending.as_str().into(),
        })
    }

    /// Picks an agent, stores the job and sends it; moves to another agent when the first
    /// could not be sent the job.
    async fn dispatch_job(
        &self,
        who: &Identity,
        req: &InvokeFunctionRequest,
        p: &Prepared,
        timeout: Duration,
        jobs: &JobManager,
    ) -> Result<(String, String), FunctionError> {
        let all = self.view.candidates(&p.key);
        let usable: Vec<Candidate> = all
            .iter()
            .filter(|c| self.usable(c, &p.key, &p.opts, p.local_only))
            .cloned()
            .collect();
        if p.mode == Mode::Targeted {
            self.check_target(&all, &p.key, &p.opts, p.local_only)?;
        } else if p.mode == Mode::Hash && p.opts.hash_key.is_empty() {
            return Err(FunctionError::InvalidArgument(
                "routing_mode hash needs options.hash_key".into(),
            ));
        }
        let candidates: Vec<Candidate> = if p.mode == Mode::Targeted {
            usable
                .into_iter()
                .filter(|c| c.agent.agent_id == p.opts.target_agent)
                .collect()
        } else {
            usable
        };
        if candidates.is_empty() {
            return Err(self.unavailable(&p.key, &all, &p.opts));
        }
        let mut excluded: Vec<String> = Vec::new();
        loop {
            let Some(agent) = self.pick(&p.key, &candidates, p.mode, &p.opts, &excluded) else {
                return Err(FunctionError::Unavailable(format!(
                    "no agent could be sent the job for {} (all disconnected)",
                    p.key.function_id
                )));
            };
            if !p.local_only
                && !self.link.is_connected(&agent)
                && let (Some(fwd), Some(owner)) = (&self.forwarder, self.remote_owner(&agent))
            {
                let mut opts = p.opts.clone();
                opts.routing_mode = "targeted".into();
                opts.target_agent = agent.clone();
                opts.idempotency_key.clear(); // claimed here
                opts.timeout = timeout.as_secs().max(1) as i32;
                let forwarded = pb_job_request(req, opts);
                return match fwd.invoke_job(&owner, who, forwarded).await {
                    Ok(r) => {
                        tracing::info!(job_id = %r.job_id, agent_id = %agent, owner = %owner, "job started via its owner");
                        Ok((r.job_id, agent))
                    }
                    Err(s) => Err(remote_error(&owner, &agent, s)),
                };
            }
            let job_id = uuid::Uuid::now_v7().to_string();
            let record = JobRecord {
                server_id: fwd_server_id(&self.forwarder),
                job_id: job_id.clone(),
                function_id: p.key.function_id.clone(),
                game_id: p.key.game_id.clone(),
                env: p.key.env.clone(),
                agent_id: agent.clone(),
                caller: who.uri(),
                status: JobStatus::Pending,
                created_at: now_ms(),
                timeout_ms: timeout.as_millis() as i64,
                ..Default::default()
            };
            let invoke = Invoke {
                request_id: job_id.clone(),
                function_id: p.key.function_id.clone(),
                payload: req.payload.clone(),
                timeout_ms: timeout.as_millis().max(1) as i64,
                game_id: p.key.game_id.clone(),
                env: p.key.env.clone(),
                caller: who.uri(),
                idempotency_key: p.opts.idempotency_key.clone(),
                job_id: job_id.clone(),
            };
            match jobs.create(record, invoke).await {
                Ok(()) => {
                    tracing::info!(job_id = %job_id, agent_id = %agent, function = %p.key.function_id, "job started");
                    return Ok((job_id, agent));
                }
                Err(CreateError::Store(e)) => return Err(e),
                Err(CreateError::Link(e @ LinkError::FrameTooLarge { .. })) => {
                    return Err(FunctionError::ResourceExhausted(e.to_string()));
                }
                Err(CreateError::Link(e)) => {
                    tracing::debug!(agent_id = %agent, error = %e, "job not sent; trying another agent");
                    excluded.push(agent);
                }
            }
        }
    }

    fn timeout(
        &self,
        requested_secs: i32,
        d: Option<&DescriptorRecord>,
        caller: Option<Duration>,
    ) -> Result<Duration, FunctionError> {
        if requested_secs < 0 {
            return Err(FunctionError::InvalidArgument(format!(
                "options.timeout is {requested_secs}; give seconds > 0, or 0 for the default"
            )));
        }
        let chosen = if requested_secs > 0 {
            Duration::from_secs(requested_secs as u64)
        } else if let Some(t) = d.map(|d| d.timeout_secs).filter(|t| *t > 0) {
            Duration::from_secs(t as u64)
        } else {
            self.cfg.default_timeout
        };
        let chosen = chosen.min(self.cfg.max_timeout);
        Ok(caller.map_or(chosen, |c| c.min(chosen)))
    }

    /// True when the candidate can take the call now.
    fn usable(
        &self,
        c: &Candidate,
        key: &FnKey,
        opts: &croupier_proto::function::v1::InvokeOptions,
        local_only: bool,
    ) -> bool {
        c.state == NodeState::Normal
            && c.agent.matches(&opts.selector)
            && (opts.version.is_empty()
                || c.agent
                    .provides(&key.function_id)
                    .is_some_and(|f| f.version == opts.version))
            && (self.link.is_connected(&c.agent.agent_id)
                || (!local_only && self.remote_owner(&c.agent.agent_id).is_some()))
    }

    /// The other replica holding the agent's tunnel, when there is one and it is alive.
    fn remote_owner(&self, agent_id: &str) -> Option<String> {
        self.forwarder.as_ref()?.remote_owner(agent_id)
    }

    /// For targeted routing: the target must provide the function and be usable.
    fn check_target(
        &self,
        all: &[Candidate],
        key: &FnKey,
        opts: &croupier_proto::function::v1::InvokeOptions,
        local_only: bool,
    ) -> Result<(), FunctionError> {
        if opts.target_agent.is_empty() {
            return Err(FunctionError::InvalidArgument(
                "routing_mode targeted needs options.target_agent".into(),
            ));
        }
        let Some(c) = all.iter().find(|c| c.agent.agent_id == opts.target_agent) else {
            return Err(FunctionError::NotFound(format!(
                "agent {:?} does not provide {} in game {:?} env {:?}",
                opts.target_agent, key.function_id, key.game_id, key.env
            )));
        };
        if !self.usable(c, key, opts, local_only) {
            return Err(FunctionError::Unavailable(format!(
                "agent {:?} cannot take {} now: {}",
                opts.target_agent,
                key.function_id,
                self.why_not(c, opts, &key.function_id)
            )));
        }
        Ok(())
    }

    async fn route(
        &self,
        call: &Call<'_>,
        mode: Mode,
        opts: &croupier_proto::function::v1::InvokeOptions,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let all = self.view.candidates(&call.key);
        match mode {
            Mode::Broadcast => {
                let targets: Vec<&Candidate> = all
                    .iter()
                    .filter(|c| self.usable(c, &call.key, opts, call.local_only))
                    .collect();
                if targets.is_empty() {
                    return Err(self.unavailable(&call.key, &all, opts));
                }
                Ok(self.broadcast(call, &targets).await)
            }
            Mode::Targeted => {
                self.check_target(&all, &call.key, opts, call.local_only)?;
                let target: Vec<Candidate> = all
                    .into_iter()
                    .filter(|c| c.agent.agent_id == opts.target_agent)
                    .collect();
                self.single(call, &target, mode, opts).await
            }
            _ => {
                if mode == Mode::Hash && opts.hash_key.is_empty() {
                    return Err(FunctionError::InvalidArgument(
                        "routing_mode hash needs options.hash_key".into(),
                    ));
                }
                let usable: Vec<Candidate> = all
                    .iter()
                    .filter(|c| self.usable(c, &call.key, opts, call.local_only))
                    .cloned()
                    .collect();
                if usable.is_empty() {
                    return Err(self.unavailable(&call.key, &all, opts));
                }
                self.single(call, &usable, mode, opts).await
            }
        }
    }

    /// Picks one of `candidates` (minus `excluded`) by `mode`.
    fn pick(
        &self,
        key: &FnKey,
        candidates: &[Candidate],
        mode: Mode,
        opts: &croupier_proto::function::v1::InvokeOptions,
        excluded: &[String],
    ) -> Option<String> {
        let slots: Vec<Slot<'_>> = candidates
            .iter()
            .filter(|c| !excluded.contains(&c.agent.agent_id))
            .map(|c| Slot {
                agent_id: &c.agent.agent_id,
                load: self.link.load(&c.agent.agent_id),
            })
            .collect();
        let i = match mode {
            Mode::RoundRobin => self.rotation.round_robin(&key.function_id, &slots),
            Mode::Hash => rendezvous(&opts.hash_key, &slots),
            _ => self.rotation.least_loaded(&slots),
        }?;
        Some(slots[i].agent_id.to_string())
    }

    /// Runs the call on one agent picked by `mode`, moving to another agent only when the first
    /// was never reached, or was lost and the call is safe to repeat.
    async fn single(
        &self,
        call: &Call<'_>,
        candidates: &[Candidate],
        mode: Mode,
        opts: &croupier_proto::function::v1::InvokeOptions,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let mut excluded: Vec<String> = Vec::new();
        let mut lost: Option<String> = None;
        loop {
            let Some(agent) = self.pick(&call.key, candidates, mode, opts, &excluded) else {
                return Err(FunctionError::Unavailable(match lost {
                    Some(a) => format!(
                        "agent {a} was lost before it answered {} and no other agent could take \
                         the retry",
                        call.key.function_id
                    ),
                    None => format!(
                        "no agent could be reached for {} (all disconnected)",
                        call.key.function_id
                    ),
                }));
            };
            let agent = agent.as_str();
            match self.send(call, agent).await {
                Ok(r) => return Ok(response(r, agent)),
                Err(Sent::DeadlinePassed) => return Err(self.deadline(call, agent)),
                Err(Sent::Remote(owner, s)) => return Err(remote_error(&owner, agent, s)),
                Err(Sent::Link(LinkError::NotConnected(_)))
                | Err(Sent::Link(LinkError::Overloaded(_))) => {
                    excluded.push(agent.to_string());
                }
                Err(Sent::Link(e @ LinkError::FrameTooLarge { .. })) => {
                    return Err(FunctionError::ResourceExhausted(e.to_string()));
                }
                Err(Sent::Link(LinkError::Lost(_)))
                    if call.retry_safe && mode != Mode::Targeted =>
                {
                    tracing::warn!(
                        agent_id = agent,
                        "agent lost mid-call; retrying on another agent"
                    );
                    excluded.push(agent.to_string());
                    lost = Some(agent.to_string());
                }
                Err(Sent::Link(LinkError::Lost(_))) => {
                    return Err(FunctionError::Unavailable(format!(
                        "agent {agent} was lost before it answered {}; the call may or may not \
                         have run, so it was not retried{}",
                        call.key.function_id,
                        if call.retry_safe {
                            String::new()
                        } else {
                            " (the function is not idempotent and the call has no idempotency key)"
                                .into()
                        }
                    )));
                }
            }
            if Instant::now() >= call.deadline {
                return Err(self.deadline(call, agent));
            }
        }
    }

    async fn broadcast(&self, call: &Call<'_>, targets: &[&Candidate]) -> InvokeFunctionResponse {
        let runs = targets.iter().map(|c| async move {
            let agent = c.agent.agent_id.as_str();
            match self.send(call, agent).await {
                Ok(r) => AgentResult {
                    agent_id: agent.to_string(),
                    success: r.success,
                    result: r.result,
                    error: r.error,
                    error_code: r.error_code,
                },
                Err(Sent::Remote(owner, s)) => AgentResult {
                    agent_id: agent.to_string(),
                    success: false,
                    result: None,
                    error: remote_error(&owner, agent, s.clone()).to_string(),
                    error_code: format!("{:?}", s.code()).to_uppercase(),
                },
                Err(Sent::DeadlinePassed) => AgentResult {
                    agent_id: agent.to_string(),
                    success: false,
                    result: None,
                    error: self.deadline(call, agent).to_string(),
                    error_code: "DEADLINE_EXCEEDED".into(),
                },
                Err(Sent::Link(e)) => AgentResult {
                    agent_id: agent.to_string(),
                    success: false,
                    result: None,
                    error: e.to_string(),
                    error_code: "UNAVAILABLE".into(),
                },
            }
        });
        let mut results: Vec<AgentResult> = futures::future::join_all(runs).await;
        fit_results(&mut results, self.cfg.max_message_bytes);
        let failed = results.iter().filter(|r| !r.success).count();
        InvokeFunctionResponse {
            success: failed == 0,
            result: None,
            error: if failed == 0 {
                String::new()
            } else {
                format!("{failed} of {} agents failed", results.len())
            },
            error_code: if failed == 0 {
                String::new()
            } else {
                "PARTIAL_FAILURE".into()
            },
            agent_id: String::new(),
            results,
            request_id: String::new(),
        }
    }

    /// Sends the call to one agent within the remaining deadline. When the deadline passes the
    /// invocation future is dropped, which cancels the call on the agent.
    async fn send(&self, call: &Call<'_>, agent: &str) -> Result<InvokeResult, Sent> {
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        if !call.local_only
            && !self.link.is_connected(agent)
            && let (Some(fwd), Some(owner)) = (&self.forwarder, self.remote_owner(agent))
        {
            let mut opts = call.req.options.clone().unwrap_or_default();
            opts.routing_mode = "targeted".into();
            opts.target_agent = agent.to_string();
            // The key was claimed here; the owner must not claim it again.
            opts.idempotency_key.clear();
            opts.timeout = remaining.as_secs_f64().ceil().max(1.0) as i32;
            let req = InvokeFunctionRequest {
                game_id: call.key.game_id.clone(),
                env: call.key.env.clone(),
                function_id: call.key.function_id.clone(),
                payload: call.req.payload.clone(),
                options: Some(opts),
            };
            return match fwd.invoke(&owner, call.who, req, remaining).await {
                Ok(r) => Ok(InvokeResult {
                    request_id: r.request_id,
                    success: r.success,
                    result: r.result,
                    error: r.error,
                    error_code: r.error_code,
                }),
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => Err(Sent::DeadlinePassed),
                Err(s) => Err(Sent::Remote(owner, s)),
            };
        }
        let invoke = Invoke {
            // Random v4 id from the thread-local generator: no system call per call.
            request_id: uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string(),
            function_id: call.key.function_id.clone(),
            payload: call.req.payload.clone(),
            // Rounded up, so that the agent's deadline is never before this server's.
            timeout_ms: remaining.as_micros().div_ceil(1000).max(1) as i64,
            game_id: call.key.game_id.clone(),
            env: call.key.env.clone(),
            caller: call.who.uri(),
            idempotency_key: call
                .req
                .options
                .as_ref()
                .map(|o| o.idempotency_key.clone())
                .unwrap_or_default(),
            job_id: String::new(),
        };
        let request_id = invoke.request_id.clone();
        let outcome = if call.keyed {
            // Spawned, so that an agent still running the call past the deadline can be heard.
            let link = self.link.clone();
            let owned = agent.to_string();
            let mut answer = AbortOnDrop(tokio::spawn(
                async move { link.invoke(&owned, invoke).await },
            ));
            match tokio::time::timeout(remaining, &mut answer.0).await {
                Ok(joined) => Ok(joined.unwrap_or_else(|_| Err(LinkError::Lost(agent.into())))),
                Err(elapsed) => {
                    self.link.send_frame(agent, cancel_frame(&request_id));
                    *call.late.lock().unwrap_or_else(|e| e.into_inner()) = Some(LateAnswer {
                        agent: agent.to_string(),
                        answer,
                    });
                    Err(elapsed)
                }
            }
        } else {
            tokio::time::timeout(remaining, self.link.invoke(agent, invoke)).await
        };
        match outcome {
            // The agent gave up at the deadline it was sent, which is never before ours; on a
            // busy machine its answer can be read before our own timer is: the same outcome.
            Ok(Ok(r))
                if !r.success
                    && r.error_code == "DEADLINE_EXCEEDED"
                    && Instant::now() >= call.deadline =>
            {
                Err(Sent::DeadlinePassed)
            }
            Ok(Ok(mut r)) => {
                r.request_id = request_id;
                Ok(r)
            }
            Ok(Err(e)) => Err(Sent::Link(e)),
            Err(_) => Err(Sent::DeadlinePassed),
        }
    }

    fn deadline(&self, call: &Call<'_>, agent: &str) -> FunctionError {
        FunctionError::DeadlineExceeded(format!(
            "agent {agent} did not answer {} within {:?}; the call was cancelled on the agent",
            call.key.function_id, call.timeout
        ))
    }

    fn why_not(
        &self,
        c: &Candidate,
        opts: &croupier_proto::function::v1::InvokeOptions,
        function_id: &str,
    ) -> String {
        let node = self.view.node(&c.agent.agent_id);
        match c.state {
            NodeState::Maintenance => {
                return format!("in maintenance ({:?} by {})", node.reason, node.actor);
            }
            NodeState::Disabled => {
                return format!("disabled ({:?} by {})", node.reason, node.actor);
            }
            NodeState::Normal => {}
        }
        if !c.agent.matches(&opts.selector) {
            return "labels do not match the selector".into();
        }
        if !opts.version.is_empty() {
            let v = c
                .agent
                .provides(function_id)
                .map(|f| f.version.as_str())
                .unwrap_or("");
            if v != opts.version {
                return format!("provides version {v:?}, not {:?}", opts.version);
            }
        }
        "not connected (tunnel down)".into()
    }

    fn unavailable(
        &self,
        key: &FnKey,
        all: &[Candidate],
        opts: &croupier_proto::function::v1::InvokeOptions,
    ) -> FunctionError {
        let f = &key.function_id;
        if all.is_empty() {
            return FunctionError::Unavailable(format!(
                "no agent provides {f} in game {:?} env {:?} right now (the function is \
                 registered, but its agents are offline)",
                key.game_id, key.env
            ));
        }
        let reasons: Vec<String> = all
            .iter()
            .take(5)
            .map(|c| format!("{}: {}", c.agent.agent_id, self.why_not(c, opts, f)))
            .collect();
        let more = all.len().saturating_sub(5);
        FunctionError::Unavailable(format!(
            "no agent can take {f} now ({}{})",
            reasons.join("; "),
            if more > 0 {
                format!("; {more} more")
            } else {
                String::new()
            }
        ))
    }

    /// Registers (or overrides) a descriptor. Admins may register anything (their descriptor
    /// wins over what agents declare); an agent may register functions in its own game and env
    /// unless an admin's descriptor exists or another live agent declared it differently.
    pub async fn register_function(
        &self,
        who: &Identity,
        game_id: &str,
        env: &str,
        d: &FunctionDescriptor,
    ) -> Result<i64, FunctionError> {
        check_id("game_id", game_id).map_err(FunctionError::InvalidArgument)?;
        check_id("env", env).map_err(FunctionError::InvalidArgument)?;
        check_id("descriptor.id", &d.id).map_err(FunctionError::InvalidArgument)?;
        croupier_control::plane::check_descriptor(
            d,
            self.cfg.max_descriptor_bytes,
            &self.cfg.schema_limits,
        )
        .map_err(FunctionError::InvalidArgument)?;
        let key = FnKey::new(game_id, env, &d.id);
        let current = self.view.descriptor(&key);
        let (source, declared_by) = match who.role {
            Role::Admin => (DescriptorSource::Admin, String::new()),
            Role::Agent => {
                let registered_here = self
                    .view
                    .agent(&who.name)
                    .is_some_and(|a| a.game_id == game_id && a.env == env);
                if !registered_here {
                    return Err(FunctionError::PermissionDenied(format!(
                        "identity {who} may only register functions in the game and env it is \
                         registered in"
                    )));
                }
                if let Some(c) = &current {
                    if c.source == DescriptorSource::Admin {
                        return Err(FunctionError::PermissionDenied(format!(
                            "identity {who} may not override {}: an admin registered its \
                             descriptor",
                            d.id
                        )));
                    }
                    let owner = &c.declared_by;
                    if !owner.is_empty()
                        && owner != &who.name
                        && self
                            .view
                            .candidates(&key)
                            .iter()
                            .any(|p| &p.agent.agent_id == owner)
                    {
                        return Err(FunctionError::FailedPrecondition(format!(
                            "function {} is declared by live agent {owner}; only it, or an \
                             admin, may change its descriptor",
                            d.id
                        )));
                    }
                }
                (DescriptorSource::Agent, who.name.clone())
            }
            _ => {
                return Err(FunctionError::PermissionDenied(format!(
                    "identity {who} may not register functions: an admin or agent certificate is \
                     required"
                )));
            }
        };
        let mut record = DescriptorRecord::from_proto(game_id, env, d, source);
        record.declared_by = declared_by;
        let value = serde_json::to_vec(&record)
            .map_err(|e| FunctionError::Internal(format!("encoding descriptor: {e}")))?;
        let rev = self
            .store
            .put(&keys::function(game_id, env, &d.id), value, None)
            .await
            .map_err(FunctionError::store("storing the descriptor"))?;
        self.view.wait_for(rev, Duration::from_secs(5)).await;
        self.audit.record(AuditRecord {
            at: now_ms(),
            who: who.uri(),
            action: "register_function",
            target: format!("{game_id}/{env}/{}", d.id),
            outcome: "ok".into(),
            details: serde_json::Value::Null,
        });
        Ok(rev)
    }

    /// Deletes a function's descriptor (admins only). Agents that still provide the function
    /// keep serving it; the next one to register declares its descriptor again.
    pub async fn delete_function(
        &self,
        who: &Identity,
        game_id: &str,
        env: &str,
        function_id: &str,
    ) -> Result<bool, FunctionError> {
        if who.role != Role::Admin {
            return Err(FunctionError::PermissionDenied(format!(
                "identity {who} may not delete function descriptors: an admin certificate is \
                 required"
            )));
        }
        check_id("game_id", game_id).map_err(FunctionError::InvalidArgument)?;
        check_id("env", env).map_err(FunctionError::InvalidArgument)?;
        check_id("function_id", function_id).map_err(FunctionError::InvalidArgument)?;
        let rev = self
            .store
            .delete(&keys::function(game_id, env, function_id))
            .await
            .map_err(FunctionError::store("deleting the descriptor"))?;
        if let Some(rev) = rev {
            self.view.wait_for(rev, Duration::from_secs(5)).await;
        }
        self.audit.record(AuditRecord {
            at: now_ms(),
            who: who.uri(),
            action: "delete_function",
            target: format!("{game_id}/{env}/{function_id}"),
            outcome: if rev.is_some() { "ok" } else { "not found" }.into(),
            details: serde_json::Value::Null,
        });
        Ok(rev.is_some())
    }
}

/// Why a send did not produce a result.
enum Sent {
    /// The owning replica answered with an error.
    Remote(String, tonic::Status),
    /// The agent could not be reached or was lost.
    Link(LinkError),
    /// The deadline passed first.
    DeadlinePassed,
}

fn pb_job_request(
    req: &InvokeFunctionRequest,
    opts: croupier_proto::function::v1::InvokeOptions,
) -> InvokeJobRequest {
    InvokeJobRequest {
        game_id: req.game_id.clone(),
        env: req.env.clone(),
        function_id: req.function_id.clone(),
        payload: req.payload.clone(),
        options: Some(opts),
    }
}

fn fwd_server_id(f: &Option<Arc<Forwarder>>) -> String {
    f.as_ref()
        .map(|f| f.server_id().to_string())
        .unwrap_or_default()
}

/// An error the owning replica answered, naming the hop.
fn remote_error(owner: &str, agent: &str, s: tonic::Status) -> FunctionError {
    let message = format!(
        "via server {owner} (owner of agent {agent}): {}",
        s.message()
    );
    FunctionError::from(tonic::Status::new(s.code(), message))
}

/// Keeps a broadcast's answer within the message limit: while the results together are too
/// large, the largest one is replaced by an error that says why (each alone fits: agents' results
/// are checked when they arrive).
fn fit_results(results: &mut [AgentResult], max_message_bytes: usize) {
    use prost::Message as _;
    let limit = croupier_proto::limits::max_payload_bytes(max_message_bytes);
    let mut total: usize = results.iter().map(|r| r.encoded_len() + 8).sum();
    while total > limit {
        let Some(largest) = results
            .iter_mut()
            .filter(|r| r.result.is_some())
            .max_by_key(|r| r.encoded_len())
        else {
            return;
        };
        let before = largest.encoded_len();
        largest.result = None;
        largest.success = false;
        largest.error = format!(
            "the result ({before} bytes) was dropped: all agents' results together pass the \
             message limit of {max_message_bytes} bytes; call the agent alone (routing_mode \
             targeted) to get it"
        );
        largest.error_code = "RESULT_TOO_LARGE".into();
        total = total - before + largest.encoded_len();
    }
}

fn cancel_frame(request_id: &str) -> croupier_proto::control::v1::ServerFrame {
    use croupier_proto::control::v1::{Cancel, ServerFrame, server_frame};
    ServerFrame {
        frame: Some(server_frame::Frame::Cancel(Cancel {
            request_id: request_id.to_string(),
            reason: "the call's deadline passed".into(),
        })),
    }
}

fn response(r: InvokeResult, agent: &str) -> InvokeFunctionResponse {
    InvokeFunctionResponse {
        success: r.success,
        result: r.result,
        error: r.error,
        error_code: r.error_code,
        agent_id: agent.to_string(),
        results: Vec::new(),
        request_id: r.request_id,
    }
}

fn authorize(who: &Identity, d: &DescriptorRecord) -> Result<(), FunctionError> {
    let role_ok =
        d.allowed_roles.is_empty() || d.allowed_roles.iter().any(|r| r == who.role.as_str());
    let id_ok =
        d.allowed_identities.is_empty() || d.allowed_identities.iter().any(|i| *i == who.uri());
    if role_ok && id_ok {
        return Ok(());
    }
    Err(FunctionError::PermissionDenied(format!(
        "identity {who} may not invoke {} (allowed roles: {:?}, allowed identities: {:?})",
        d.id, d.allowed_roles, d.allowed_identities
    )))
}

/// Parses a `grpc-timeout` header value ("100m", "5S", "1H"…).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10q"), None);
    }

    #[test]
    fn authorizes_by_role_and_identity() {
        let d = DescriptorRecord {
            id: "player.ban".into(),
            allowed_roles: vec!["admin".into()],
            ..Default::default()
        };
        let admin = Identity {
            role: Role::Admin,
            name: "ops".into(),
        };
        let client = Identity {
            role: Role::Client,
            name: "c1".into(),
        };
        assert!(authorize(&admin, &d).is_ok());
        let err = authorize(&client, &d).unwrap_err().to_string();
        assert!(
            err.contains("spiffe://croupier/client/c1") && err.contains("player.ban"),
            "{err}"
        );
    }
}
