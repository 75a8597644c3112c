//! `SetNodeState`, and the agent's side of it: the change goes down the tunnel, the agent
//! applies it and answers `StateApplied`, and the server records when (`applied_at`, and a
//! `node.state.applied` event). A change the agent has not acknowledged (it was offline, or
//! did not answer) is sent again on its next tunnel. Disabling a node also fails the
//! synchronous calls in flight on it (`NODE_DISABLED`) and cancels them on the agent.

use std::sync::Arc;

use super::*;
use crate::audit::AuditRecord;
use croupier_proto::control::v1::StateApplied;
use tokio::sync::oneshot;

/// How long `SetNodeState` waits for the agent's acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(5);

impl ControlPlane {
    /// Handles `SetNodeState`: the policy's `node_state` action decides (admins by default),
    /// inside the caller's scopes.
    pub async fn set_node_state(
        &self,
        who: &Identity,
        req: pb::SetNodeStateRequest,
    ) -> Result<pb::SetNodeStateResponse, ControlError> {
        check_id("agent_id", &req.agent_id).map_err(ControlError::BadRequest)?;
        let agent = self.view.agent(&req.agent_id);
        let (game, env) = agent
            .as_deref()
            .map_or(("", ""), |a| (a.game_id.as_str(), a.env.as_str()));
        let decision = self.view.policy().decide(
            who,
            croupier_registry::policy::Request {
                action: croupier_registry::policy::Action::NodeState,
                function: "",
                game,
                env,
            },
        );
        if !decision.allowed {
            return Err(ControlError::NotAllowed(format!(
                "identity {who} may not set node states: {}",
                decision.explanation
            )));
        }
        if agent.is_some()
            && let Some(refusal) = who.out_of_scope("set node states", game, env)
        {
            return Err(ControlError::NotAllowed(refusal));
        }
        self.audit.admit().map_err(ControlError::AuditUnavailable)?;
        if req.reason.chars().count() > self.cfg.max_text_chars {
            return Err(ControlError::BadRequest(format!(
                "reason is {} characters; at most {} are allowed",
                req.reason.chars().count(),
                self.cfg.max_text_chars
            )));
        }
        let state = common::NodeState::try_from(req.state).map_err(|_| {
            ControlError::BadRequest(format!(
                "state {} is not a node state (0 normal, 1 maintenance, 2 disabled)",
                req.state
            ))
        })?;
        let record = NodeRecord {
            agent_id: req.agent_id.clone(),
            state: state.into(),
            reason: req.reason.clone(),
            actor: who.uri(),
            changed_at: now_ms(),
            applied_at: 0,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| ControlError::Internal(format!("encoding the node record: {e}")))?;
        let rev = self
            .store
            .put(&keys::node(&req.agent_id), value, None)
            .await
            .map_err(ControlError::store("storing the node state"))?;
        self.view.wait_for(rev, Duration::from_secs(5)).await;
        let session = self.session(&req.agent_id);
        let acked = session
            .as_ref()
            .and_then(|s| self.send_state(s, &record).map(|rx| (s.clone(), rx)));
        tracing::info!(agent_id = %req.agent_id, state = record.state.as_str(), actor = %record.actor, reason = %excerpt(&record.reason, 200), "node state changed");
        self.node_event(
            &req.agent_id,
            "node.state",
            "",
            record.state.as_str(),
            format!(
                "node state set to {} by {}: {}",
                record.state.as_str(),
                record.actor,
                record.reason
            ),
            &[
                ("actor", record.actor.clone()),
                ("reason", record.reason.clone()),
            ],
        );
        if record.state == NodeState::Disabled
            && let Some(sink) = self.jobs.get()
        {
            sink.node_disabled(
                &req.agent_id,
                &format!("node disabled by {}: {}", record.actor, record.reason),
            );
        }
        let mut rec = AuditRecord::new(who.uri(), "set_node_state", req.agent_id.clone())
            .details(serde_json::json!({"state": record.state.as_str(), "reason": record.reason}));
        if !game.is_empty() {
            rec = rec.scope(game, env);
        }
        self.audit.record(rec).await;
        if record.state == NodeState::Disabled
            && let Some(s) = &session
        {
            s.fail_pending_disabled(&format!(
                "node {} was disabled by {}: {}",
                req.agent_id, record.actor, record.reason
            ));
        }
        let mut pb_record = common::NodeStateRecord::from(&record);
        let elsewhere = agent
            .as_deref()
            .map(|a| a.owner.clone())
            .filter(|o| !o.is_empty() && *o != self.cfg.server_id);
        let delivery = match (acked, elsewhere) {
            // Another replica holds the agent's tunnel: it relays the change (within a second)
            // and records when the agent applied it, which the view shows here.
            (None, Some(owner)) => match self
                .applied_elsewhere(&req.agent_id, record.changed_at)
                .await
            {
                Some(applied_at) => {
                    pb_record.applied_at = applied_at;
                    "applied".to_string()
                }
                None => format!(
                    "pending: server {owner} holds the agent's tunnel and relays the change; \
                     the agent did not acknowledge within {} s",
                    ACK_WAIT.as_secs()
                ),
            },
            (None, None) => {
                "pending: agent offline; it applies the state when it reconnects".to_string()
            }
            (Some((_, rx)), _) => match tokio::time::timeout(ACK_WAIT, rx).await {
                Ok(Ok(applied_at)) => {
                    pb_record.applied_at = applied_at;
                    "applied".to_string()
                }
                _ => format!(
                    "pending: the agent did not acknowledge within {} s; it applies the state \
                     on its next tunnel",
                    ACK_WAIT.as_secs()
                ),
            },
        };
        Ok(pb::SetNodeStateResponse {
            success: true,
            record: Some(pb_record),
            delivery,
        })
    }

    /// Waits (up to [`ACK_WAIT`]) until the view shows that the agent applied the change made
    /// at `changed_at` (the replica holding its tunnel records it); when.
    async fn applied_elsewhere(&self, agent_id: &str, changed_at: i64) -> Option<i64> {
        let deadline = Instant::now() + ACK_WAIT;
        loop {
            let node = self.view.node(agent_id);
            if node.changed_at == changed_at && node.applied_at > 0 {
                return Some(node.applied_at);
            }
            if node.changed_at != changed_at || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `record` down `session`'s tunnel; the receiver gets the time the agent applied
    /// it. None when the tunnel is down.
    pub(super) fn send_state(
        &self,
        session: &Session,
        record: &NodeRecord,
    ) -> Option<oneshot::Receiver<i64>> {
        let t = session.tunnel()?;
        session
            .state_sent
            .store(record.changed_at, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        *session.state_waiter.lock() = Some((record.changed_at, tx));
        let sent = t.tx.try_send(out(ServerFrame {
            frame: Some(server_frame::Frame::StateChange(pb::StateChange {
                record: Some(common::NodeStateRecord::from(record)),
            })),
        }));
        sent.is_ok().then_some(rx)
    }

    /// On a new tunnel: sends the node's state again when the agent has not acknowledged it.
    pub(super) fn resend_state(&self, session: &Session) {
        let node = self.view.node(&session.agent_id);
        if node.changed_at > 0 && node.applied_at < node.changed_at {
            let _ = self.send_state(session, &node);
        }
    }

    /// Sends every agent held here the node state changes it has not been sent: those made
    /// through another replica reach the agent this way (the registry view sees them).
    pub(super) fn relay_states(&self) {
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        for s in sessions {
            let node = self.view.node(&s.agent_id);
            let sent = s.state_sent.load(std::sync::atomic::Ordering::Relaxed);
            if node.changed_at > sent && node.applied_at < node.changed_at {
                let _ = self.send_state(&s, &node);
            }
        }
    }

    /// The agent of `session` applied the state change made at `a.changed_at`: records when
    /// (if that change is still the node's state), tells a waiting `SetNodeState`.
    pub(super) async fn state_applied(&self, session: &Session, a: StateApplied) {
        let key = keys::node(&session.agent_id);
        let Ok(Some(kv)) = self.store.get(&key).await else {
            return;
        };
        let Ok(mut record) = serde_json::from_slice::<NodeRecord>(&kv.value) else {
            return;
        };
        if record.changed_at != a.changed_at {
            return; // a newer change is on its way to the agent
        }
        let applied_at = now_ms();
        if record.applied_at == 0 {
            record.applied_at = applied_at;
            let Ok(value) = serde_json::to_vec(&record) else {
                return;
            };
            let expect = croupier_registry::store::Expect::ModRevision(kv.mod_revision);
            if let Err(e) = self.store.compare_and_put(&key, expect, value, None).await {
                tracing::warn!(agent_id = %session.agent_id, error = %e, "recording the applied node state failed");
            }
            self.node_event(
                &session.agent_id,
                "node.state.applied",
                "",
                record.state.as_str(),
                format!("the agent applied node state {}", record.state.as_str()),
                &[("changed_at", record.changed_at.to_string())],
            );
        }
        let waiter = session.state_waiter.lock().take();
        match waiter {
            Some((changed_at, tx)) if changed_at == a.changed_at => {
                let _ = tx.send(applied_at);
            }
            other => *session.state_waiter.lock() = other,
        }
    }
}
