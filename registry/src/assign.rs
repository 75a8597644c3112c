//! Function assignments as stored, and what they make of a function on one agent.
//!
//! An assignment enables or disables a function, and configures it, on one agent (`agent_id`)
//! or on the agents whose labels hold every pair of a `selector`. On an agent, the assignments
//! naming it beat the selector ones; among several of a kind the latest decides `enabled`;
//! configs merge oldest first, the agent's own last.

use std::collections::BTreeMap;

use croupier_proto::control::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::ids::check_id;
use crate::model::AgentRecord;

/// Most configuration entries of one assignment.
pub const MAX_CONFIG_ENTRIES: usize = 64;
/// Most bytes of one assignment's configuration (keys and values).
pub const MAX_CONFIG_BYTES: usize = 16 * 1024;

/// An assignment as stored (JSON under `/croupier/assignments/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// Id.
    pub id: String,
    /// Game of the function.
    pub game_id: String,
    /// Environment of the function.
    pub env: String,
    /// The function.
    pub function_id: String,
    /// One agent, or empty with a selector.
    #[serde(default)]
    pub agent_id: String,
    /// Labels the agents must hold.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// False makes the function unavailable on the matching agents.
    pub enabled: bool,
    /// What the handler receives with every call.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Who (spiffe URI).
    #[serde(default)]
    pub actor: String,
    /// When, Unix ms.
    #[serde(default)]
    pub updated_at: i64,
    /// Store revision of the write (not stored; set when read).
    #[serde(skip)]
    pub revision: i64,
}

impl AssignmentRecord {
    /// A request's assignment, checked: ids, exactly one of agent and selector, bounded
    /// config. `actor`, `updated_at` and `revision` are left to the caller.
    pub fn from_request(a: pb::Assignment) -> Result<AssignmentRecord, String> {
        check_id("id", &a.id)?;
        check_id("game_id", &a.game_id)?;
        check_id("env", &a.env)?;
        check_id("function_id", &a.function_id)?;
        match (a.agent_id.is_empty(), a.selector.is_empty()) {
            (false, true) => check_id("agent_id", &a.agent_id)?,
            (true, false) => {}
            _ => {
                return Err(
                    "give either agent_id (one agent) or selector (labels), not both or neither"
                        .into(),
                );
            }
        }
        let bytes: usize = a.config.iter().map(|(k, v)| k.len() + v.len()).sum();
        if a.config.len() > MAX_CONFIG_ENTRIES || bytes > MAX_CONFIG_BYTES {
            return Err(format!(
                "config has {} entries, {bytes} bytes; at most {MAX_CONFIG_ENTRIES} entries and \
                 {MAX_CONFIG_BYTES} bytes",
                a.config.len()
            ));
        }
        if a.reason.chars().count() > 1024 {
            return Err("reason: at most 1024 characters".into());
        }
        Ok(AssignmentRecord {
            id: a.id,
            game_id: a.game_id,
            env: a.env,
            function_id: a.function_id,
            agent_id: a.agent_id,
            selector: a.selector.into_iter().collect(),
            enabled: a.enabled,
            config: a.config.into_iter().collect(),
            reason: a.reason,
            ..AssignmentRecord::default()
        })
    }

    /// Whether it applies to `agent` (its game, env and id or labels).
    pub fn applies_to(&self, agent: &AgentRecord) -> bool {
        self.game_id == agent.game_id
            && self.env == agent.env
            && if self.agent_id.is_empty() {
                self.selector
                    .iter()
                    .all(|(k, v)| agent.labels.get(k) == Some(v))
            } else {
                self.agent_id == agent.agent_id
            }
    }

    /// As the API shows it.
    pub fn to_proto(&self) -> pb::Assignment {
        pb::Assignment {
            id: self.id.clone(),
            game_id: self.game_id.clone(),
            env: self.env.clone(),
            function_id: self.function_id.clone(),
            agent_id: self.agent_id.clone(),
            selector: self.selector.clone().into_iter().collect(),
            enabled: self.enabled,
            config: self.config.clone().into_iter().collect(),
            reason: self.reason.clone(),
            actor: self.actor.clone(),
            updated_at: self.updated_at,
            revision: self.revision,
        }
    }
}

/// What the assignments make of one function on one agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    /// False: the function takes no work on the agent.
    pub enabled: bool,
    /// The merged configuration.
    pub config: BTreeMap<String, String>,
    /// The assignments that apply, in the order they were merged.
    pub ids: Vec<String>,
    /// The one that decided `enabled` (its id, actor and reason), for error messages.
    pub decided_by: String,
}

/// Resolves the assignments of `function_id` that apply to `agent`; None when none does.
pub fn resolve<'a>(
    all: impl IntoIterator<Item = &'a AssignmentRecord>,
    agent: &AgentRecord,
    function_id: &str,
) -> Option<Effective> {
    let mut matching: Vec<&AssignmentRecord> = all
        .into_iter()
        .filter(|a| a.function_id == function_id && a.applies_to(agent))
        .collect();
    if matching.is_empty() {
        return None;
    }
    // Selector ones first, then the agent's own; each kind oldest first.
    matching.sort_by_key(|a| (!a.agent_id.is_empty(), a.updated_at, a.revision));
    let last = matching[matching.len() - 1];
    let mut config = BTreeMap::new();
    for a in &matching {
        config.extend(a.config.clone());
    }
    Some(Effective {
        enabled: last.enabled,
        config,
        ids: matching.iter().map(|a| a.id.clone()).collect(),
        decided_by: format!(
            "assignment {} (by {}: {:?})",
            last.id, last.actor, last.reason
        ),
    })
}

/// A version of the assignments that apply to `agent`: a digest of their ids and revisions,
/// 0 when none applies. It changes whenever one of them does, or one starts or stops applying.
pub fn version<'a>(
    all: impl IntoIterator<Item = &'a AssignmentRecord>,
    agent: &AgentRecord,
) -> i64 {
    use std::hash::{Hash, Hasher};
    let mut ids: Vec<(&str, i64)> = all
        .into_iter()
        .filter(|a| a.applies_to(agent))
        .map(|a| (a.id.as_str(), a.revision))
        .collect();
    if ids.is_empty() {
        return 0;
    }
    ids.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ids.hash(&mut h);
    (h.finish() >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, labels: &[(&str, &str)]) -> AgentRecord {
        AgentRecord {
            agent_id: id.into(),
            game_id: "g".into(),
            env: "e".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..AgentRecord::default()
        }
    }

    fn rec(
        id: &str,
        agent: &str,
        selector: &[(&str, &str)],
        enabled: bool,
        at: i64,
    ) -> AssignmentRecord {
        AssignmentRecord {
            id: id.into(),
            game_id: "g".into(),
            env: "e".into(),
            function_id: "f".into(),
            agent_id: agent.into(),
            selector: selector
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            enabled,
            config: [
                (format!("from_{id}"), "1".to_string()),
                ("level".into(), id.into()),
            ]
            .into_iter()
            .collect(),
            updated_at: at,
            ..AssignmentRecord::default()
        }
    }

    #[test]
    fn the_agents_own_beats_selectors_and_configs_merge() {
        let eu = agent("a1", &[("region", "eu")]);
        let us = agent("a2", &[("region", "us")]);
        let all = [
            rec("eu-off", "", &[("region", "eu")], false, 2),
            rec("a1-on", "a1", &[], true, 1),
            rec("all-eu-old", "", &[("region", "eu")], true, 1),
        ];
        let e = resolve(&all, &eu, "f").unwrap();
        assert!(e.enabled, "the agent's own assignment decides");
        assert_eq!(e.ids, ["all-eu-old", "eu-off", "a1-on"]);
        assert_eq!(e.config["level"], "a1-on");
        assert_eq!(e.config.len(), 4);
        assert!(resolve(&all, &us, "f").is_none());
        assert!(resolve(&all, &eu, "other").is_none());
        let without_own = &all[0..1];
        let e = resolve(without_own, &eu, "f").unwrap();
        assert!(!e.enabled);
        assert!(e.decided_by.contains("eu-off"));
    }

    #[test]
    fn versions_change_with_what_applies() {
        let a = agent("a1", &[("region", "eu")]);
        let mut all = vec![rec("x", "a1", &[], true, 1)];
        let v1 = version(&all, &a);
        assert_ne!(v1, 0);
        all[0].revision = 9;
        let v2 = version(&all, &a);
        assert_ne!(v1, v2);
        all.push(rec("y", "a2", &[], true, 1));
        assert_eq!(
            version(&all, &a),
            v2,
            "another agent's assignment changes nothing"
        );
        assert_eq!(version(&[], &a), 0);
    }

    #[test]
    fn requests_are_checked() {
        let ok = pb::Assignment {
            id: "x".into(),
            game_id: "g".into(),
            env: "e".into(),
            function_id: "f".into(),
            agent_id: "a1".into(),
            ..Default::default()
        };
        AssignmentRecord::from_request(ok.clone()).unwrap();
        let mut both = ok.clone();
        both.selector.insert("k".into(), "v".into());
        assert!(
            AssignmentRecord::from_request(both)
                .unwrap_err()
                .contains("not both")
        );
        let mut neither = ok.clone();
        neither.agent_id.clear();
        assert!(
            AssignmentRecord::from_request(neither)
                .unwrap_err()
                .contains("neither")
        );
        let mut big = ok;
        big.config = (0..100).map(|i| (i.to_string(), String::new())).collect();
        assert!(
            AssignmentRecord::from_request(big)
                .unwrap_err()
                .contains("100 entries")
        );
    }
}
