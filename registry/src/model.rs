//! Registry records as stored (JSON) and their conversions to and from the protos.

use std::collections::BTreeMap;

use croupier_proto::common::v1 as pb;
use croupier_proto::json::{json_to_struct, struct_to_json};
use serde::{Deserialize, Serialize};

use crate::policy::ApprovalRule;

/// A function an agent provides, with the version it implements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvidedFunction {
    /// Function id.
    pub id: String,
    /// Version the agent implements ("" when unversioned).
    #[serde(default)]
    pub version: String,
}

/// An agent registration (`/croupier/agents/{game}/{env}/{agent_id}`, lease-attached).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Agent id.
    pub agent_id: String,
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// Functions provided.
    pub functions: Vec<ProvidedFunction>,
    /// Labels for selector routing.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Server holding the agent's tunnel.
    #[serde(default)]
    pub owner: String,
    /// Address the agent connected from.
    #[serde(default)]
    pub addr: String,
    /// Current session id.
    #[serde(default)]
    pub session_id: String,
    /// Registration time, Unix milliseconds.
    #[serde(default)]
    pub registered_at: i64,
}

impl AgentRecord {
    /// The version of `function_id` this agent provides, if it provides it.
    pub fn provides(&self, function_id: &str) -> Option<&ProvidedFunction> {
        self.functions.iter().find(|f| f.id == function_id)
    }

    /// True when every selector pair is among the labels.
    pub fn matches(&self, selector: &std::collections::HashMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|l| l == v))
    }
}

/// Administrative node state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes work.
    #[default]
    Normal,
    /// No new work; running jobs continue.
    Maintenance,
    /// No work; running jobs cancelled; registration refused.
    Disabled,
}

impl NodeState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Normal => "normal",
            NodeState::Maintenance => "maintenance",
            NodeState::Disabled => "disabled",
        }
    }
}

impl From<pb::NodeState> for NodeState {
    fn from(s: pb::NodeState) -> Self {
        match s {
            pb::NodeState::Normal => NodeState::Normal,
            pb::NodeState::Maintenance => NodeState::Maintenance,
            pb::NodeState::Disabled => NodeState::Disabled,
        }
    }
}

impl From<NodeState> for pb::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Normal => pb::NodeState::Normal,
            NodeState::Maintenance => pb::NodeState::Maintenance,
            NodeState::Disabled => pb::NodeState::Disabled,
        }
    }
}

/// A node state with who set it and why (`/croupier/nodes/{agent_id}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Agent id.
    pub agent_id: String,
    /// State.
    pub state: NodeState,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Who (spiffe URI).
    #[serde(default)]
    pub actor: String,
    /// When, Unix milliseconds.
    #[serde(default)]
    pub changed_at: i64,
    /// When the agent acknowledged that it applied this state, Unix milliseconds; 0 until it
    /// has.
    #[serde(default)]
    pub applied_at: i64,
}

impl From<&NodeRecord> for pb::NodeStateRecord {
    fn from(r: &NodeRecord) -> Self {
        pb::NodeStateRecord {
            agent_id: r.agent_id.clone(),
            state: pb::NodeState::from(r.state) as i32,
            reason: r.reason.clone(),
            actor: r.actor.clone(),
            changed_at: r.changed_at,
            applied_at: r.applied_at,
        }
    }
}

/// Who registered a descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DescriptorSource {
    /// Registered by an agent along with its registration; later agents may refresh it.
    #[default]
    Agent,
    /// Registered with RegisterFunction by an admin; agents cannot override it.
    Admin,
}

/// A function descriptor as stored (`/croupier/functions/{game}/{env}/{function_id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DescriptorRecord {
    /// Game.
    #[serde(default)]
    pub game_id: String,
    /// Environment.
    #[serde(default)]
    pub env: String,
    /// Function id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Category.
    #[serde(default)]
    pub category: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// JSON Schema of the params (null: any payload).
    #[serde(default)]
    pub params_schema: serde_json::Value,
    /// JSON Schema of the result.
    #[serde(default)]
    pub result_schema: serde_json::Value,
    /// Roles allowed to invoke (empty: all).
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    /// Identities allowed to invoke (empty: all).
    #[serde(default)]
    pub allowed_identities: Vec<String>,
    /// Payload fields masked in the audit log.
    #[serde(default)]
    pub sensitive_fields: Vec<String>,
    /// A second person's approval before a call runs (besides the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRule>,
    /// "query" or "command".
    #[serde(default)]
    pub kind: String,
    /// Safe to execute twice.
    #[serde(default)]
    pub idempotent: bool,
    /// Default timeout in seconds (0: server default).
    #[serde(default)]
    pub timeout_secs: i32,
    /// Meant to run as a job.
    #[serde(default)]
    pub job: bool,
    /// UI display name.
    #[serde(default)]
    pub display_name: String,
    /// UI icon.
    #[serde(default)]
    pub icon: String,
    /// UI hints.
    #[serde(default)]
    pub hints: BTreeMap<String, String>,
    /// Who registered it.
    #[serde(default)]
    pub source: DescriptorSource,
    /// For an agent's descriptor: the agent that declared it (while it lives, other agents
    /// cannot declare the function differently). Empty for admin descriptors and old records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub declared_by: String,
}

/// A descriptor's approval as a policy approval rule: none when `approvers` is empty; a count of
/// 0 means 1 and an empty ttl 1h. [`check_approval`] says whether it is valid.
pub fn approval_from_proto(a: &pb::ApprovalConfig) -> Option<ApprovalRule> {
    (!a.approvers.is_empty()).then(|| ApprovalRule {
        approvers: a.approvers.clone(),
        count: u32::try_from(a.count.max(1)).unwrap_or(1),
        ttl: if a.ttl.is_empty() {
            "1h".into()
        } else {
            a.ttl.clone()
        },
    })
}

/// Checks a descriptor's approval (a negative count, a ttl that does not parse or is out of
/// range are refused with what to write).
pub fn check_approval(a: &pb::ApprovalConfig) -> Result<(), String> {
    if a.count < 0 {
        return Err(format!("approval.count is {}; it must be 1 to 10", a.count));
    }
    if a.approvers.is_empty() {
        return if a.count == 0 && a.ttl.is_empty() {
            Ok(())
        } else {
            Err("approval.approvers is empty; name the role whose members approve".into())
        };
    }
    approval_from_proto(a).map_or(Ok(()), |r| r.validate())
}

impl DescriptorRecord {
    /// Builds a record from a proto descriptor.
    pub fn from_proto(
        game_id: &str,
        env: &str,
        d: &pb::FunctionDescriptor,
        source: DescriptorSource,
    ) -> Self {
        let auth = d.auth.clone().unwrap_or_default();
        let sem = d.semantics.clone().unwrap_or_default();
        let ui = d.ui.clone().unwrap_or_default();
        DescriptorRecord {
            game_id: game_id.to_string(),
            env: env.to_string(),
            id: d.id.clone(),
            name: d.name.clone(),
            category: d.category.clone(),
            description: d.description.clone(),
            version: d.version.clone(),
            params_schema: d
                .params_schema
                .as_ref()
                .map(struct_to_json)
                .unwrap_or(serde_json::Value::Null),
            result_schema: d
                .result_schema
                .as_ref()
                .map(struct_to_json)
                .unwrap_or(serde_json::Value::Null),
            allowed_roles: auth.allowed_roles,
            allowed_identities: auth.allowed_identities,
            approval: auth.approval.as_ref().and_then(approval_from_proto),
            sensitive_fields: auth.sensitive_fields,
            kind: sem.kind,
            idempotent: sem.idempotent,
            timeout_secs: sem.timeout,
            job: sem.job,
            display_name: ui.display_name,
            icon: ui.icon,
            hints: ui.hints.into_iter().collect(),
            source,
            declared_by: String::new(),
        }
    }

    /// Keeps the security fields of `current` from being loosened by this (an agent's) new
    /// declaration: who may call can only narrow (the lists intersect; a declaration that would
    /// widen them or leave nobody keeps `current`'s), and sensitive fields only grow. Only an
    /// admin's descriptor, or deleting the stored one, loosens them.
    pub fn tighten_from(&mut self, current: &DescriptorRecord) {
        fn narrow(proposed: &mut Vec<String>, current: &[String]) {
            if current.is_empty() {
                return;
            }
            let both: Vec<String> = proposed
                .iter()
                .filter(|p| current.contains(p))
                .cloned()
                .collect();
            *proposed = if both.is_empty() {
                current.to_vec()
            } else {
                both
            };
        }
        narrow(&mut self.allowed_roles, &current.allowed_roles);
        narrow(&mut self.allowed_identities, &current.allowed_identities);
        for f in &current.sensitive_fields {
            if !self.sensitive_fields.contains(f) {
                self.sensitive_fields.push(f.clone());
            }
        }
        // A stored approval stays as it is; a declaration may add one where there is none.
        if current.approval.is_some() {
            self.approval.clone_from(&current.approval);
        }
    }

    /// True when both describe the function the same way (who declared it aside).
    pub fn same_content(&self, other: &DescriptorRecord) -> bool {
        let mut a = self.clone();
        a.declared_by.clone_from(&other.declared_by);
        a == *other
    }

    /// The proto descriptor.
    pub fn to_proto(&self) -> pb::FunctionDescriptor {
        let schema = |v: &serde_json::Value| (!v.is_null()).then(|| json_to_struct(v));
        pb::FunctionDescriptor {
            id: self.id.clone(),
            name: self.name.clone(),
            category: self.category.clone(),
            params_schema: schema(&self.params_schema),
            result_schema: schema(&self.result_schema),
            auth: Some(pb::AuthConfig {
                allowed_roles: self.allowed_roles.clone(),
                allowed_identities: self.allowed_identities.clone(),
                sensitive_fields: self.sensitive_fields.clone(),
                approval: self.approval.as_ref().map(|a| pb::ApprovalConfig {
                    approvers: a.approvers.clone(),
                    count: i32::try_from(a.count).unwrap_or(i32::MAX),
                    ttl: a.ttl.clone(),
                }),
            }),
            semantics: Some(pb::Semantics {
                kind: self.kind.clone(),
                idempotent: self.idempotent,
                timeout: self.timeout_secs,
                job: self.job,
            }),
            ui: Some(pb::UiConfig {
                display_name: self.display_name.clone(),
                icon: self.icon.clone(),
                hints: self.hints.clone().into_iter().collect(),
            }),
            version: self.version.clone(),
            description: self.description.clone(),
        }
    }

    /// True for functions that only read ("query"), which callers may safely repeat.
    pub fn is_query(&self) -> bool {
        self.kind == "query"
    }
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn descriptor_round_trips_through_proto() {
        let d = pb::FunctionDescriptor {
            id: "player.ban".into(),
            name: "Ban".into(),
            params_schema: Some(json_to_struct(
                &json!({"type": "object", "required": ["id"]}),
            )),
            semantics: Some(pb::Semantics {
                kind: "command".into(),
                idempotent: true,
                timeout: 5,
                job: false,
            }),
            ..Default::default()
        };
        let r = DescriptorRecord::from_proto("g", "e", &d, DescriptorSource::Agent);
        assert_eq!(r.params_schema["required"], json!(["id"]));
        let back = r.to_proto();
        assert_eq!(back.params_schema, d.params_schema);
        assert_eq!(back.semantics, d.semantics);
        let encoded = serde_json::to_vec(&r).unwrap();
        let mut loose = r.clone();
        let mut strict = r.clone();
        strict.allowed_roles = vec!["admin".into()];
        strict.sensitive_fields = vec!["token".into()];
        loose.allowed_roles = vec!["client".into(), "admin".into()];
        loose.tighten_from(&strict);
        assert_eq!(loose.allowed_roles, ["admin"]);
        assert_eq!(loose.sensitive_fields, ["token"]);
        let mut open = r.clone();
        open.allowed_roles.clear();
        open.tighten_from(&strict);
        assert_eq!(
            open.allowed_roles,
            ["admin"],
            "an empty list would open it to all"
        );
        let mut other = r.clone();
        other.allowed_roles = vec!["client".into()];
        other.tighten_from(&strict);
        assert_eq!(
            other.allowed_roles,
            ["admin"],
            "disjoint: the stored list stays"
        );
        let decoded: DescriptorRecord = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(decoded, r);
    }

    #[test]
    fn an_approval_is_kept_and_can_only_be_added_by_a_declaration() {
        let proto = pb::ApprovalConfig {
            approvers: "leads".into(),
            count: 0,
            ttl: String::new(),
        };
        let rule = approval_from_proto(&proto).unwrap();
        assert_eq!((rule.count, rule.ttl.as_str()), (1, "1h"));
        assert!(approval_from_proto(&pb::ApprovalConfig::default()).is_none());
        check_approval(&proto).unwrap();
        check_approval(&pb::ApprovalConfig::default()).unwrap();
        let bad_ttl = pb::ApprovalConfig {
            ttl: "soon".into(),
            ..proto.clone()
        };
        assert!(
            check_approval(&bad_ttl)
                .unwrap_err()
                .contains("approval.ttl")
        );
        let no_role = pb::ApprovalConfig {
            approvers: String::new(),
            count: 2,
            ttl: String::new(),
        };
        assert!(check_approval(&no_role).unwrap_err().contains("approvers"));

        let plain = DescriptorRecord::from_proto(
            "g",
            "e",
            &pb::FunctionDescriptor {
                id: "player.ban".into(),
                ..Default::default()
            },
            DescriptorSource::Agent,
        );
        let guarded = DescriptorRecord {
            approval: Some(rule.clone()),
            ..plain.clone()
        };
        assert_eq!(
            guarded.to_proto().auth.unwrap().approval.unwrap().approvers,
            "leads"
        );
        // Dropping the stored approval does not remove it; changing it does not either.
        let mut dropped = plain.clone();
        dropped.tighten_from(&guarded);
        assert_eq!(dropped.approval, Some(rule.clone()));
        let mut changed = DescriptorRecord {
            approval: Some(ApprovalRule {
                approvers: "anyone".into(),
                ..rule.clone()
            }),
            ..plain.clone()
        };
        changed.tighten_from(&guarded);
        assert_eq!(changed.approval, Some(rule.clone()));
        // Adding one where none is stored tightens, so it stays.
        let mut added = guarded.clone();
        added.tighten_from(&plain);
        assert_eq!(added.approval, Some(rule));
    }
}

/// A server replica (`/croupier/servers/{server_id}`, under the server's lease).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerRecord {
    /// The server's id.
    pub server_id: String,
    /// URL other servers forward to, e.g. `https://10.0.0.5:8443`.
    pub url: String,
    /// Unix ms.
    pub started_at: i64,
}
