//! `InvokeJob`: a job is routed like a call, its record stored and its `Invoke` sent; the same
//! idempotency key returns the same job.

use super::*;
use crate::approval::Approved;
use crate::error::FunctionError;
use crate::forward::Forwarder;
use crate::idempotency::{Begin, Idempotency, payload_hash};
use crate::jobs::{CreateError, JobManager, JobRecord, JobStatus};
use crate::router::Mode;
use croupier_control::LinkError;
use croupier_control::audit::AuditRecord;
use croupier_proto::control::v1::Invoke;
use croupier_proto::function::v1::{
    InvokeFunctionRequest, InvokeFunctionResponse, InvokeJobRequest, InvokeJobResponse,
};
use croupier_proto::json::opt_struct_to_json;
use croupier_registry::identity::Identity;
use croupier_registry::model::now_ms;
use croupier_registry::view::Candidate;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl Invoker {
    /// Starts a function as a job for `who` (`InvokeJob`): routes like `InvokeFunction`, stores
    /// the job and answers with its id at once. The same idempotency key returns the same job.
    /// With `forwarded` (another replica sent it), only this server's agents are candidates.
    pub async fn start_job(
        &self,
        who: &Identity,
        req: InvokeJobRequest,
        forwarded: bool,
    ) -> Result<InvokeJobResponse, FunctionError> {
        let req = InvokeFunctionRequest {
            game_id: req.game_id,
            env: req.env,
            function_id: req.function_id,
            payload: req.payload,
            options: req.options,
        };
        self.start_job_with(who, req, forwarded, None).await
    }

    /// Starts a job its approvers approved, as its requester `who`.
    pub(crate) async fn start_job_approved(
        &self,
        who: &Identity,
        req: InvokeFunctionRequest,
        approved: &Approved,
    ) -> Result<InvokeJobResponse, FunctionError> {
        self.start_job_with(who, req, false, Some(approved)).await
    }

    #[tracing::instrument(skip_all, fields(function = %req.function_id, caller = %who))]
    async fn start_job_with(
        &self,
        who: &Identity,
        mut req: InvokeFunctionRequest,
        forwarded: bool,
        approved: Option<&Approved>,
    ) -> Result<InvokeJobResponse, FunctionError> {
        let jobs = self.jobs.clone();
        let _permit = self.admit(who)?;
        self.audit
            .admit()
            .map_err(FunctionError::AuditUnavailable)?;
        let original = req.clone();
        if req.function_id == crate::pipeline::START && !forwarded {
            // The server fills the template's args; the agent gets the whole template.
            let given = opt_struct_to_json(req.payload.as_ref());
            let prepared = self.pipelines.prepare_start(&given).await?;
            req.payload = Some(croupier_proto::json::json_to_struct(&prepared));
        }
        let p = self
            .prepare(who, &req, forwarded, None, Action::Job)
            .await?;
        if let Some((rule, name)) = &p.approval
            && approved.is_none()
        {
            let sensitive = p
                .descriptor
                .as_ref()
                .map(|d| d.sensitive_fields.clone())
                .unwrap_or_default();
            return Err(crate::approval::request(
                self.store.as_ref(),
                &self.audit,
                who,
                crate::approval::Kind::Job,
                original,
                &sensitive,
                rule,
                name,
            )
            .await);
        }
        if p.mode == Mode::Broadcast {
            return Err(FunctionError::BadRequest(
                "routing_mode broadcast is not supported for jobs: a job runs on one agent; \
                 start one job per agent with routing_mode targeted"
                    .into(),
            ));
        }
        if p.opts.timeout < 0 {
            return Err(FunctionError::BadRequest(format!(
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
            self.dispatch_job(who, &req, &p, timeout, &jobs, None).await
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
                    let claim = Mutex::new(Some(ticket));
                    let outcome = self
                        .dispatch_job(who, &req, &p, timeout, &jobs, Some(&claim))
                        .await;
                    // None: the job was forwarded with its key, and the owner keeps the outcome.
                    let held = claim.lock().take();
                    match (held, outcome) {
                        (None, outcome) => outcome,
                        (Some(ticket), Ok((job_id, agent))) => {
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
                        (Some(ticket), Err(e)) => {
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
        // The function passed `prepare`, so the registry knows it: bounded labels.
        metrics::counter!(
            crate::metrics::JOBS_STARTED,
            "game" => req.game_id.clone(),
            "env" => req.env.clone(),
            "function" => req.function_id.clone(),
            "outcome" => outcome_name.clone()
        )
        .increment(1);
        let rec = AuditRecord::new(who.uri(), "invoke_job", req.function_id.as_str())
            .scope(&req.game_id, &req.env)
            .outcome(outcome_name);
        let details = serde_json::json!({
                "job_id": outcome.as_ref().map(|(j, _)| j.clone()).unwrap_or_default(),
                "agent": outcome.as_ref().map(|(_, a)| a.clone()).unwrap_or_default(),
                "payload": self.audit.payload(
                    &opt_struct_to_json(req.payload.as_ref()),
                    &p.descriptor.as_ref().map(|d| d.sensitive_fields.clone()).unwrap_or_default(),
                ),
                "millis": started.elapsed().as_millis() as u64,
        });
        self.audit
            .record(with_approval(rec, details, who, approved))
            .await;
        let (job_id, _) = outcome?;
        Ok(InvokeJobResponse {
            success: true,
            job_id,
            status: JobStatus::Pending.as_str().into(),
        })
    }

    /// Picks an agent, stores the job and sends it; moves to another agent when the first
    /// could not be sent the job.
    pub(super) async fn dispatch_job(
        &self,
        who: &Identity,
        req: &InvokeFunctionRequest,
        p: &Prepared,
        timeout: Duration,
        jobs: &JobManager,
        claim: Option<&Mutex<Option<crate::idempotency::Ticket>>>,
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
            return Err(FunctionError::BadRequest(
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
                return Err(FunctionError::NoAgent(format!(
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
                let handed = match claim {
                    Some(claim) => self.hand_over(claim).await,
                    None => false,
                };
                if !handed {
                    opts.idempotency_key.clear();
                }
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
                server_id: fwd_server_id(self.forwarder.as_ref()),
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
                // The agent's handler is a child of this server's span.
                traceparent: croupier_proto::trace::current().unwrap_or_default(),
                config: self.assigned_config(&agent, &p.key.function_id),
            };
            match jobs.create(record, invoke).await {
                Ok(()) => {
                    tracing::info!(job_id = %job_id, agent_id = %agent, function = %p.key.function_id, "job started");
                    return Ok((job_id, agent));
                }
                Err(CreateError::Store(e)) => return Err(e),
                Err(CreateError::Link(e @ LinkError::FrameTooLarge { .. })) => {
                    return Err(FunctionError::LimitReached(e.to_string()));
                }
                Err(CreateError::Link(e)) => {
                    tracing::debug!(agent_id = %agent, error = %e, "job not sent; trying another agent");
                    excluded.push(agent);
                }
            }
        }
    }
}

pub(super) fn pb_job_request(
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

pub(super) fn fwd_server_id(f: Option<&Arc<Forwarder>>) -> String {
    f.map(|f| f.server_id().to_string()).unwrap_or_default()
}
