//! `FunctionService`: unwraps requests, takes the caller's identity and deadline, calls the
//! [`Invoker`].

use std::pin::Pin;
use std::sync::Arc;

use croupier_proto::function::v1::{self as pb, function_service_server::FunctionService};
use croupier_registry::identity::caller;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::invoke::{Invoker, parse_grpc_timeout};

/// Message for the job rpcs until jobs are served.
const JOBS_NOT_SERVED: &str = "jobs (InvokeJob, StreamJobEvents, CancelJob, GetJob, ListJobs) are not served by this \
     server version; use InvokeFunction";

/// The `FunctionService` implementation.
pub struct FunctionServer {
    invoker: Arc<Invoker>,
}

impl FunctionServer {
    /// Serves `invoker`.
    pub fn new(invoker: Arc<Invoker>) -> Self {
        FunctionServer { invoker }
    }
}

type JobEventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FunctionService for FunctionServer {
    async fn invoke_function(
        &self,
        request: Request<pb::InvokeFunctionRequest>,
    ) -> Result<Response<pb::InvokeFunctionResponse>, Status> {
        let who = caller(&request)?;
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let resp = self
            .invoker
            .invoke(&who, request.into_inner(), deadline)
            .await?;
        Ok(Response::new(resp))
    }

    async fn invoke_job(
        &self,
        _request: Request<pb::InvokeJobRequest>,
    ) -> Result<Response<pb::InvokeJobResponse>, Status> {
        Err(Status::unimplemented(JOBS_NOT_SERVED))
    }

    type StreamJobEventsStream = JobEventStream;

    async fn stream_job_events(
        &self,
        _request: Request<pb::StreamJobEventsRequest>,
    ) -> Result<Response<Self::StreamJobEventsStream>, Status> {
        Err(Status::unimplemented(JOBS_NOT_SERVED))
    }

    async fn cancel_job(
        &self,
        _request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        Err(Status::unimplemented(JOBS_NOT_SERVED))
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

    async fn get_job(
        &self,
        _request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        Err(Status::unimplemented(JOBS_NOT_SERVED))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented(JOBS_NOT_SERVED))
    }
}
