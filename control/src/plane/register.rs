//! `RegisterAgent`: the checks of a registration, the descriptors an agent may write (an
//! admin's never, another live agent's not differently), and the session it resumes or starts.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::*;
use crate::audit::AuditRecord;
use crate::error::ControlError;
use croupier_proto::common::v1 as common;
use croupier_proto::control::v1::{self as pb};
use croupier_proto::limits::{DEFAULT_MAX_MESSAGE_BYTES, check_payload, excerpt};
use croupier_registry::identity::Identity;
use croupier_registry::ids::check_id;
use croupier_registry::keys;
use croupier_registry::model::{
    AgentRecord, DescriptorRecord, DescriptorSource, NodeState, ProvidedFunction, now_ms,
};
use croupier_registry::schema::{SchemaLimits, check_limits};
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

impl ControlPlane {
    /// Handles `RegisterAgent`: checks the request, resumes or starts the session, stores the
    /// descriptors the agent may write and its registration (under the server's agents' lease).
    #[tracing::instrument(skip_all, fields(agent_id = %req.agent_id))]
    pub async fn register(
        &self,
        who: &Identity,
        req: pb::RegisterAgentRequest,
        addr: Option<SocketAddr>,
    ) -> Result<pb::RegisterAgentResponse, ControlError> {
        self.check_registration(who, &req)?;
        let node = self.view.node(&req.agent_id);
        if node.state == NodeState::Disabled {
            return Err(ControlError::NodeDisabled(format!(
                "node {} is disabled (by {} : {:?}); an admin must set it back with \
                 `croupier node state {} normal` before it can register",
                req.agent_id,
                node.actor,
                excerpt(&node.reason, 200),
                req.agent_id
            )));
        }
        let functions = provided_functions(&req)?;
        let writes = self.descriptor_writes(&req, &functions)?;

        // Bounded store traffic: in a reconnect storm registrations queue here instead of
        // flooding the store (whose timeouts would send agents into long backoffs).
        let _writing = self
            .registering
            .acquire()
            .await
            .map_err(|_| ControlError::Draining("server is shutting down".into()))?;
        // Resume the same session when asked and still alive here.
        let existing = self.session(&req.agent_id);
        let key = keys::agent(&req.game_id, &req.env, &req.agent_id);
        let resumed = existing.as_ref().is_some_and(|s| {
            !req.session_id.is_empty() && s.session_id == req.session_id && s.key == key
        });
        let session_id = match (&existing, resumed) {
            (Some(s), true) => s.session_id.clone(),
            _ => {
                if let Some(old) = &existing {
                    // A new session replaces the old one (the agent restarted).
                    self.expire(old, "replaced by a new registration").await;
                }
                uuid::Uuid::new_v4().to_string()
            }
        };

        let record = AgentRecord {
            agent_id: req.agent_id.clone(),
            game_id: req.game_id.clone(),
            env: req.env.clone(),
            version: req.version.clone(),
            functions: functions.clone(),
            labels: req.labels.clone().into_iter().collect(),
            owner: self.cfg.server_id.clone(),
            addr: addr.map(|a| a.to_string()).unwrap_or_default(),
            session_id: session_id.clone(),
            registered_at: now_ms(),
        };
        for (key, value) in writes {
            self.store
                .put(&key, value, None)
                .await
                .map_err(ControlError::store(format!("storing descriptor {key}")))?;
        }
        let value = serde_json::to_vec(&record)
            .map_err(|e| ControlError::Internal(format!("agent record cannot be encoded: {e}")))?;
        let rev = self.put_registration(&key, value.clone()).await?;

        let max_frame = match req.max_message_bytes {
            n if n > 0 => (n as usize).min(self.cfg.max_message_bytes),
            _ => DEFAULT_MAX_MESSAGE_BYTES.min(self.cfg.max_message_bytes),
        };
        let session = match existing.filter(|_| resumed) {
            Some(s) => {
                *s.record.lock() = StoredRecord { value, rev };
                s
            }
            None => {
                let s = Arc::new(Session {
                    agent_id: req.agent_id.clone(),
                    session_id: session_id.clone(),
                    key,
                    record: Mutex::new(StoredRecord { value, rev }),
                    last_heartbeat: Mutex::new(Instant::now()),
                    last_heartbeat_ms: AtomicI64::new(now_ms()),
                    status: Mutex::new(HashMap::new()),
                    tunnel: Mutex::new(None),
                    pending: Mutex::new(HashMap::new()),
                    in_flight: AtomicI64::new(0),
                    running: RunningJobs::default(),
                    cpu_tenths: AtomicI64::new(-1),
                    max_frame,
                    state_waiter: Mutex::new(None),
                    state_sent: AtomicI64::new(0),
                    assignments_sent: AtomicI64::new(0),
                });
                self.sessions
                    .write()
                    .insert(req.agent_id.clone(), s.clone());
                s
            }
        };
        session.touch();
        self.view.wait_for(rev, Duration::from_secs(5)).await;
        tracing::info!(
            agent_id = %req.agent_id,
            game_id = %req.game_id,
            env = %req.env,
            functions = functions.len(),
            resumed,
            "agent registered"
        );
        metrics::counter!(crate::metrics::AGENT_REGISTRATIONS).increment(1);
        if let Some(inv) = req.inventory {
            // Checked with the request; a store failure here loses the inventory, not the
            // registration (the agent sends it again within its resend interval).
            if let Err(e) = self
                .take_inventory(&req.agent_id, &req.game_id, &req.env, inv)
                .await
            {
                tracing::warn!(agent_id = %req.agent_id, error = %e, "inventory not stored");
                self.node_event(
                    &req.agent_id,
                    "inventory.invalid",
                    "",
                    "refused",
                    e.to_string(),
                    &[],
                );
            }
        }
        self.audit
            .record(
                AuditRecord::new(who.uri(), "register_agent", req.agent_id.clone())
                    .scope(&req.game_id, &req.env)
                    .details(serde_json::json!({"resumed": resumed})),
            )
            .await;
        Ok(pb::RegisterAgentResponse {
            success: true,
            agent_id: req.agent_id,
            heartbeat_interval: self.cfg.heartbeat_interval.as_secs().max(1) as i64,
            session_id,
            resumed,
            node_state: common::NodeState::from(node.state) as i32,
        })
    }

    /// The checks of a registration that need nothing but the request: ids, identity, draining
    /// and the size limits of labels, functions and descriptors.
    pub(super) fn check_registration(
        &self,
        who: &Identity,
        req: &pb::RegisterAgentRequest,
    ) -> Result<(), ControlError> {
        check_id("agent_id", &req.agent_id).map_err(ControlError::BadRequest)?;
        Self::require_agent(who, &req.agent_id, "register")?;
        if self.draining.load(Ordering::Relaxed) {
            return Err(ControlError::Draining(
                "server is shutting down; register with another server or retry".into(),
            ));
        }
        check_id("game_id", &req.game_id).map_err(ControlError::BadRequest)?;
        check_id("env", &req.env).map_err(ControlError::BadRequest)?;
        if let Some(refusal) = who.out_of_scope("register", &req.game_id, &req.env) {
            return Err(ControlError::NotAllowed(refusal));
        }
        if req.labels.len() > self.cfg.max_labels {
            return Err(ControlError::LimitReached(format!(
                "agent {} has {} labels; at most {} are allowed",
                req.agent_id,
                req.labels.len(),
                self.cfg.max_labels
            )));
        }
        for (k, v) in &req.labels {
            if k.is_empty() || k.len() > 128 || v.len() > 256 {
                return Err(ControlError::BadRequest(format!(
                    "label {:?}: keys must be 1-128 characters and values at most 256",
                    excerpt(k, 40)
                )));
            }
        }
        if let Some(inv) = &req.inventory {
            crate::fleet::inventory::validate(inv)
                .map_err(|e| ControlError::BadRequest(format!("agent {}: {e}", req.agent_id)))?;
        }
        if req.version.chars().count() > 128 {
            return Err(ControlError::BadRequest(
                "version: at most 128 characters".into(),
            ));
        }
        let n = req.functions.len() + req.descriptors.len();
        if n > self.cfg.max_functions {
            return Err(ControlError::LimitReached(format!(
                "agent {} declares {n} functions; at most {} are allowed",
                req.agent_id, self.cfg.max_functions
            )));
        }
        for d in &req.descriptors {
            check_id("descriptor id", &d.id).map_err(ControlError::BadRequest)?;
            check_descriptor(d, self.cfg.max_descriptor_bytes, &self.cfg.schema_limits)
                .map_err(ControlError::BadRequest)?;
        }
        Ok(())
    }

    /// The descriptor writes a registration makes, after checking that the agent may make them:
    /// an admin's descriptor is never overwritten, and a descriptor another live agent declared
    /// differently is not either (the registration is refused, naming that agent). Also keeps
    /// the number of functions in the game and env under its limit.
    pub(super) fn descriptor_writes(
        &self,
        req: &pb::RegisterAgentRequest,
        functions: &[ProvidedFunction],
    ) -> Result<Vec<(String, Vec<u8>)>, ControlError> {
        let declared: HashMap<&str, &common::FunctionDescriptor> =
            req.descriptors.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut writes = Vec::new();
        let mut new_functions = 0usize;
        let mut scope_count = None;
        for f in functions {
            let fk = croupier_registry::view::FnKey::new(&req.game_id, &req.env, &f.id);
            let (count, known) = self.view.function_count(&fk);
            scope_count.get_or_insert(count);
            if !known {
                new_functions += 1;
            }
            let current = self.view.descriptor(&fk);
            if current
                .as_ref()
                .is_some_and(|c| c.source == DescriptorSource::Admin)
            {
                continue; // an admin's descriptor wins over what agents declare
            }
            let mut proposed = match declared.get(f.id.as_str()) {
                Some(d) => {
                    DescriptorRecord::from_proto(&req.game_id, &req.env, d, DescriptorSource::Agent)
                }
                None if current.is_some() => continue,
                None => DescriptorRecord {
                    game_id: req.game_id.clone(),
                    env: req.env.clone(),
                    id: f.id.clone(),
                    name: f.id.clone(),
                    ..Default::default()
                },
            };
            proposed.declared_by = req.agent_id.clone();
            if let Some(c) = &current {
                if c.same_content(&proposed) {
                    continue;
                }
                if let Some(owner) = self.other_declarer(c, &fk, &req.agent_id) {
                    return Err(ControlError::DescriptorOwned(format!(
                        "function {} in game {:?} env {:?} is declared differently by live agent \
                         {owner}; declare the same descriptor, stop {owner} first, or have an \
                         admin set the descriptor (`croupier function register`)",
                        f.id, req.game_id, req.env
                    )));
                }
            }
            if let Some(c) = &current {
                // Checked as declared above; stored with `auth` no looser than before.
                proposed.tighten_from(c);
                if c.same_content(&proposed) {
                    continue;
                }
            }
            let value = serde_json::to_vec(&proposed).map_err(|e| {
                ControlError::Internal(format!("descriptor {} cannot be encoded: {e}", f.id))
            })?;
            writes.push((keys::function(&req.game_id, &req.env, &f.id), value));
        }
        let count = scope_count.unwrap_or(0);
        if new_functions > 0 && count + new_functions > self.cfg.max_functions_per_scope {
            return Err(ControlError::LimitReached(format!(
                "game {:?} env {:?} has {count} functions; {new_functions} more would pass the \
                 limit of {} (limits.max_functions_per_scope)",
                req.game_id, req.env, self.cfg.max_functions_per_scope
            )));
        }
        Ok(writes)
    }

    /// Another live agent that provides the function and stands behind its current descriptor:
    /// the agent that declared it, or, for a descriptor stored without that record, any other
    /// live provider.
    pub(super) fn other_declarer(
        &self,
        current: &DescriptorRecord,
        fk: &croupier_registry::view::FnKey,
        agent_id: &str,
    ) -> Option<String> {
        let providers = self.view.candidates(fk);
        let live = |id: &str| id != agent_id && providers.iter().any(|c| c.agent.agent_id == id);
        if current.declared_by.is_empty() {
            providers
                .iter()
                .map(|c| c.agent.agent_id.clone())
                .find(|id| live(id))
        } else {
            live(&current.declared_by).then(|| current.declared_by.clone())
        }
    }
}

/// The functions a registration provides: those it lists and those it describes, once each.
pub(super) fn provided_functions(
    req: &pb::RegisterAgentRequest,
) -> Result<Vec<ProvidedFunction>, ControlError> {
    let versions: HashMap<&str, &str> = req
        .descriptors
        .iter()
        .map(|d| (d.id.as_str(), d.version.as_str()))
        .collect();
    let mut functions: Vec<ProvidedFunction> = Vec::new();
    let mut seen = HashSet::new();
    for f in req
        .functions
        .iter()
        .chain(req.descriptors.iter().map(|d| &d.id))
    {
        check_id("function id", f).map_err(ControlError::BadRequest)?;
        if seen.insert(f.as_str()) {
            functions.push(ProvidedFunction {
                id: f.clone(),
                version: versions.get(f.as_str()).unwrap_or(&"").to_string(),
            });
        }
    }
    Ok(functions)
}

/// Checks one declared descriptor against the size and schema limits; the error names the
/// function and the limit.
pub fn check_descriptor(
    d: &common::FunctionDescriptor,
    max_bytes: usize,
    limits: &SchemaLimits,
) -> Result<(), String> {
    use prost::Message as _;
    let bytes = d.encoded_len();
    if bytes > max_bytes {
        return Err(format!(
            "descriptor of {} is {bytes} bytes; at most {max_bytes} are allowed              (limits.max_descriptor_bytes)",
            d.id
        ));
    }
    for (what, schema) in [
        ("params_schema", &d.params_schema),
        ("result_schema", &d.result_schema),
    ] {
        let Some(schema) = schema else { continue };
        if let Err(e) = check_payload(Some(schema), usize::MAX) {
            return Err(format!("{what} of {} {e}", d.id));
        }
        let json = croupier_proto::json::struct_to_json(schema);
        check_limits(&json, limits).map_err(|e| format!("{what} of {} {e}", d.id))?;
        if what == "params_schema" {
            croupier_registry::schema::compile(&json)
                .map_err(|e| format!("{what} of {} {e}", d.id))?;
        }
    }
    if let Some(a) = d.auth.as_ref().and_then(|a| a.approval.as_ref()) {
        croupier_registry::model::check_approval(a).map_err(|e| format!("auth.{e} of {}", d.id))?;
    }
    Ok(())
}
