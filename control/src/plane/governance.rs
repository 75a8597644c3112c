//! `GetPolicy`, `PutPolicy`, `TestPolicy` and `ListAudit`: the admin policy in the store, and
//! this server's audit records.

use super::*;
use crate::audit::chain::{self, Filter};
use croupier_registry::policy::{Action, Policy, Request as PolicyRequest};
use croupier_registry::store::{CasOutcome, Expect};
use sha2::Digest;
use std::path::Path;

/// Most audit records one `ListAudit` answers.
const MAX_AUDIT_LIST: usize = 5000;

impl ControlPlane {
    /// Handles `GetPolicy` (admins).
    pub async fn get_policy(&self, who: &Identity) -> Result<pb::GetPolicyResponse, ControlError> {
        require_admin(who, "read the policy")?;
        let kv = self
            .store
            .get(keys::POLICY)
            .await
            .map_err(ControlError::store("reading the policy"))?;
        Ok(match kv {
            Some(kv) => pb::GetPolicyResponse {
                policy_json: String::from_utf8_lossy(&kv.value).into_owned(),
                stored: true,
                revision: kv.mod_revision,
            },
            None => pb::GetPolicyResponse {
                policy_json: Policy::builtin().to_json(),
                stored: false,
                revision: 0,
            },
        })
    }

    /// Handles `PutPolicy` (admins): validates, stores (only over `expect_revision` when set),
    /// audits.
    pub async fn put_policy(
        &self,
        who: &Identity,
        req: pb::PutPolicyRequest,
    ) -> Result<pb::PutPolicyResponse, ControlError> {
        let outcome = self.put_policy_inner(who, &req).await;
        let digest = hex::encode(sha2::Sha256::digest(req.policy_json.as_bytes()));
        self.audit
            .record(
                AuditRecord::new(who.uri(), "put_policy", keys::POLICY)
                    .outcome(match &outcome {
                        Ok(_) => "ok".to_string(),
                        Err(e) => e.reason().to_string(),
                    })
                    .details(serde_json::json!({
                        "sha256": digest,
                        "revision": outcome.as_ref().map(|r| r.revision).unwrap_or(0),
                        "error": outcome.as_ref().err().map(ToString::to_string),
                    })),
            )
            .await;
        outcome
    }

    async fn put_policy_inner(
        &self,
        who: &Identity,
        req: &pb::PutPolicyRequest,
    ) -> Result<pb::PutPolicyResponse, ControlError> {
        require_admin(who, "change the policy")?;
        self.audit.admit().map_err(ControlError::AuditUnavailable)?;
        if req.policy_json.len() > 1024 * 1024 {
            return Err(ControlError::LimitReached(format!(
                "the policy is {} bytes; at most 1 MiB is allowed",
                req.policy_json.len()
            )));
        }
        let policy =
            Policy::from_json(req.policy_json.as_bytes()).map_err(ControlError::BadRequest)?;
        // Stored normalised, so GetPolicy shows every default the server applies.
        let value = policy.to_json().into_bytes();
        let revision = if req.expect_revision > 0 {
            match self
                .store
                .compare_and_put(
                    keys::POLICY,
                    Expect::ModRevision(req.expect_revision),
                    value,
                    None,
                )
                .await
                .map_err(ControlError::store("storing the policy"))?
            {
                CasOutcome::Done(rev) => rev,
                CasOutcome::Conflict(current) => {
                    return Err(ControlError::Conflict(format!(
                        "the policy changed since revision {} (it is now at {}); get it again, \
                         apply your change and put it with the new revision",
                        req.expect_revision,
                        current.map_or(0, |kv| kv.mod_revision)
                    )));
                }
            }
        } else {
            self.store
                .put(keys::POLICY, value, None)
                .await
                .map_err(ControlError::store("storing the policy"))?
        };
        // Later calls on this server see the new policy.
        self.view.wait_for(revision, Duration::from_secs(5)).await;
        tracing::info!(%who, revision, "policy stored");
        Ok(pb::PutPolicyResponse { revision })
    }

    /// Handles `TestPolicy`: anyone may test their own identity; admins any identity.
    pub fn test_policy(
        &self,
        who: &Identity,
        req: pb::TestPolicyRequest,
    ) -> Result<pb::TestPolicyResponse, ControlError> {
        let subject = if req.identity.is_empty() {
            who.clone()
        } else {
            parse_subject(&req.identity)?
        };
        if (subject.role != who.role || subject.name != who.name) && who.role != Role::Admin {
            return Err(ControlError::NotAllowed(format!(
                "identity {who} may only test its own decisions; testing another identity's \
                 needs an admin certificate"
            )));
        }
        let action = Action::parse(&req.action).map_err(ControlError::BadRequest)?;
        let policy = if req.policy_json.is_empty() {
            self.view.policy()
        } else {
            require_admin(who, "test a draft policy")?;
            Arc::new(
                Policy::from_json(req.policy_json.as_bytes()).map_err(ControlError::BadRequest)?,
            )
        };
        let d = policy.decide(
            &subject,
            PolicyRequest {
                action,
                function: &req.function_id,
                game: &req.game_id,
                env: &req.env,
            },
        );
        Ok(pb::TestPolicyResponse {
            allowed: d.allowed,
            rule: d.rule,
            explanation: d.explanation,
            approvers: d
                .approval
                .as_ref()
                .map(|a| a.approvers.clone())
                .unwrap_or_default(),
            approval_count: d.approval.as_ref().map_or(0, |a| a.count as i32),
            roles: policy
                .roles_of(&subject)
                .into_iter()
                .map(String::from)
                .collect(),
        })
    }

    /// Handles `ListAudit` (admins): this server's records, newest first.
    pub async fn list_audit(
        &self,
        who: &Identity,
        req: pb::ListAuditRequest,
    ) -> Result<pb::ListAuditResponse, ControlError> {
        require_admin(who, "read the audit log")?;
        let Some(path) = self.audit.path().map(Path::to_path_buf) else {
            return Err(ControlError::BadRequest(format!(
                "server {} keeps no audit log (audit.enabled = false)",
                self.cfg.server_id
            )));
        };
        let limit = match req.limit {
            n if n <= 0 => 100,
            n => (n as usize).min(MAX_AUDIT_LIST),
        };
        let filter = Filter {
            who: req.who,
            target: req.target,
            action: req.action,
            since: req.since,
            outcome: req.outcome,
        };
        let (records, truncated) =
            tokio::task::spawn_blocking(move || chain::list(&path, &filter, limit))
                .await
                .map_err(|e| ControlError::Internal(format!("reading the audit log: {e}")))?;
        let head = self.audit_head().await?.unwrap_or_default();
        Ok(pb::ListAuditResponse {
            records,
            server_id: self.cfg.server_id.clone(),
            truncated,
            checkpoint_seq: head.seq,
            checkpoint_hash: head.hash,
        })
    }

    /// The head of this server's audit chain as checkpointed in the store.
    pub async fn audit_head(&self) -> Result<Option<chain::Head>, ControlError> {
        let kv = self
            .store
            .get(&keys::audit_head(&self.cfg.server_id))
            .await
            .map_err(ControlError::store("reading the audit checkpoint"))?;
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }
}

pub(super) fn require_admin(who: &Identity, what: &str) -> Result<(), ControlError> {
    if who.role == Role::Admin {
        Ok(())
    } else {
        Err(ControlError::NotAllowed(format!(
            "identity {who} may not {what}: an admin certificate is required"
        )))
    }
}

/// `spiffe://croupier/<role>/<name>` or `<role>/<name>`.
fn parse_subject(text: &str) -> Result<Identity, ControlError> {
    Identity::parse_uri(text)
        .or_else(|| {
            let (role, name) = text.split_once('/')?;
            Identity::new(role.parse().ok()?, name)
        })
        .ok_or_else(|| {
            ControlError::BadRequest(format!(
                "identity {text:?} is not spiffe://croupier/<role>/<name> or <role>/<name>"
            ))
        })
}
