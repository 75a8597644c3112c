//! `ControlService`: unwraps requests, takes the caller's identity, calls [`ControlPlane`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use croupier_proto::control::v1::{self as pb, control_service_server::ControlService};
use croupier_registry::identity::{IdentityResolver, caller};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::plane::ControlPlane;

/// The `ControlService` implementation.
pub struct ControlServer {
    plane: Arc<ControlPlane>,
    resolver: Option<IdentityResolver>,
}

impl ControlServer {
    /// Serves `plane`.
    pub fn new(plane: Arc<ControlPlane>) -> Self {
        ControlServer {
            plane,
            resolver: None,
        }
    }

    /// Ends a tunnel when the revocation list `resolver` loads revokes its certificate.
    pub fn with_resolver(mut self, resolver: IdentityResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::ServerFrame, Status>> + Send>>;

/// A tunnel's frames until its certificate is revoked: then one `UNAUTHENTICATED` and the end.
struct UntilRevoked<S> {
    frames: S,
    /// None once it has fired.
    revoked: Option<Pin<Box<dyn Future<Output = Status> + Send>>>,
}

impl<S> Stream for UntilRevoked<S>
where
    S: Stream<Item = Result<pb::ServerFrame, Status>> + Unpin,
{
    type Item = Result<pb::ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(revoked) = self.revoked.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(status) = revoked.as_mut().poll(cx) {
            self.revoked = None;
            return Poll::Ready(Some(Err(status)));
        }
        Pin::new(&mut self.frames).poll_next(cx)
    }
}

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
            self.plane.heartbeat(&who, request.into_inner())?,
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
        let leaf = request
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.as_ref().to_vec()));
        let stream = self.plane.connect(&who, request.into_inner()).await?;
        let (Some(resolver), Some(leaf)) = (self.resolver.clone(), leaf) else {
            return Ok(Response::new(Box::pin(stream)));
        };
        // The tunnel ends, with the reason, when its certificate is revoked; the agent's
        // reconnection is then refused at once.
        let revoked = Box::pin(async move {
            let e = resolver.revoked_later(&leaf).await;
            tracing::warn!(agent = %who, error = %e, "closing a tunnel: its certificate was revoked");
            Status::unauthenticated(format!("client certificate rejected: {e}"))
        });
        Ok(Response::new(Box::pin(UntilRevoked {
            frames: stream,
            revoked: Some(revoked),
        })))
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
    async fn put_user(
        &self,
        request: Request<pb::PutUserRequest>,
    ) -> Result<Response<pb::PutUserResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.put_user(&who, request.into_inner()).await?,
        ))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.delete_user(&who, request.into_inner()).await?,
        ))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(self.plane.list_users(&who).await?))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.create_token(&who, request.into_inner()).await?,
        ))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.revoke_token(&who, request.into_inner()).await?,
        ))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(self.plane.list_tokens(&who).await?))
    }

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

    async fn put_assignment(
        &self,
        request: Request<pb::PutAssignmentRequest>,
    ) -> Result<Response<pb::PutAssignmentResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane
                .put_assignment(&who, request.into_inner())
                .await?,
        ))
    }

    async fn delete_assignment(
        &self,
        request: Request<pb::DeleteAssignmentRequest>,
    ) -> Result<Response<pb::DeleteAssignmentResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane
                .delete_assignment(&who, request.into_inner())
                .await?,
        ))
    }

    async fn list_assignments(
        &self,
        request: Request<pb::ListAssignmentsRequest>,
    ) -> Result<Response<pb::ListAssignmentsResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.list_assignments(&who, request.into_inner())?,
        ))
    }

    async fn get_node_resources(
        &self,
        request: Request<pb::GetNodeResourcesRequest>,
    ) -> Result<Response<pb::GetNodeResourcesResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane
                .node_resources(&who, request.into_inner())
                .await?,
        ))
    }

    async fn query_node_metrics(
        &self,
        request: Request<pb::QueryNodeMetricsRequest>,
    ) -> Result<Response<pb::QueryNodeMetricsResponse>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.node_metrics(&who, request.into_inner())?,
        ))
    }

    type StreamNodeEventsStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::StreamNodeEventsResponse, Status>>;

    async fn stream_node_events(
        &self,
        request: Request<pb::StreamNodeEventsRequest>,
    ) -> Result<Response<Self::StreamNodeEventsStream>, Status> {
        let who = caller(&request)?;
        Ok(Response::new(
            self.plane.stream_node_events(&who, request.into_inner())?,
        ))
    }
}
