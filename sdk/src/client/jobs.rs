//! Jobs: start one, follow, cancel, wait for it, list them ([`JobHandle`]).

use super::*;
pub use crate::options::CallOptions;
use crate::retry::with_retries;
use croupier_proto::function::v1::{
    CancelJobRequest, CancelJobResponse, EventType, GetJobRequest, InvokeJobRequest, JobEvent,
    JobRecord, ListJobsRequest, ListJobsResponse, StreamJobEventsRequest,
};
use croupier_proto::json::json_to_struct;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Response, Status, Streaming};

/// A started job: follow its events, cancel it, or wait for its end.
#[derive(Clone)]
pub struct JobHandle {
    pub(super) client: Client,
    pub(super) job_id: String,
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle")
            .field("job_id", &self.job_id)
            .finish()
    }
}

impl JobHandle {
    /// The job id.
    pub fn id(&self) -> &str {
        &self.job_id
    }

    /// The job's events from `from_seq` (0: from the start), then live until the terminal one.
    pub async fn events(&self, from_seq: i64) -> Result<Streaming<JobEvent>, Status> {
        self.client.job_events(&self.job_id, from_seq).await
    }

    /// Asks for the job to be cancelled.
    pub async fn cancel(&self, reason: &str) -> Result<CancelJobResponse, Status> {
        self.client.cancel_job(&self.job_id, reason).await
    }

    /// Waits for the job to end (following its events, resuming after a broken stream) and
    /// returns its record.
    pub async fn wait(&self) -> Result<JobRecord, Status> {
        let mut next = 1;
        let mut failures = 0;
        'outer: loop {
            let mut stream = match self.events(next).await {
                Ok(s) => s,
                Err(s) if s.code() == tonic::Code::Unavailable && failures < 5 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                    continue;
                }
                Err(s) => return Err(s),
            };
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        if ev.seq > 0 {
                            next = ev.seq + 1;
                        }
                        if matches!(
                            EventType::try_from(ev.r#type),
                            Ok(EventType::Done | EventType::Error | EventType::Cancelled)
                        ) {
                            break 'outer;
                        }
                    }
                    Ok(None) => break 'outer,
                    Err(s) if s.code() == tonic::Code::Unavailable && failures < 5 => {
                        failures += 1;
                        continue 'outer;
                    }
                    Err(s) => return Err(s),
                }
            }
        }
        self.client.get_job(&self.job_id).await
    }

    /// Waits for the job to end and returns its result as `R`. A failed job is
    /// [`CallError::Handler`] with its error code (e.g. `AGENT_LOST`); a cancelled one has code
    /// `CANCELLED` and the reason.
    pub async fn wait_typed<R: DeserializeOwned>(&self) -> Result<R, CallError> {
        let rec = self.wait().await.map_err(|status| CallError::Rpc {
            function: format!("job {}", self.job_id),
            status,
        })?;
        let handler = |code: &str, message: &str| CallError::Handler {
            function: rec.function_id.clone(),
            agent_id: rec.agent_id.clone(),
            code: code.to_string(),
            message: message.to_string(),
        };
        match rec.status.as_str() {
            "completed" => decode_result(&rec.function_id, rec.result.as_ref()),
            "cancelled" => Err(handler(
                "CANCELLED",
                if rec.cancel_reason.is_empty() {
                    &rec.error
                } else {
                    &rec.cancel_reason
                },
            )),
            other => Err(handler(
                if rec.error_code.is_empty() {
                    "FAILED"
                } else {
                    &rec.error_code
                },
                if rec.error.is_empty() {
                    other
                } else {
                    &rec.error
                },
            )),
        }
    }
}

impl Client {
    /// Starts `function` as a job; `opts.timeout` is the job's deadline. Retried like
    /// [`Client::invoke`] (with a key, a repeat returns the same job).
    pub async fn start_job(
        &self,
        function: &str,
        payload: serde_json::Value,
        opts: &CallOptions,
    ) -> Result<JobHandle, Status> {
        let (game_id, env) = (opts.game_or_default(), opts.env_or_default());
        let payload = json_to_struct(&payload);
        let deadline = Instant::now() + self.default_timeout;
        let safe = self.repeatable(&game_id, &env, function, opts);
        let resp = with_retries(
            &self.retry,
            &self.breaker,
            deadline,
            function,
            safe,
            |left| {
                let req = timed(
                    InvokeJobRequest {
                        game_id: game_id.clone(),
                        env: env.clone(),
                        function_id: function.to_string(),
                        payload: Some(payload.clone()),
                        options: Some(opts.to_proto()),
                    },
                    left,
                );
                let req = traced(req);
                let mut svc = self.function.clone();
                async move { svc.invoke_job(req).await.map(Response::into_inner) }
            },
        )
        .await?;
        Ok(self.job(&resp.job_id))
    }

    /// Starts `function` as a job with a typed payload; see [`JobHandle::wait_typed`] for its
    /// typed result.
    pub async fn start_job_typed<P: Serialize + ?Sized>(
        &self,
        function: &str,
        payload: &P,
        opts: &CallOptions,
    ) -> Result<JobHandle, CallError> {
        let payload = encode_payload(function, payload)?;
        self.start_job(function, payload, opts)
            .await
            .map_err(|status| CallError::Rpc {
                function: function.to_string(),
                status,
            })
    }

    /// A handle on an existing job.
    pub fn job(&self, job_id: &str) -> JobHandle {
        JobHandle {
            client: self.clone(),
            job_id: job_id.to_string(),
        }
    }

    /// A job's events from `from_seq` (0: from the start), then live until the terminal one.
    pub async fn job_events(
        &self,
        job_id: &str,
        from_seq: i64,
    ) -> Result<Streaming<JobEvent>, Status> {
        self.job_events_of_step(job_id, from_seq, "").await
    }

    /// Like [`Client::job_events`], only one pipeline step's events ("" for all): its status
    /// events and log lines; the stream ends when the step does.
    pub async fn job_events_of_step(
        &self,
        job_id: &str,
        from_seq: i64,
        step: &str,
    ) -> Result<Streaming<JobEvent>, Status> {
        let req = StreamJobEventsRequest {
            job_id: job_id.to_string(),
            from_seq,
            step: step.to_string(),
        };
        let mut svc = self.function.clone();
        self.once(async move { svc.stream_job_events(req).await })
            .await
    }

    /// The stored log of a pipeline step that completed or failed.
    pub async fn step_log(
        &self,
        job_id: &str,
        step: &str,
    ) -> Result<croupier_proto::function::v1::GetStepLogResponse, Status> {
        self.read("GetStepLog", |left| {
            let req = timed(
                croupier_proto::function::v1::GetStepLogRequest {
                    job_id: job_id.into(),
                    step: step.into(),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move { svc.get_step_log(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// Asks for a job to be cancelled.
    pub async fn cancel_job(
        &self,
        job_id: &str,
        reason: &str,
    ) -> Result<CancelJobResponse, Status> {
        self.read("CancelJob", |left| {
            let req = timed(
                CancelJobRequest {
                    job_id: job_id.to_string(),
                    reason: reason.to_string(),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move { svc.cancel_job(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// One job's record.
    pub async fn get_job(&self, job_id: &str) -> Result<JobRecord, Status> {
        self.read("GetJob", |left| {
            let req = timed(
                GetJobRequest {
                    job_id: job_id.to_string(),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move { svc.get_job(req).await.map(Response::into_inner) }
        })
        .await?
        .job
        .ok_or_else(|| Status::internal("GetJob answered without a job"))
    }

    /// A page of job records, newest first.
    pub async fn list_jobs(&self, req: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        self.read("ListJobs", |left| {
            let req = timed(req.clone(), left);
            let mut svc = self.function.clone();
            async move { svc.list_jobs(req).await.map(Response::into_inner) }
        })
        .await
    }
}
