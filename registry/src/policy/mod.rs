//! The admin policy: which identities and roles may do what, on which functions, in which
//! game/env scopes, and which calls need a second person's approval.
//!
//! A policy is a list of rules read top to bottom; the first rule that matches the identity, the
//! action, the function and the scope decides (`allow` or `deny`), and no match denies. It lives
//! in the store at [`crate::keys::POLICY`], is written only by admins (`PutPolicy`), and every
//! server's registry view follows it. Without a stored policy, [`Policy::builtin`] applies: it
//! keeps the behaviour of a deployment that predates policies (admins may do everything, every
//! identity may invoke and start jobs).
//!
//! The policy sits beside the other checks, it does not replace them: a certificate's scopes, a
//! function descriptor's `auth` block and the owner of a job are checked as well, and every check
//! must pass.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, Role, Scope};

#[cfg(test)]
mod tests;

/// What an identity asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Call a function synchronously.
    Invoke,
    /// Start a function as a job.
    Job,
    /// Read (get, list, follow) jobs started by other identities. Own jobs are always readable.
    Read,
    /// Cancel jobs started by other identities. Own jobs can always be cancelled.
    Cancel,
    /// Set an agent's node state.
    NodeState,
    /// Store or delete pipeline templates.
    Pipelines,
    /// Approve or reject a pending call (besides being among its approvers).
    Approve,
    /// Put or delete function assignments (enable, disable, configure per agent or selector).
    Assign,
}

impl Action {
    /// Every action, in the order the docs list them.
    pub const ALL: [Action; 8] = [
        Action::Invoke,
        Action::Job,
        Action::Read,
        Action::Cancel,
        Action::NodeState,
        Action::Pipelines,
        Action::Approve,
        Action::Assign,
    ];

    /// The name used in policies and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Invoke => "invoke",
            Action::Job => "job",
            Action::Read => "read",
            Action::Cancel => "cancel",
            Action::NodeState => "node_state",
            Action::Pipelines => "pipelines",
            Action::Approve => "approve",
            Action::Assign => "assign",
        }
    }

    /// Parses a name from [`Action::as_str`].
    pub fn parse(name: &str) -> Result<Action, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown action {name:?}; the actions are {}",
                    Action::ALL.map(Action::as_str).join(", ")
                )
            })
    }

    /// True for actions that name a function (rules' `functions` apply to them).
    pub fn has_function(self) -> bool {
        matches!(
            self,
            Action::Invoke
                | Action::Job
                | Action::Read
                | Action::Cancel
                | Action::Approve
                | Action::Assign
        )
    }
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The rule grants the action.
    #[default]
    Allow,
    /// The rule refuses the action.
    Deny,
}

/// A second person's approval before a call runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// The role (of the policy's `roles`, or a certificate role) whose members may approve.
    pub approvers: String,
    /// Approvals needed, each from a different identity that is not the requester. Default 1.
    #[serde(default = "one")]
    pub count: u32,
    /// How long a request waits for its approvals before it expires ("1h", "30m"). Default 1h.
    #[serde(default = "one_hour")]
    pub ttl: String,
}

fn one() -> u32 {
    1
}

fn one_hour() -> String {
    "1h".into()
}

impl ApprovalRule {
    /// The ttl as a duration (checked by [`Policy::validate`]).
    pub fn ttl(&self) -> Duration {
        humantime::parse_duration(&self.ttl).unwrap_or(Duration::from_secs(3600))
    }

    /// Checks the approvers, count (1 to 10) and ttl (10 s to 7 days).
    pub fn validate(&self) -> Result<(), String> {
        if self.approvers.is_empty() {
            return Err("approval.approvers is empty; name the role whose members approve".into());
        }
        if !(1..=10).contains(&self.count) {
            return Err(format!(
                "approval.count is {}; it must be 1 to 10",
                self.count
            ));
        }
        let ttl = humantime::parse_duration(&self.ttl)
            .map_err(|e| format!("approval.ttl {:?}: {e} (write e.g. \"1h\")", self.ttl))?;
        if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(format!(
                "approval.ttl {:?} must be between 10s and 7d",
                self.ttl
            ));
        }
        Ok(())
    }
}

/// One rule of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A name the decisions quote ("support bans players"). Default: "rule N".
    #[serde(default)]
    pub name: String,
    /// Who the rule is about: role names of `roles`, certificate roles (`admin`, `client`,
    /// `agent`), identities (`client/alice` or the full spiffe URI), or `*` for everyone.
    pub who: Vec<String>,
    /// Actions it covers ([`Action::as_str`] names, or `*`).
    pub actions: Vec<String>,
    /// Function id globs (`player.*`, `*`); empty means every function. Ignored for actions that
    /// name no function.
    #[serde(default)]
    pub functions: Vec<String>,
    /// Scopes it covers (`game/env`, `game/*`, `game`, or `*`); empty means every scope.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Allow (default) or deny.
    #[serde(default)]
    pub effect: Effect,
    /// When set on an allowing rule for `invoke` or `job`, the call needs approval first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRule>,
}

/// A policy document (stored as JSON; the CLI also reads TOML).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version; 1.
    #[serde(default = "version_one")]
    pub version: u32,
    /// Role name → members (identities, certificate roles, or `*`).
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// The rules, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

fn version_one() -> u32 {
    1
}

/// What one request asks, for [`Policy::decide`].
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The action.
    pub action: Action,
    /// The function id ("" for actions without one).
    pub function: &'a str,
    /// Game.
    pub game: &'a str,
    /// Environment.
    pub env: &'a str,
}

/// A decision and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// The rule that decided ("" when none matched).
    pub rule: String,
    /// The approval the call needs first, when the deciding rule asks for one.
    pub approval: Option<ApprovalRule>,
    /// One sentence saying why.
    pub explanation: String,
}

impl Policy {
    /// The policy in force when none is stored: admins may do everything, every identity may
    /// invoke and start jobs; reading or cancelling another identity's jobs, node states,
    /// pipelines and approvals are for admins.
    pub fn builtin() -> Policy {
        let rule = |name: &str, who: &str, actions: &[&str]| Rule {
            name: name.into(),
            who: vec![who.into()],
            actions: actions.iter().map(ToString::to_string).collect(),
            ..Rule::default()
        };
        Policy {
            version: 1,
            roles: BTreeMap::new(),
            rules: vec![
                rule("admins may do everything", "admin", &["*"]),
                rule(
                    "every identity may invoke, start jobs and approve as a named approver",
                    "*",
                    &["invoke", "job", "approve"],
                ),
            ],
        }
    }

    /// Parses and validates a policy from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, String> {
        let p: Policy =
            serde_json::from_slice(bytes).map_err(|e| format!("the policy is not valid: {e}"))?;
        p.validate()?;
        Ok(p)
    }

    /// The policy as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every field; the error names the rule and the field to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!(
                "policy version {} is not supported; write version = 1",
                self.version
            ));
        }
        for (name, members) in &self.roles {
            if !crate::identity::is_valid_name(name) || name.parse::<Role>().is_ok() || name == "*"
            {
                return Err(format!(
                    "role name {name:?} is not allowed: use letters, digits, '-', '_' or '.', and \
                     not a certificate role (admin, client, agent, server)"
                ));
            }
            for m in members {
                check_member(m).map_err(|e| format!("roles.{name}: {e}"))?;
            }
        }
        if self.rules.len() > 1000 {
            return Err(format!(
                "{} rules; at most 1000 are allowed",
                self.rules.len()
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = rule_name(r, i);
            let fail = |e: String| format!("{at}: {e}");
            if r.who.is_empty() {
                return Err(fail(
                    "`who` is empty; name roles or identities, or \"*\"".into(),
                ));
            }
            for w in &r.who {
                if !self.roles.contains_key(w) {
                    check_member(w)
                        .map_err(|e| fail(format!("who: {e} (or a role of `roles`)")))?;
                }
            }
            if r.actions.is_empty() {
                return Err(fail("`actions` is empty".into()));
            }
            for a in &r.actions {
                if a != "*" {
                    Action::parse(a).map_err(fail)?;
                }
            }
            for f in &r.functions {
                if f.is_empty() || f.len() > 256 {
                    return Err(fail(format!(
                        "function glob {f:?} must be 1 to 256 characters"
                    )));
                }
            }
            for s in &r.scopes {
                if s != "*" {
                    Scope::parse(s).map_err(|e| fail(format!("scope {s:?}: {e}")))?;
                }
            }
            if let Some(a) = &r.approval {
                if r.effect == Effect::Deny {
                    return Err(fail("a deny rule cannot ask for approval".into()));
                }
                a.validate().map_err(fail)?;
                if !self.roles.contains_key(&a.approvers) && check_member(&a.approvers).is_err() {
                    return Err(fail(format!(
                        "approval.approvers {:?} is neither a role of `roles` nor a certificate \
                         role",
                        a.approvers
                    )));
                }
            }
        }
        Ok(())
    }

    /// True when `who` is a member of `role`: a role of `roles`, a certificate role, an identity
    /// or `*`.
    pub fn is_member(&self, who: &Identity, role: &str) -> bool {
        match self.roles.get(role) {
            Some(members) => members.iter().any(|m| member_matches(m, who)),
            None => member_matches(role, who),
        }
    }

    /// The roles of `roles` that `who` belongs to.
    pub fn roles_of(&self, who: &Identity) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|(_, members)| members.iter().any(|m| member_matches(m, who)))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Decides `req` for `who`: the first matching rule decides; no match denies.
    pub fn decide(&self, who: &Identity, req: Request<'_>) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            if !self.rule_matches(r, who, req) {
                continue;
            }
            let name = rule_name(r, i);
            let allowed = r.effect == Effect::Allow;
            let approval = if allowed && matches!(req.action, Action::Invoke | Action::Job) {
                r.approval.clone()
            } else {
                None
            };
            let mut explanation = format!(
                "{} {}{} by {name}",
                if allowed { "allowed" } else { "denied" },
                req.action.as_str(),
                describe(req),
            );
            if let Some(a) = &approval {
                explanation.push_str(&format!(
                    ", after {} approval(s) by {} within {}",
                    a.count, a.approvers, a.ttl
                ));
            }
            return Decision {
                allowed,
                rule: name,
                approval,
                explanation,
            };
        }
        Decision {
            allowed: false,
            rule: String::new(),
            approval: None,
            explanation: format!(
                "denied {}{}: no rule of the policy matches {who} (roles: {}); an admin can add \
                 one with `croupier policy put`",
                req.action.as_str(),
                describe(req),
                match self.roles_of(who) {
                    r if r.is_empty() => "none".to_string(),
                    r => r.join(", "),
                },
            ),
        }
    }

    fn rule_matches(&self, r: &Rule, who: &Identity, req: Request<'_>) -> bool {
        r.who.iter().any(|w| self.is_member(who, w))
            && r.actions
                .iter()
                .any(|a| a == "*" || a == req.action.as_str())
            && (!req.action.has_function()
                || r.functions.is_empty()
                || r.functions.iter().any(|g| glob_matches(g, req.function)))
            && (r.scopes.is_empty()
                || r.scopes.iter().any(|s| {
                    s == "*" || Scope::parse(s).is_ok_and(|s| s.covers(req.game, req.env))
                }))
    }
}

fn rule_name(r: &Rule, index: usize) -> String {
    if r.name.is_empty() {
        format!("rule {}", index + 1)
    } else {
        format!("rule {} ({:?})", index + 1, r.name)
    }
}

/// What a request is about, for explanations: " of FUNCTION in G/E", " in G/E" or "".
fn describe(req: Request<'_>) -> String {
    let scope = if req.game.is_empty() {
        String::new()
    } else {
        format!(" in {}/{}", req.game, req.env)
    };
    if req.action.has_function() && !req.function.is_empty() {
        format!(" of {}{scope}", req.function)
    } else {
        scope
    }
}

/// Checks a member: `*`, a certificate role, `role/name` or a spiffe URI.
fn check_member(m: &str) -> Result<(), String> {
    if m == "*" || m.parse::<Role>().is_ok() || parse_identity(m).is_some() {
        Ok(())
    } else {
        Err(format!(
            "{m:?} is not an identity (client/alice, spiffe://croupier/client/alice), a \
             certificate role (admin, client, agent) or \"*\""
        ))
    }
}

fn parse_identity(m: &str) -> Option<Identity> {
    Identity::parse_uri(m).or_else(|| {
        let (role, name) = m.split_once('/')?;
        Identity::new(role.parse().ok()?, name)
    })
}

fn member_matches(m: &str, who: &Identity) -> bool {
    if m == "*" {
        return true;
    }
    if let Ok(role) = m.parse::<Role>() {
        return who.role == role;
    }
    parse_identity(m).is_some_and(|i| i.role == who.role && i.name == who.name)
}

/// Matches `text` against a glob where `*` stands for any run of characters.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}
