//! `ControlService`: unwraps requests, takes the caller's identity, calls [`ControlPlane`].

use std::pin::Pin;
use std::sync::Arc;

use croupier_proto::control::v1::{self as pb, control_service_server::ControlService};
use croupier_registry::identity::caller;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::plane::ControlPlane;

/// The `ControlService` implementation.
pub struct ControlServer {
    plane: Arc<ControlPlane>,
}

impl ControlServer {
    /// Serves `plane`.
    pub fn new(plane: Arc<ControlPlane>) -> Self {
        ControlServer { plane }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::ServerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for ControlServer {
    #[tracing::instrument(skip_all)]
    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        let who = caller(&request)?;
        let addr = request.remote_addr();
        let resp = self
            .plane
            .register(&who, request.into_inner(), addr)
            .await?;
        Ok(Response::new(resp))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.heartbeat(&who, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn get_assignments(
        &self,
        request: Request<pb::GetAssignmentsRequest>,
    ) -> Result<Response<pb::GetAssignmentsResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.assignments(&who, request.into_inner())?,
        ))
    }

    type ConnectStream = FrameStream;

    #[tracing::instrument(skip_all)]
    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let who = caller(&request)?;
        let stream = self.plane.connect(&who, request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all)]
    async fn set_node_state(
        &self,
        request: Request<pb::SetNodeStateRequest>,
    ) -> Result<Response<pb::SetNodeStateResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane
                .set_node_state(&who, request.into_inner())
                .await?,
        ))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(self.plane.get_policy(&who).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn put_policy(
        &self,
        request: Request<pb::PutPolicyRequest>,
    ) -> Result<Response<pb::PutPolicyResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.put_policy(&who, request.into_inner()).await?,
        ))
    }

    async fn test_policy(
        &self,
        request: Request<pb::TestPolicyRequest>,
    ) -> Result<Response<pb::TestPolicyResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.test_policy(&who, request.into_inner())?,
        ))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.list_audit(&who, request.into_inner()).await?,
        ))
    }
}
