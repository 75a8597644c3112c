//! The fleet: node inventories, metrics and events, and function assignments.
//!
//! Inventory reads are safe to repeat and go through the retry policy; an event stream is
//! opened once (resume a broken one with `from_seq` one past the last seq seen).

use super::*;
use croupier_proto::control::v1::{
    Assignment, DeleteAssignmentRequest, ListAssignmentsRequest, PutAssignmentRequest,
};
use croupier_proto::control::v1::{
    GetNodeResourcesRequest, GetNodeResourcesResponse, QueryNodeMetricsRequest,
    QueryNodeMetricsResponse, StreamNodeEventsRequest, StreamNodeEventsResponse,
};
use tonic::Streaming;

impl Client {
    /// A node's inventory: the latest version, or every stored version with `history`; with
    /// `diff` = `(from, to)` also what changed between those two versions.
    pub async fn node_resources(
        &self,
        agent_id: &str,
        history: bool,
        diff: Option<(i64, i64)>,
    ) -> Result<GetNodeResourcesResponse, Status> {
        let (diff_from, diff_to) = diff.unwrap_or_default();
        self.read("GetNodeResources", |left| {
            let req = timed(
                GetNodeResourcesRequest {
                    agent_id: agent_id.into(),
                    history,
                    diff_from,
                    diff_to,
                },
                left,
            );
            let mut svc = self.control.clone();
            async move { svc.get_node_resources(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// A node's metric history from `since_ms` (Unix ms; 0 for the last hour), for the metrics
    /// named in `metrics` (names, or prefixes ending with "."; empty for all).
    pub async fn node_metrics(
        &self,
        agent_id: &str,
        since_ms: i64,
        metrics: &[String],
    ) -> Result<QueryNodeMetricsResponse, Status> {
        self.read("QueryNodeMetrics", |left| {
            let req = timed(
                QueryNodeMetricsRequest {
                    agent_id: agent_id.into(),
                    since: since_ms,
                    metrics: metrics.to_vec(),
                },
                left,
            );
            let mut svc = self.control.clone();
            async move { svc.query_node_metrics(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// Stores an assignment (policy action `assign`; admins by default); returns it as stored.
    pub async fn put_assignment(&self, assignment: Assignment) -> Result<Assignment, Status> {
        self.read("PutAssignment", |left| {
            let req = timed(
                PutAssignmentRequest {
                    assignment: Some(assignment.clone()),
                },
                left,
            );
            let mut svc = self.control.clone();
            async move { svc.put_assignment(req).await.map(Response::into_inner) }
        })
        .await
        .map(|r| r.assignment.unwrap_or_default())
    }

    /// Deletes an assignment; false when there was none with that id.
    pub async fn delete_assignment(&self, id: &str) -> Result<bool, Status> {
        self.read("DeleteAssignment", |left| {
            let req = timed(DeleteAssignmentRequest { id: id.into() }, left);
            let mut svc = self.control.clone();
            async move { svc.delete_assignment(req).await.map(Response::into_inner) }
        })
        .await
        .map(|r| r.deleted)
    }

    /// Assignments matching `req` ("" fields match everything).
    pub async fn list_assignments(
        &self,
        req: ListAssignmentsRequest,
    ) -> Result<Vec<Assignment>, Status> {
        self.read("ListAssignments", |left| {
            let req = timed(req.clone(), left);
            let mut svc = self.control.clone();
            async move { svc.list_assignments(req).await.map(Response::into_inner) }
        })
        .await
        .map(|r| r.assignments)
    }

    /// This server's node events as asked by `req` (replay by seq or time, filter by node and
    /// type, follow), each item an event or a gap.
    pub async fn node_events(
        &self,
        req: StreamNodeEventsRequest,
    ) -> Result<Streaming<StreamNodeEventsResponse>, Status> {
        let mut svc = self.control.clone();
        self.once(async move { svc.stream_node_events(req).await })
            .await
    }
}
