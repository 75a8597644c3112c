//! Governance: the admin policy, two-person approvals and the audit log.
//!
//! Reads and `put_policy` are safe to repeat and go through the retry policy; a decision on an
//! approval is sent once (a repeated decision is refused as already decided, which would hide
//! the first one's answer).

use super::*;
use croupier_proto::control::v1::{
    GetPolicyRequest, GetPolicyResponse, ListAuditRequest, ListAuditResponse, PutPolicyRequest,
    TestPolicyRequest, TestPolicyResponse,
};
use croupier_proto::function::v1::{
    Approval, DecideApprovalRequest, GetApprovalRequest, ListApprovalsRequest,
};

impl Client {
    /// The policy in force: its JSON, whether it is stored (or the built-in one), its revision.
    pub async fn policy(&self) -> Result<GetPolicyResponse, Status> {
        self.read("GetPolicy", |left| {
            let req = timed(GetPolicyRequest {}, left);
            let mut svc = self.control.clone();
            async move { svc.get_policy(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// Stores a policy (admin certificate). With `expect_revision > 0` it is stored only over
    /// that revision (from [`Client::policy`]); returns the new revision.
    pub async fn put_policy(&self, policy_json: &str, expect_revision: i64) -> Result<i64, Status> {
        self.read("PutPolicy", |left| {
            let req = timed(
                PutPolicyRequest {
                    policy_json: policy_json.to_string(),
                    expect_revision,
                },
                left,
            );
            let mut svc = self.control.clone();
            async move { svc.put_policy(req).await.map(Response::into_inner) }
        })
        .await
        .map(|r| r.revision)
    }

    /// What the policy decides for an identity, an action, a function and a scope, and why.
    pub async fn test_policy(&self, req: TestPolicyRequest) -> Result<TestPolicyResponse, Status> {
        self.read("TestPolicy", |left| {
            let req = timed(req.clone(), left);
            let mut svc = self.control.clone();
            async move { svc.test_policy(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// This server's audit records, newest first (admin certificate).
    pub async fn list_audit(&self, req: ListAuditRequest) -> Result<ListAuditResponse, Status> {
        self.read("ListAudit", |left| {
            let req = timed(req.clone(), left);
            let mut svc = self.control.clone();
            async move { svc.list_audit(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// Approval requests the caller may see, newest first; `state` "" lists every state.
    pub async fn approvals(&self, state: &str, limit: i32) -> Result<Vec<Approval>, Status> {
        self.read("ListApprovals", |left| {
            let req = timed(
                ListApprovalsRequest {
                    state: state.to_string(),
                    limit,
                },
                left,
            );
            let mut svc = self.function.clone();
            async move { svc.list_approvals(req).await.map(Response::into_inner) }
        })
        .await
        .map(|r| r.approvals)
    }

    /// One approval request.
    pub async fn approval(&self, id: &str) -> Result<Approval, Status> {
        self.read("GetApproval", |left| {
            let req = timed(GetApprovalRequest { id: id.to_string() }, left);
            let mut svc = self.function.clone();
            async move { svc.get_approval(req).await.map(Response::into_inner) }
        })
        .await?
        .approval
        .ok_or_else(|| Status::internal("GetApproval answered without an approval"))
    }

    /// Approves (`approve` true) or rejects a pending request, with a reason. The approval that
    /// completes the count runs the call; the answer carries its job id or result.
    pub async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, Status> {
        let req = timed(
            DecideApprovalRequest {
                id: id.to_string(),
                approve,
                reason: reason.to_string(),
            },
            self.default_timeout,
        );
        let mut svc = self.function.clone();
        self.once(async move { svc.decide_approval(req).await })
            .await?
            .approval
            .ok_or_else(|| Status::internal("DecideApproval answered without an approval"))
    }
}
