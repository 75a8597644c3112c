//! `FunctionService`: unwraps requests, takes the caller's identity and deadline, calls the
//! [`Invoker`].

use std::pin::Pin;
use std::sync::Arc;

use croupier_proto::function::v1::{self as pb, function_service_server::FunctionService};
use croupier_proto::trace::{self, KeyValue, SpanKind};
use croupier_registry::identity::caller;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::invoke::{Invoker, parse_grpc_timeout};

use crate::approval::Approvals;
use crate::error::FunctionError;
use crate::forward::origin;
use crate::jobs::JobManager;
use crate::pipeline::Pipelines;

/// The `FunctionService` implementation: each rpc calls one method of the invoker, the job
/// manager or the pipelines.
pub struct FunctionServer {
    invoker: Arc<Invoker>,
    jobs: Arc<JobManager>,
    pipelines: Arc<Pipelines>,
    approvals: Arc<Approvals>,
    server_id: String,
}

impl FunctionServer {
    /// Serves calls through `invoker`, jobs from `jobs`, templates from `pipelines` and
    /// approval requests from `approvals`.
    pub fn new(
        invoker: Arc<Invoker>,
        jobs: Arc<JobManager>,
        pipelines: Arc<Pipelines>,
        approvals: Arc<Approvals>,
    ) -> Self {
        FunctionServer {
            invoker,
            jobs,
            pipelines,
            approvals,
            server_id: String::new(),
        }
    }

    /// Names this server in the answers that are its own view (`GetFunctionStats`).
    pub fn with_server_id(mut self, server_id: &str) -> Self {
        self.server_id = server_id.to_string();
        self
    }
}

/// The server's span for a call: a child of the caller's trace context (a new trace when the
/// caller sent none, or one that does not parse).
fn server_span<T>(
    request: &Request<T>,
    rpc: &'static str,
    game: &str,
    env: &str,
    function: &str,
) -> trace::Span {
    let sent = request
        .metadata()
        .get(trace::HEADER)
        .and_then(|v| v.to_str().ok());
    trace::Span::start(
        rpc,
        SpanKind::Server,
        sent,
        vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.method", rpc),
            KeyValue::new("croupier.game", game.to_string()),
            KeyValue::new("croupier.env", env.to_string()),
            KeyValue::new("croupier.function", function.to_string()),
        ],
    )
}

/// The answer with the call's trace context in its metadata, the error's too, so a caller
/// without one can find its call in logs and audit records; the span records a failure.
fn with_trace<T>(
    mut span: trace::Span,
    result: Result<T, FunctionError>,
) -> Result<Response<T>, Status> {
    let value = span.traceparent().parse().ok();
    match result {
        Ok(v) => {
            let mut resp = Response::new(v);
            if let Some(value) = value {
                resp.metadata_mut().insert(trace::HEADER, value);
            }
            Ok(resp)
        }
        Err(e) => {
            let mut status = Status::from(e);
            span.set_error(format!("{:?}: {}", status.code(), status.message()));
            if let Some(value) = value {
                status.metadata_mut().insert(trace::HEADER, value);
            }
            Err(status)
        }
    }
}

type JobEventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FunctionService for FunctionServer {
    async fn invoke_function(
        &self,
        request: Request<pb::InvokeFunctionRequest>,
    ) -> Result<Response<pb::InvokeFunctionResponse>, Status> {
        let o = origin(&request)?;
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let r = request.get_ref();
        let mut span = server_span(
            &request,
            "InvokeFunction",
            &r.game_id,
            &r.env,
            &r.function_id,
        );
        // Boxed: the call's state machine is large, and the layers above move their futures.
        let call =
            Box::pin(
                self.invoker
                    .invoke(&o.who, request.into_inner(), deadline, o.forwarded),
            );
        let result = trace::scope(span.traceparent().to_string(), call).await;
        if let Ok(r) = &result
            && !r.success
        {
            span.set_error(format!("{}: {}", r.error_code, r.error));
        }
        with_trace(span, result)
    }

    async fn invoke_job(
        &self,
        request: Request<pb::InvokeJobRequest>,
    ) -> Result<Response<pb::InvokeJobResponse>, Status> {
        let o = origin(&request)?;
        let r = request.get_ref();
        let span = server_span(&request, "InvokeJob", &r.game_id, &r.env, &r.function_id);
        let start = Box::pin(
            self.invoker
                .start_job(&o.who, request.into_inner(), o.forwarded),
        );
        let result = trace::scope(span.traceparent().to_string(), start).await;
        with_trace(span, result)
    }

    type StreamJobEventsStream = JobEventStream;

    async fn stream_job_events(
        &self,
        request: Request<pb::StreamJobEventsRequest>,
    ) -> Result<Response<Self::StreamJobEventsStream>, Status> {
        let o = origin(&request)?;
        let r = request.into_inner();
        let stream = self
            .jobs
            .subscribe_step(&o.who, &r.job_id, r.from_seq, &r.step)
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let who = origin(&request)?.who;
        let r = request.into_inner();
        let resp = self.jobs.cancel(&who, &r.job_id, &r.reason).await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn register_function(
        &self,
        request: Request<pb::RegisterFunctionRequest>,
    ) -> Result<Response<pb::RegisterFunctionResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let d = r
            .function_descriptor
            .ok_or_else(|| Status::invalid_argument("function_descriptor is required"))?;
        let revision = self
            .invoker
            .register_function(&who, &r.game_id, &r.env, &d)
            .await?;
        Ok(Response::new(pb::RegisterFunctionResponse {
            success: true,
            function_id: d.id,
            revision,
        }))
    }

    async fn delete_function(
        &self,
        request: Request<pb::DeleteFunctionRequest>,
    ) -> Result<Response<pb::DeleteFunctionResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let deleted = self
            .invoker
            .delete_function(&who, &r.game_id, &r.env, &r.function_id)
            .await?;
        Ok(Response::new(pb::DeleteFunctionResponse { deleted }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let who = origin(&request)?.who;
        let job = self
            .jobs
            .get_job(&who, &request.into_inner().job_id)
            .await?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job) }))
    }

    async fn get_step_log(
        &self,
        request: Request<pb::GetStepLogRequest>,
    ) -> Result<Response<pb::GetStepLogResponse>, Status> {
        let who = origin(&request)?.who;
        let r = request.into_inner();
        Ok(Response::new(
            self.jobs.step_log(&who, &r.job_id, &r.step).await?,
        ))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = origin(&request)?.who;
        let resp = self.jobs.list_jobs(&who, &request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn put_pipeline(
        &self,
        request: Request<pb::PutPipelineRequest>,
    ) -> Result<Response<pb::PutPipelineResponse>, Status> {
        let who = origin(&request)?.who;
        let t = request
            .into_inner()
            .template
            .ok_or_else(|| Status::invalid_argument("template is required"))?;
        let resp = self.pipelines.put(&who, t).await?;
        Ok(Response::new(resp))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::GetPipelineResponse>, Status> {
        caller(&request)?;
        let t = self.pipelines.get(&request.into_inner().id).await?;
        Ok(Response::new(pb::GetPipelineResponse { template: Some(t) }))
    }

    async fn list_pipelines(
        &self,
        request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        caller(&request)?;
        let templates = self.pipelines.list().await?;
        Ok(Response::new(pb::ListPipelinesResponse { templates }))
    }

    async fn delete_pipeline(
        &self,
        request: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::DeletePipelineResponse>, Status> {
        let who = origin(&request)?.who;
        let id = request.into_inner().id;
        let deleted = self.pipelines.delete(&who, &id).await?;
        Ok(Response::new(pb::DeletePipelineResponse { deleted }))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let who = caller(&request)?;
        let approvals = self.approvals.list(&who, &request.into_inner()).await?;
        Ok(Response::new(pb::ListApprovalsResponse { approvals }))
    }

    async fn get_approval(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        let who = caller(&request)?;
        let approval = self.approvals.get(&who, &request.into_inner().id).await?;
        Ok(Response::new(pb::GetApprovalResponse {
            approval: Some(approval),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_function_stats(
        &self,
        request: Request<pb::GetFunctionStatsRequest>,
    ) -> Result<Response<pb::GetFunctionStatsResponse>, Status> {
        let who = caller(&request)?;
        let req = request.into_inner();
        let stats = self.invoker.stats().snapshot(|g, e, f| {
            (req.game_id.is_empty() || req.game_id == g)
                && (req.env.is_empty() || req.env == e)
                && (req.function_id.is_empty() || req.function_id == f)
                && who.out_of_scope("read stats", g, e).is_none()
        });
        Ok(Response::new(pb::GetFunctionStatsResponse {
            server_id: self.server_id.clone(),
            stats,
        }))
    }

    async fn decide_approval(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        let who = caller(&request)?;
        let approval = self.approvals.decide(&who, request.into_inner()).await?;
        Ok(Response::new(pb::DecideApprovalResponse {
            approval: Some(approval),
        }))
    }
}
