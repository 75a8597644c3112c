//! Function assignments through the control plane: admins put, delete and list them; agents
//! read theirs with `GetAssignments` and are told over the tunnel when they change.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::audit::AuditRecord;
use croupier_registry::assign::AssignmentRecord;
use croupier_registry::policy::{Action, Request};

impl ControlPlane {
    /// Handles `GetAssignments`: for each function the agent provides, whether it is enabled
    /// there (the node is normal and no assignment disables it) and its config (the
    /// descriptor's timeout and kind, then the assignments').
    pub fn assignments(
        &self,
        who: &Identity,
        req: pb::GetAssignmentsRequest,
    ) -> Result<pb::GetAssignmentsResponse, ControlError> {
        if who.role != Role::Admin {
            Self::require_agent(who, &req.agent_id, "read assignments")?;
        }
        let agent = self.view.agent(&req.agent_id).ok_or_else(|| {
            ControlError::NotRegistered(format!("agent {:?} is not registered", req.agent_id))
        })?;
        let node = self.view.node(&req.agent_id);
        let game = if req.game_id.is_empty() {
            &agent.game_id
        } else {
            &req.game_id
        };
        let env = if req.env.is_empty() {
            &agent.env
        } else {
            &req.env
        };
        let assignments = agent
            .functions
            .iter()
            .map(|f| {
                let d = self
                    .view
                    .descriptor(&croupier_registry::view::FnKey::new(game, env, &f.id));
                let mut config: HashMap<String, String> = HashMap::new();
                if let Some(d) = &d {
                    if d.timeout_secs > 0 {
                        config.insert("timeout".into(), d.timeout_secs.to_string());
                    }
                    config.insert(
                        "kind".into(),
                        if d.kind.is_empty() {
                            "command".into()
                        } else {
                            d.kind.clone()
                        },
                    );
                }
                let effective = self.view.assignment(&req.agent_id, &f.id);
                let assigned = effective.as_ref().is_none_or(|e| e.enabled);
                let mut ids = Vec::new();
                if let Some(e) = effective {
                    config.extend(e.config);
                    ids = e.ids;
                }
                pb::FunctionAssignment {
                    function_id: f.id.clone(),
                    enabled: node.state == NodeState::Normal && assigned,
                    config,
                    assignment_ids: ids,
                }
            })
            .collect();
        Ok(pb::GetAssignmentsResponse {
            assignments,
            version: self.view.assignments_version(&req.agent_id),
        })
    }

    /// Whether the policy lets `who` put or delete an assignment of `function` in game/env.
    fn may_assign(
        &self,
        who: &Identity,
        function: &str,
        game: &str,
        env: &str,
    ) -> Result<(), ControlError> {
        let decision = self.view.policy().decide(
            who,
            Request {
                action: Action::Assign,
                function,
                game,
                env,
            },
        );
        if !decision.allowed {
            return Err(ControlError::NotAllowed(format!(
                "identity {who} may not change assignments: {}",
                decision.explanation
            )));
        }
        if let Some(refusal) = who.out_of_scope("change assignments", game, env) {
            return Err(ControlError::NotAllowed(refusal));
        }
        Ok(())
    }

    /// Handles `PutAssignment`.
    pub async fn put_assignment(
        &self,
        who: &Identity,
        req: pb::PutAssignmentRequest,
    ) -> Result<pb::PutAssignmentResponse, ControlError> {
        let a = req.assignment.ok_or_else(|| {
            ControlError::BadRequest("assignment is missing from the request".into())
        })?;
        let mut rec = AssignmentRecord::from_request(a).map_err(ControlError::BadRequest)?;
        self.may_assign(who, &rec.function_id, &rec.game_id, &rec.env)?;
        // Replacing one in another scope needs that scope too.
        if let Some(old) = self.view.assignment_by_id(&rec.id) {
            self.may_assign(who, &old.function_id, &old.game_id, &old.env)?;
        }
        self.audit.admit().map_err(ControlError::AuditUnavailable)?;
        rec.actor = who.uri();
        rec.updated_at = now_ms();
        let value = serde_json::to_vec(&rec)
            .map_err(|e| ControlError::Internal(format!("encoding the assignment: {e}")))?;
        let rev = self
            .store
            .put(&keys::assignment(&rec.id), value, None)
            .await
            .map_err(ControlError::store("storing the assignment"))?;
        self.view.wait_for(rev, Duration::from_secs(5)).await;
        rec.revision = rev;
        tracing::info!(id = %rec.id, function = %rec.function_id, enabled = rec.enabled, actor = %rec.actor, "assignment stored");
        self.audit
            .record(
                AuditRecord::new(who.uri(), "put_assignment", rec.id.clone())
                    .scope(&rec.game_id, &rec.env)
                    .details(serde_json::json!({
                        "function": rec.function_id, "agent": rec.agent_id,
                        "selector": rec.selector, "enabled": rec.enabled,
                        "config_keys": rec.config.keys().collect::<Vec<_>>(),
                        "reason": rec.reason,
                    })),
            )
            .await;
        self.relay_assignments();
        Ok(pb::PutAssignmentResponse {
            assignment: Some(rec.to_proto()),
        })
    }

    /// Handles `DeleteAssignment`.
    pub async fn delete_assignment(
        &self,
        who: &Identity,
        req: pb::DeleteAssignmentRequest,
    ) -> Result<pb::DeleteAssignmentResponse, ControlError> {
        check_id("id", &req.id).map_err(ControlError::BadRequest)?;
        let Some(old) = self.view.assignment_by_id(&req.id) else {
            return Ok(pb::DeleteAssignmentResponse { deleted: false });
        };
        self.may_assign(who, &old.function_id, &old.game_id, &old.env)?;
        self.audit.admit().map_err(ControlError::AuditUnavailable)?;
        let deleted = self
            .store
            .delete(&keys::assignment(&req.id))
            .await
            .map_err(ControlError::store("deleting the assignment"))?;
        if let Some(rev) = deleted {
            self.view.wait_for(rev, Duration::from_secs(5)).await;
        }
        self.audit
            .record(
                AuditRecord::new(who.uri(), "delete_assignment", req.id.clone())
                    .scope(&old.game_id, &old.env),
            )
            .await;
        self.relay_assignments();
        Ok(pb::DeleteAssignmentResponse {
            deleted: deleted.is_some(),
        })
    }

    /// Handles `ListAssignments`: clients and admins, inside their scopes.
    pub fn list_assignments(
        &self,
        who: &Identity,
        req: pb::ListAssignmentsRequest,
    ) -> Result<pb::ListAssignmentsResponse, ControlError> {
        if who.role == Role::Agent {
            return Err(ControlError::NotAllowed(format!(
                "identity {who} may not list assignments: agents read theirs with GetAssignments"
            )));
        }
        let agent = if req.agent_id.is_empty() {
            None
        } else {
            Some(self.view.agent(&req.agent_id).ok_or_else(|| {
                ControlError::NotRegistered(format!("agent {:?} is not registered", req.agent_id))
            })?)
        };
        let keep = |a: &AssignmentRecord| {
            (req.game_id.is_empty() || a.game_id == req.game_id)
                && (req.env.is_empty() || a.env == req.env)
                && (req.function_id.is_empty() || a.function_id == req.function_id)
                && agent.as_deref().is_none_or(|ag| a.applies_to(ag))
                && who.scopes.allows(&a.game_id, &a.env)
        };
        Ok(pb::ListAssignmentsResponse {
            assignments: self
                .view
                .assignments()
                .iter()
                .filter(|a| keep(a))
                .map(|a| a.to_proto())
                .collect(),
        })
    }

    /// Tells every agent held here whose assignments' version changed (since it was last
    /// told) to fetch them again. Does nothing while no assignment changed.
    pub(super) fn relay_assignments(&self) {
        let rev = self.view.assignments_revision() as u64;
        if self.assignments_told.swap(rev, Ordering::Relaxed) == rev {
            return;
        }
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        for s in sessions {
            let version = self.view.assignments_version(&s.agent_id);
            if s.assignments_sent.swap(version, Ordering::Relaxed) == version {
                continue;
            }
            if let Some(t) = s.tunnel() {
                let _ = t.tx.try_send(out(ServerFrame {
                    frame: Some(server_frame::Frame::AssignmentsChanged(
                        pb::AssignmentsChanged { version },
                    )),
                }));
            }
        }
    }
}
