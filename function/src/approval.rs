//! Two-person approvals: a call the policy marks for approval is stored as a pending request
//! instead of running; approvers who are not the requester approve or reject it; the approval
//! that completes the count runs it, once, as the requester.
//!
//! Once-only holds by construction: a decision is a compare-and-put on the record's revision, so
//! exactly one decision moves a request from `pending` to `approved`, and only that decision's
//! server runs the call. The stored request also carries an idempotency key (`approval-<id>`,
//! unless the requester gave one), so even a retried run replays rather than runs again.

use std::sync::Arc;

use base64::Engine;
use croupier_control::audit::{AuditLog, AuditRecord, mask};
use croupier_proto::function::v1::{self as pb, InvokeFunctionRequest};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use croupier_registry::identity::{Identity, Role};
use croupier_registry::keys;
use croupier_registry::model::now_ms;
use croupier_registry::policy::{Action, ApprovalRule, Request as PolicyRequest};
use croupier_registry::store::{CasOutcome, Expect, Store};
use croupier_registry::view::RegistryView;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::FunctionError;
use crate::invoke::Invoker;

/// Most approvals `ListApprovals` reads.
const MAX_LIST: usize = 1000;

/// What the approved call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `InvokeFunction`.
    Call,
    /// `InvokeJob`.
    Job,
}

/// One approver's decision, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Approver identity URI.
    pub who: String,
    /// Approved (true) or rejected.
    pub approve: bool,
    /// Why.
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// An approval request (`/croupier-approvals/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Id.
    pub id: String,
    /// pending, approved, rejected, expired.
    pub state: String,
    /// Call or job.
    pub kind: Kind,
    /// Requester identity URI.
    pub requester: String,
    /// Function.
    pub function_id: String,
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// The request to run, protobuf-encoded (base64): payload unmasked, for the run only.
    pub request: String,
    /// The payload as approvers see it (sensitive fields masked).
    pub payload_masked: serde_json::Value,
    /// Approvers' role.
    pub approvers: String,
    /// Approvals needed.
    pub count: u32,
    /// Decisions.
    #[serde(default)]
    pub decisions: Vec<DecisionRecord>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// The policy rule that asked for approval.
    #[serde(default)]
    pub rule: String,
    /// The job started (kind job).
    #[serde(default)]
    pub job_id: String,
    /// The call's result (kind call).
    #[serde(default)]
    pub result: serde_json::Value,
    /// Error code of the run, or REJECTED / EXPIRED.
    #[serde(default)]
    pub error_code: String,
    /// Error message.
    #[serde(default)]
    pub error: String,
}

impl ApprovalRecord {
    fn is_requester(&self, who: &Identity) -> bool {
        Identity::parse_uri(&self.requester)
            .is_some_and(|r| r.role == who.role && r.name == who.name)
    }

    /// The state as a reader sees it now: a pending request past its expiry is expired.
    fn state_now(&self) -> &str {
        if self.state == "pending" && now_ms() > self.expires_at {
            "expired"
        } else {
            &self.state
        }
    }

    /// The proto, with the result only for the requester and admins.
    fn to_proto(&self, reader: &Identity) -> pb::Approval {
        let sees_result = reader.role == Role::Admin || self.is_requester(reader);
        let state = self.state_now().to_string();
        pb::Approval {
            id: self.id.clone(),
            error_code: if state == "expired" && self.error_code.is_empty() {
                "EXPIRED".into()
            } else {
                self.error_code.clone()
            },
            state,
            kind: match self.kind {
                Kind::Call => "call",
                Kind::Job => "job",
            }
            .into(),
            requester: self.requester.clone(),
            function_id: self.function_id.clone(),
            game_id: self.game_id.clone(),
            env: self.env.clone(),
            payload: Some(json_to_struct(&self.payload_masked)),
            approvers: self.approvers.clone(),
            count: self.count as i32,
            decisions: self
                .decisions
                .iter()
                .map(|d| pb::ApprovalDecision {
                    who: d.who.clone(),
                    approve: d.approve,
                    reason: d.reason.clone(),
                    at: d.at,
                })
                .collect(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            job_id: self.job_id.clone(),
            result: (sees_result && !self.result.is_null()).then(|| json_to_struct(&self.result)),
            error: self.error.clone(),
            rule: self.rule.clone(),
        }
    }
}

/// Stores a pending approval for `req` and returns the error that tells the caller about it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn request(
    store: &dyn Store,
    audit: &AuditLog,
    who: &Identity,
    kind: Kind,
    mut req: InvokeFunctionRequest,
    sensitive: &[String],
    rule: &ApprovalRule,
    rule_name: &str,
) -> FunctionError {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let opts = req.options.get_or_insert_with(Default::default);
    if opts.idempotency_key.is_empty() {
        opts.idempotency_key = format!("approval-{id}");
    }
    let now = now_ms();
    let rec = ApprovalRecord {
        id: id.clone(),
        state: "pending".into(),
        kind,
        requester: who.uri(),
        function_id: req.function_id.clone(),
        game_id: req.game_id.clone(),
        env: req.env.clone(),
        request: base64::engine::general_purpose::STANDARD.encode(req.encode_to_vec()),
        payload_masked: mask(&opt_struct_to_json(req.payload.as_ref()), sensitive),
        approvers: rule.approvers.clone(),
        count: rule.count,
        decisions: Vec::new(),
        created_at: now,
        expires_at: now + rule.ttl().as_millis() as i64,
        rule: rule_name.to_string(),
        job_id: String::new(),
        result: serde_json::Value::Null,
        error_code: String::new(),
        error: String::new(),
    };
    let value = match serde_json::to_vec(&rec) {
        Ok(v) => v,
        Err(e) => return FunctionError::Corrupt(format!("encoding an approval: {e}")),
    };
    if let Err(e) = store.put(&keys::approval(&id), value, None).await {
        return FunctionError::store("storing the approval request")(e);
    }
    audit
        .record(
            AuditRecord::new(who.uri(), "request_approval", &rec.function_id)
                .scope(&rec.game_id, &rec.env)
                .details(serde_json::json!({
                    "approval_id": id,
                    "kind": kind,
                    "payload": audit.payload(&opt_struct_to_json(req.payload.as_ref()), sensitive),
                    "approvers": rule.approvers,
                    "count": rule.count,
                })),
        )
        .await;
    tracing::info!(approval_id = %id, function = %rec.function_id, requester = %who, "approval requested");
    FunctionError::ApprovalRequired {
        id,
        function: rec.function_id,
        approvers: rule.approvers.clone(),
        count: rule.count,
        ttl: rule.ttl.clone(),
    }
}

/// Who approved a call that now runs, for its audit record.
#[derive(Clone, Debug)]
pub struct Approved {
    /// The approval id.
    pub id: String,
    /// The approver whose decision completed the count (the actor of the run).
    pub by: String,
    /// Every approver.
    pub approvers: Vec<String>,
}

/// Approval requests: list, show, decide.
pub struct Approvals {
    store: Arc<dyn Store>,
    view: Arc<RegistryView>,
    invoker: Arc<Invoker>,
    audit: AuditLog,
}

impl Approvals {
    /// Approvals stored in `store`, run through `invoker`.
    pub fn new(
        store: Arc<dyn Store>,
        view: Arc<RegistryView>,
        invoker: Arc<Invoker>,
        audit: AuditLog,
    ) -> Self {
        Approvals {
            store,
            view,
            invoker,
            audit,
        }
    }

    /// Whether `who` may see `rec`: its requester, admins and the approvers' role.
    fn may_see(&self, who: &Identity, rec: &ApprovalRecord) -> bool {
        who.role == Role::Admin
            || rec.is_requester(who)
            || (self.view.policy().is_member(who, &rec.approvers)
                && who
                    .out_of_scope("approve", &rec.game_id, &rec.env)
                    .is_none())
    }

    async fn load(&self, id: &str) -> Result<(ApprovalRecord, i64), FunctionError> {
        croupier_registry::ids::check_id("approval id", id).map_err(FunctionError::BadRequest)?;
        let kv = self
            .store
            .get(&keys::approval(id))
            .await
            .map_err(FunctionError::store("reading the approval"))?
            .ok_or_else(|| FunctionError::ApprovalNotFound(id.to_string()))?;
        let rec = serde_json::from_slice(&kv.value)
            .map_err(|e| FunctionError::Corrupt(format!("approval {id}: {e}")))?;
        Ok((rec, kv.mod_revision))
    }

    /// `GetApproval`.
    pub async fn get(&self, who: &Identity, id: &str) -> Result<pb::Approval, FunctionError> {
        let (rec, _) = self.load(id).await?;
        if !self.may_see(who, &rec) {
            // Not found rather than denied: ids of others' requests are not confirmed.
            return Err(FunctionError::ApprovalNotFound(id.to_string()));
        }
        Ok(rec.to_proto(who))
    }

    /// `ListApprovals`: what `who` may see, newest first.
    pub async fn list(
        &self,
        who: &Identity,
        req: &pb::ListApprovalsRequest,
    ) -> Result<Vec<pb::Approval>, FunctionError> {
        let limit = match req.limit {
            n if n <= 0 => 50,
            n => (n as usize).min(MAX_LIST),
        };
        let range = self
            .store
            .range(keys::APPROVALS)
            .await
            .map_err(FunctionError::store("listing approvals"))?;
        let mut out: Vec<pb::Approval> = range
            .kvs
            .iter()
            .rev()
            .filter_map(|kv| serde_json::from_slice::<ApprovalRecord>(&kv.value).ok())
            .filter(|r| req.state.is_empty() || r.state_now() == req.state)
            .filter(|r| self.may_see(who, r))
            .take(limit)
            .map(|r| r.to_proto(who))
            .collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.created_at));
        Ok(out)
    }

    /// `DecideApproval`: records `who`'s decision; the approval that completes the count runs
    /// the call (this call waits for a synchronous one).
    pub async fn decide(
        &self,
        who: &Identity,
        req: pb::DecideApprovalRequest,
    ) -> Result<pb::Approval, FunctionError> {
        // The request as read while deciding: a refused decision is recorded against its
        // function and scope too, when it exists.
        let mut seen = None;
        let outcome = self.decide_inner(who, &req, &mut seen).await;
        let (target, scope, requester) = match seen {
            Some(a) => (a.function_id, Some((a.game_id, a.env)), a.requester),
            None => (req.id.clone(), None, String::new()),
        };
        let mut rec = AuditRecord::new(
            who.uri(),
            if req.approve { "approve" } else { "reject" },
            target,
        )
        .on_behalf_of(requester)
        .outcome(match &outcome {
            Ok(_) => "ok",
            Err(e) => e.code_name(),
        })
        .details(serde_json::json!({"approval_id": req.id, "reason": req.reason}));
        if let Some((g, e)) = scope {
            rec = rec.scope(&g, &e);
        }
        self.audit.record(rec).await;
        outcome
    }

    async fn decide_inner(
        &self,
        who: &Identity,
        req: &pb::DecideApprovalRequest,
        seen: &mut Option<ApprovalRecord>,
    ) -> Result<pb::Approval, FunctionError> {
        self.audit
            .admit()
            .map_err(FunctionError::AuditUnavailable)?;
        if req.reason.trim().is_empty() {
            return Err(FunctionError::BadRequest(
                "reason is required: say why you approve or reject".into(),
            ));
        }
        if req.reason.chars().count() > 1024 {
            return Err(FunctionError::BadRequest(
                "reason is longer than 1024 characters".into(),
            ));
        }
        // Compare-and-put on the record's revision; a concurrent decision makes us read again.
        for _ in 0..8 {
            let (mut rec, revision) = self.load(&req.id).await?;
            *seen = Some(rec.clone());
            if !self.may_see(who, &rec) && !rec.is_requester(who) {
                return Err(FunctionError::ApprovalNotFound(req.id.clone()));
            }
            self.check_decider(who, &rec)?;
            let now = now_ms();
            if rec.state == "pending" && now > rec.expires_at {
                rec.state = "expired".into();
                rec.error_code = "EXPIRED".into();
                rec.error = "no decision before the approval expired".into();
                self.cas(&rec, revision).await?;
                return Err(FunctionError::ApprovalClosed(format!(
                    "approval {} expired; the requester must ask again",
                    rec.id
                )));
            }
            if rec.state != "pending" {
                return Err(FunctionError::ApprovalClosed(format!(
                    "approval {} is {} already; decisions are closed",
                    rec.id, rec.state
                )));
            }
            if rec.decisions.iter().any(|d| same_identity(&d.who, who)) {
                return Err(FunctionError::ApprovalClosed(format!(
                    "identity {who} already decided on approval {}; another approver must",
                    rec.id
                )));
            }
            rec.decisions.push(DecisionRecord {
                who: who.uri(),
                approve: req.approve,
                reason: req.reason.clone(),
                at: now,
            });
            let approvals = rec.decisions.iter().filter(|d| d.approve).count() as u32;
            if !req.approve {
                rec.state = "rejected".into();
                rec.error_code = "REJECTED".into();
                rec.error = format!("rejected by {who}: {}", req.reason);
            } else if approvals >= rec.count {
                rec.state = "approved".into();
            }
            let Some(revision) = self.cas(&rec, revision).await? else {
                continue;
            };
            if rec.state == "approved" {
                self.run(&mut rec, who, revision).await?;
            }
            return Ok(rec.to_proto(who));
        }
        Err(FunctionError::ApprovalClosed(format!(
            "approval {} kept changing while deciding; try again",
            req.id
        )))
    }

    /// The rules on who decides: not the requester (by identity, whatever certificate), a
    /// member of the approvers' role, allowed `approve` by the policy, inside their scopes.
    fn check_decider(&self, who: &Identity, rec: &ApprovalRecord) -> Result<(), FunctionError> {
        if rec.is_requester(who) {
            return Err(FunctionError::NotAllowed(format!(
                "identity {who} requested approval {}; a requester can never decide on their \
                 own request",
                rec.id
            )));
        }
        let policy = self.view.policy();
        if !policy.is_member(who, &rec.approvers) {
            return Err(FunctionError::NotAllowed(format!(
                "identity {who} is not among the approvers ({}) of approval {}",
                rec.approvers, rec.id
            )));
        }
        let d = policy.decide(
            who,
            PolicyRequest {
                action: Action::Approve,
                function: &rec.function_id,
                game: &rec.game_id,
                env: &rec.env,
            },
        );
        if !d.allowed {
            return Err(FunctionError::NotAllowed(d.explanation));
        }
        if let Some(refusal) = who.out_of_scope("approve", &rec.game_id, &rec.env) {
            return Err(FunctionError::NotAllowed(refusal));
        }
        Ok(())
    }

    /// Writes `rec` over `revision`; None when another decision came first.
    async fn cas(&self, rec: &ApprovalRecord, revision: i64) -> Result<Option<i64>, FunctionError> {
        let value = serde_json::to_vec(rec)
            .map_err(|e| FunctionError::Corrupt(format!("encoding an approval: {e}")))?;
        match self
            .store
            .compare_and_put(
                &keys::approval(&rec.id),
                Expect::ModRevision(revision),
                value,
                None,
            )
            .await
            .map_err(FunctionError::store("storing the decision"))?
        {
            CasOutcome::Done(rev) => Ok(Some(rev)),
            CasOutcome::Conflict(_) => Ok(None),
        }
    }

    /// Runs the approved call as its requester and stores the outcome in the record.
    async fn run(
        &self,
        rec: &mut ApprovalRecord,
        by: &Identity,
        revision: i64,
    ) -> Result<(), FunctionError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&rec.request)
            .map_err(|e| FunctionError::Corrupt(format!("approval {}: {e}", rec.id)))?;
        let req = InvokeFunctionRequest::decode(bytes.as_slice())
            .map_err(|e| FunctionError::Corrupt(format!("approval {}: {e}", rec.id)))?;
        let requester = Identity::parse_uri(&rec.requester)
            .ok_or_else(|| FunctionError::Corrupt(format!("approval {}: requester", rec.id)))?;
        let approved = Approved {
            id: rec.id.clone(),
            by: by.uri(),
            approvers: rec
                .decisions
                .iter()
                .filter(|d| d.approve)
                .map(|d| d.who.clone())
                .collect(),
        };
        tracing::info!(approval_id = %rec.id, function = %rec.function_id, "approved call runs");
        match rec.kind {
            Kind::Call => match self
                .invoker
                .invoke_approved(&requester, req, &approved)
                .await
            {
                Ok(resp) => {
                    rec.result = opt_struct_to_json(resp.result.as_ref());
                    rec.error_code = resp.error_code;
                    rec.error = resp.error;
                }
                Err(e) => {
                    rec.error_code = e.code_name().to_string();
                    rec.error = e.to_string();
                }
            },
            Kind::Job => match self
                .invoker
                .start_job_approved(&requester, req, &approved)
                .await
            {
                Ok(resp) => rec.job_id = resp.job_id,
                Err(e) => {
                    rec.error_code = e.code_name().to_string();
                    rec.error = e.to_string();
                }
            },
        }
        // Only this decision moved the record to approved, so nobody else writes it now.
        let _ = self.cas(rec, revision).await?;
        Ok(())
    }
}

fn same_identity(uri: &str, who: &Identity) -> bool {
    Identity::parse_uri(uri).is_some_and(|i| i.role == who.role && i.name == who.name)
}
