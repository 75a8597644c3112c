//! [`Invoker`]: one invocation from request to response — resolve the function, authorise the
//! caller, validate the payload, apply idempotency, route, enforce the deadline, retry only
//! when it is safe, and answer.
//!
//! Layout:
//! - `route` — candidates, the mode's pick, the send, safe retries.
//! - `job_start` — `InvokeJob`.
//! - `register` — `RegisterFunction` and `DeleteFunction`.
//! - `late` — keyed calls still running past their deadline.

mod job_start;
mod late;
mod register;
mod route;
#[cfg(test)]
mod tests;

use late::*;
use route::*;

use crate::approval::Approved;
use crate::error::FunctionError;
use crate::forward::Forwarder;
use crate::idempotency::{Begin, Idempotency, Ticket, payload_hash};
use crate::jobs::JobManager;
use crate::pipeline::Pipelines;
use crate::router::{Mode, Rotation};
use croupier_control::AgentLink;
use croupier_control::audit::{AuditLog, AuditRecord};
use croupier_proto::control::v1::InvokeResult;
use croupier_proto::function::v1::{InvokeFunctionRequest, InvokeFunctionResponse};
use croupier_proto::json::opt_struct_to_json;
use croupier_proto::limits::check_payload;
use croupier_registry::identity::Identity;
use croupier_registry::ids::check_id;
use croupier_registry::model::DescriptorRecord;
use croupier_registry::policy::{Action, ApprovalRule, Request as PolicyRequest};
use croupier_registry::schema::{PayloadCheckError, SchemaCache, SchemaLimits};
use croupier_registry::store::Store;
use croupier_registry::view::{FnKey, RegistryView};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
    jobs: Arc<JobManager>,
    forwarder: Option<Arc<Forwarder>>,
    pipelines: Arc<Pipelines>,
    stats: crate::stats::FunctionStats,
    /// The handles of [`crate::metrics::INVOCATIONS`] per label set.
    invocation_metrics: croupier_proto::metric_handles::Handles,
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
    /// The policy asks for approval first (with the rule's name).
    approval: Option<(ApprovalRule, String)>,
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
    /// The claim of the call's idempotency key while this server holds it; taken when the call
    /// is forwarded, which hands the key to the owner (see `Invoker::hand_over`).
    claim: Mutex<Option<Ticket>>,
}

impl Invoker {
    /// Builds an invoker over the registry `view`, reaching agents through `link`, running jobs
    /// with `jobs` and starting pipelines from `pipelines`.
    pub fn new(
        cfg: InvokeConfig,
        store: Arc<dyn Store>,
        view: Arc<RegistryView>,
        link: Arc<dyn AgentLink>,
        audit: AuditLog,
        jobs: Arc<JobManager>,
        pipelines: Arc<Pipelines>,
    ) -> Self {
        let idem = Arc::new(Idempotency::new(store.clone(), cfg.idempotency_retention));
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
            jobs,
            forwarder: None,
            pipelines,
            stats: crate::stats::FunctionStats::new(),
            invocation_metrics: Default::default(),
        }
    }

    /// Forwards calls and jobs for agents held by other replicas through `forwarder`.
    pub fn with_forwarder(mut self, forwarder: Arc<Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// The per-function call statistics of this server.
    pub fn stats(&self) -> &crate::stats::FunctionStats {
        &self.stats
    }

    /// The idempotency records (for the periodic sweep).
    pub fn idempotency(&self) -> &Idempotency {
        &self.idem
    }

    /// Invokes a function for `who`. `caller_timeout` is the gRPC deadline the caller sent;
    /// with `forwarded` (another replica sent it), only this server's agents are candidates.
    pub async fn invoke(
        &self,
        who: &Identity,
        req: InvokeFunctionRequest,
        caller_timeout: Option<Duration>,
        forwarded: bool,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        self.invoke_with(who, req, caller_timeout, forwarded, None)
            .await
    }

    /// Runs a call its approvers approved, as its requester `who`.
    pub(crate) async fn invoke_approved(
        &self,
        who: &Identity,
        req: InvokeFunctionRequest,
        approved: &Approved,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        self.invoke_with(who, req, None, false, Some(approved))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(function = %req.function_id, caller = %who))]
    async fn invoke_with(
        &self,
        who: &Identity,
        req: InvokeFunctionRequest,
        caller_timeout: Option<Duration>,
        forwarded: bool,
        approved: Option<&Approved>,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let started = Instant::now();
        let _permit = self.admit(who)?;
        self.audit
            .admit()
            .map_err(FunctionError::AuditUnavailable)?;
        let result = self
            .invoke_inner(who, &req, caller_timeout, started, forwarded, approved)
            .await;
        self.count_invocation(&req, &result, started.elapsed());
        if self.audit.enabled() && !matches!(result, Err(FunctionError::ApprovalRequired { .. })) {
            let sensitive = self.sensitive_fields(&req.game_id, &req.env, &req.function_id);
            let outcome = match &result {
                Ok(r) if r.success => "ok".to_string(),
                Ok(r) => format!("handler error: {}", r.error_code),
                Err(e) => e.code_name().to_string(),
            };
            let mut details = serde_json::json!({
                "agent": result.as_ref().map(|r| r.agent_id.clone()).unwrap_or_default(),
                "payload": self.audit.payload(&opt_struct_to_json(req.payload.as_ref()), &sensitive),
                "millis": started.elapsed().as_millis() as u64,
            });
            if let Ok(r) = &result
                && r.result.is_some()
            {
                details["result"] = self
                    .audit
                    .payload(&opt_struct_to_json(r.result.as_ref()), &sensitive);
            }
            let rec = AuditRecord::new(who.uri(), "invoke", req.function_id.as_str())
                .scope(&req.game_id, &req.env)
                .outcome(outcome);
            self.audit
                .record(with_approval(rec, details, who, approved))
                .await;
        }
        result
    }

    /// Counts a call in [`crate::metrics::INVOCATIONS`] and its duration.
    fn count_invocation(
        &self,
        req: &InvokeFunctionRequest,
        result: &Result<InvokeFunctionResponse, FunctionError>,
        took: Duration,
    ) {
        let outcome = match result {
            Ok(r) if r.success => "ok",
            Ok(_) => "handler_error",
            Err(e) => e.code_name(),
        };
        let known = self.is_known(result.is_ok(), &req.game_id, &req.env, &req.function_id);
        if known {
            let error = match result {
                Ok(r) if r.success => None,
                Ok(r) => Some((r.error_code.clone(), r.error.clone())),
                Err(e) => Some((e.code_name().to_string(), e.to_string())),
            };
            self.stats.record(
                &req.game_id,
                &req.env,
                &req.function_id,
                &crate::stats::Outcome {
                    agent: result.as_ref().map_or("", |r| r.agent_id.as_str()),
                    error: error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
                    took,
                },
            );
        }
        let (game, env, function) =
            crate::metrics::function_labels(known, &req.game_id, &req.env, &req.function_id);
        let route = req
            .options
            .as_ref()
            .map_or("lb", |o| route_label(&o.routing_mode));
        let values = [game, env, function, route, outcome];
        self.invocation_metrics
            .record(&values, took.as_secs_f64(), || {
                let labels = [
                    ("game", game.to_string()),
                    ("env", env.to_string()),
                    ("function", function.to_string()),
                    ("route", route.to_string()),
                    ("outcome", outcome.to_string()),
                ];
                (
                    metrics::counter!(crate::metrics::INVOCATIONS, &labels),
                    metrics::histogram!(crate::metrics::INVOCATION_SECONDS, &labels),
                )
            });
    }

    /// Whether the registry knows a function (an answered call's is known).
    pub(crate) fn is_known(&self, answered: bool, game: &str, env: &str, function: &str) -> bool {
        if answered {
            return true;
        }
        let key = FnKey::new(game, env, function);
        self.view.descriptor(&key).is_some() || !self.view.candidates(&key).is_empty()
    }

    /// The sensitive fields of a function's descriptor (masked in audit records and approvals).
    fn sensitive_fields(&self, game: &str, env: &str, function: &str) -> Vec<String> {
        self.view
            .descriptor(&FnKey::new(game, env, function))
            .map(|d| d.sensitive_fields.clone())
            .unwrap_or_default()
    }

    /// Takes one of the caller's concurrency slots.
    fn admit(&self, who: &Identity) -> Result<OwnedSemaphorePermit, FunctionError> {
        let limit = self.cfg.max_concurrent_per_caller;
        let sem = {
            let mut map = self.per_caller.lock();
            if map.len() > 10_000 {
                map.retain(|_, s| s.available_permits() < limit);
            }
            map.entry(who.uri())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| {
            FunctionError::LimitReached(format!(
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
        action: Action,
    ) -> Result<Prepared, FunctionError> {
        check_id("game_id", &req.game_id).map_err(FunctionError::BadRequest)?;
        check_id("env", &req.env).map_err(FunctionError::BadRequest)?;
        check_id("function_id", &req.function_id).map_err(FunctionError::BadRequest)?;
        if let Some(refusal) = who.out_of_scope("invoke", &req.game_id, &req.env) {
            return Err(FunctionError::NotAllowed(refusal));
        }
        check_payload(req.payload.as_ref(), self.cfg.max_message_bytes).map_err(|error| {
            FunctionError::Payload {
                function: req.function_id.clone(),
                error,
            }
        })?;
        let opts = req.options.clone().unwrap_or_default();
        let mode = Mode::parse(&opts.routing_mode)?;
        let key = FnKey::new(&req.game_id, &req.env, &req.function_id);
        let descriptor = self.view.descriptor(&key);
        if descriptor.is_none() && self.view.candidates(&key).is_empty() {
            return Err(FunctionError::NotRegistered {
                function: req.function_id.clone(),
                game: req.game_id.clone(),
                env: req.env.clone(),
                nearest: self
                    .view
                    .nearest_functions(&req.game_id, &req.env, &req.function_id),
            });
        }
        if let Some(d) = &descriptor {
            authorize(who, d)?;
        }
        // A forwarded request was decided by the replica it came to.
        let approval = if local_only {
            None
        } else {
            let decision = self.view.policy().decide(
                who,
                PolicyRequest {
                    action,
                    function: &req.function_id,
                    game: &req.game_id,
                    env: &req.env,
                },
            );
            if !decision.allowed {
                return Err(FunctionError::NotAllowed(format!(
                    "identity {who} may not {} {}: {}",
                    if action == Action::Job {
                        "start jobs of"
                    } else {
                        "invoke"
                    },
                    req.function_id,
                    decision.explanation
                )));
            }
            // The policy's approval, else the descriptor's.
            decision.approval.map(|a| (a, decision.rule)).or_else(|| {
                let a = descriptor.as_ref()?.approval.clone()?;
                Some((a, format!("the descriptor of {}", req.function_id)))
            })
        };
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
                .map_err(|e| {
                    let function = req.function_id.clone();
                    match e {
                        PayloadCheckError::Mismatch(detail) => {
                            FunctionError::SchemaMismatch { function, detail }
                        }
                        PayloadCheckError::BadSchema(error) => {
                            FunctionError::BadSchema { function, error }
                        }
                        PayloadCheckError::Overran(budget) => {
                            FunctionError::SchemaTooCostly { function, budget }
                        }
                    }
                })?;
        }
        Ok(Prepared {
            key,
            descriptor,
            opts,
            mode,
            payload_json,
            local_only,
            approval,
        })
    }

    async fn invoke_inner(
        &self,
        who: &Identity,
        req: &InvokeFunctionRequest,
        caller_timeout: Option<Duration>,
        started: Instant,
        forwarded: bool,
        approved: Option<&Approved>,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let Prepared {
            key,
            descriptor,
            opts,
            mode,
            payload_json,
            local_only,
            approval,
        } = self
            .prepare(who, req, forwarded, caller_timeout, Action::Invoke)
            .await?;
        if let Some((rule, name)) = approval
            && approved.is_none()
        {
            let sensitive = descriptor
                .as_ref()
                .map(|d| d.sensitive_fields.clone())
                .unwrap_or_default();
            return Err(crate::approval::request(
                self.store.as_ref(),
                &self.audit,
                who,
                crate::approval::Kind::Call,
                req.clone(),
                &sensitive,
                &rule,
                &name,
            )
            .await);
        }
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
            claim: Mutex::new(None),
        };
        let Some(idem_key) = idem_key else {
            return self.route(&call, mode, &opts).await;
        };
        let record = Idempotency::record_key(&req.game_id, &req.env, &req.function_id, idem_key);
        let hash = payload_hash(payload_json.as_deref().unwrap_or(&serde_json::Value::Null));
        let hold = timeout + self.cfg.late_answer_grace;
        match self.idem.begin(record, hash, timeout, hold).await? {
            Begin::Replay(resp) => Ok(resp),
            Begin::Execute(ticket) => {
                *call.claim.lock() = Some(ticket);
                let result = self.route(&call, mode, &opts).await;
                // None: the call was forwarded with its key, and the owner keeps the outcome.
                let held = call.claim.lock().take();
                let Some(ticket) = held else {
                    return result;
                };
                match result {
                    Ok(resp) => {
                        self.idem.finish(ticket, &resp).await;
                        Ok(resp)
                    }
                    Err(e) => {
                        let late = call.late.lock().take();
                        match late {
                            Some(late) => self.await_late_answer(ticket, late),
                            None => self.idem.abandon(ticket).await,
                        }
                        Err(e)
                    }
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
            return Err(FunctionError::BadRequest(format!(
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
        // When the caller's own deadline binds, answer a little before it, so the caller gets
        // this server's DEADLINE_EXCEEDED (naming the agent) rather than racing its own timer.
        Ok(caller.map_or(chosen, |c| {
            c.saturating_sub(CALLER_MARGIN.min(c / 10)).min(chosen)
        }))
    }
}

/// How much before the caller's gRPC deadline a call it bounds is given up (at most a tenth of
/// that deadline).
const CALLER_MARGIN: Duration = Duration::from_millis(100);

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

/// The `route` label of a routing mode: one of the modes, `lb` for none, `invalid` otherwise.
fn route_label(mode: &str) -> &'static str {
    match mode {
        "" | "lb" => "lb",
        "round_robin" | "rr" => "round_robin",
        "hash" => "hash",
        "targeted" => "targeted",
        "broadcast" => "broadcast",
        _ => "invalid",
    }
}

/// Adds `details` to `rec`, and for an approved call, the approval and both identities: the
/// approver who completed it is the actor, the requester the identity it acted for.
fn with_approval(
    rec: AuditRecord,
    mut details: serde_json::Value,
    who: &Identity,
    approved: Option<&Approved>,
) -> AuditRecord {
    match approved {
        None => rec.details(details),
        Some(a) => {
            details["approval"] = serde_json::json!({"id": a.id, "approved_by": a.approvers});
            AuditRecord {
                who: a.by.clone(),
                ..rec
            }
            .on_behalf_of(who.uri())
            .details(details)
        }
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
    Err(FunctionError::NotAllowed(format!(
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
