use super::*;
use crate::identity::Scopes;

fn id(role: Role, name: &str) -> Identity {
    Identity::new(role, name).unwrap()
}

fn req<'a>(action: Action, function: &'a str, game: &'a str, env: &'a str) -> Request<'a> {
    Request {
        action,
        function,
        game,
        env,
    }
}

fn policy(json: serde_json::Value) -> Policy {
    Policy::from_json(json.to_string().as_bytes()).unwrap()
}

#[test]
fn the_builtin_policy_keeps_the_old_behaviour() {
    let p = Policy::builtin();
    p.validate().unwrap();
    let client = id(Role::Client, "c1");
    let admin = id(Role::Admin, "ops");
    let agent = id(Role::Agent, "a1");
    for who in [&client, &admin, &agent] {
        assert!(
            p.decide(who, req(Action::Invoke, "player.ban", "g", "prod"))
                .allowed
        );
        assert!(
            p.decide(who, req(Action::Job, "deploy", "g", "prod"))
                .allowed
        );
    }
    for action in [
        Action::Read,
        Action::Cancel,
        Action::NodeState,
        Action::Pipelines,
    ] {
        assert!(p.decide(&admin, req(action, "f", "g", "e")).allowed);
        let d = p.decide(&client, req(action, "f", "g", "e"));
        assert!(!d.allowed, "{action:?}");
        assert!(d.explanation.contains("no rule"), "{}", d.explanation);
    }
}

#[test]
fn the_first_matching_rule_decides_and_is_named() {
    let p = policy(serde_json::json!({
        "roles": {"support": ["client/bob", "spiffe://croupier/client/carol"], "ops": ["admin"]},
        "rule": [
            {"name": "no bans in prod for support", "who": ["support"], "actions": ["invoke"],
             "functions": ["player.ban"], "scopes": ["g/prod"], "effect": "deny"},
            {"name": "support helps players", "who": ["support"], "actions": ["invoke", "job"],
             "functions": ["player.*"], "scopes": ["g/*"]},
            {"who": ["ops"], "actions": ["*"]}
        ]
    }));
    let bob = id(Role::Client, "bob");
    let carol = id(Role::Client, "carol");
    let d = p.decide(&bob, req(Action::Invoke, "player.ban", "g", "prod"));
    assert!(!d.allowed);
    assert!(d.rule.contains("no bans in prod"), "{}", d.rule);
    let d = p.decide(&carol, req(Action::Invoke, "player.ban", "g", "staging"));
    assert!(d.allowed, "{}", d.explanation);
    assert!(
        d.explanation.contains("support helps players"),
        "{}",
        d.explanation
    );
    assert!(
        !p.decide(&bob, req(Action::Invoke, "node.metrics", "g", "e"))
            .allowed
    );
    assert!(
        !p.decide(&bob, req(Action::Invoke, "player.kick", "h", "e"))
            .allowed
    );
    let d = p.decide(&id(Role::Admin, "x"), req(Action::NodeState, "", "g", "e"));
    assert_eq!(d.rule, "rule 3");
    assert_eq!(p.roles_of(&carol), ["support"]);
    assert!(p.is_member(&carol, "support") && !p.is_member(&carol, "ops"));
}

#[test]
fn approval_comes_with_an_allowing_invoke_or_job_rule() {
    let p = policy(serde_json::json!({
        "roles": {"ops": ["admin/alice", "admin/dave"]},
        "rule": [{"who": ["*"], "actions": ["invoke", "job", "read"], "functions": ["player.ban"],
                  "approval": {"approvers": "ops", "count": 2, "ttl": "30m"}}]
    }));
    let c = id(Role::Client, "c");
    let d = p.decide(&c, req(Action::Job, "player.ban", "g", "e"));
    let a = d.approval.unwrap();
    assert_eq!((a.approvers.as_str(), a.count), ("ops", 2));
    assert_eq!(a.ttl(), Duration::from_secs(1800));
    assert!(d.explanation.contains("approval"), "{}", d.explanation);
    assert!(
        p.decide(&c, req(Action::Read, "player.ban", "g", "e"))
            .approval
            .is_none()
    );
}

#[test]
fn bad_policies_are_refused_with_the_field_to_fix() {
    let bad = |json: serde_json::Value, want: &str| {
        let err = Policy::from_json(json.to_string().as_bytes()).unwrap_err();
        assert!(err.contains(want), "{err} (wanted {want:?})");
    };
    bad(
        serde_json::json!({"rule": [{"who": ["*"], "actions": ["fly"]}]}),
        "unknown action \"fly\"",
    );
    bad(
        serde_json::json!({"rule": [{"who": ["nobody"], "actions": ["invoke"]}]}),
        "rule 1: who",
    );
    bad(
        serde_json::json!({"rule": [{"who": ["*"], "actions": []}]}),
        "`actions` is empty",
    );
    bad(
        serde_json::json!({"rule": [{"who": ["*"], "actions": ["invoke"], "scopes": ["a/b/c"]}]}),
        "scope",
    );
    bad(
        serde_json::json!({"roles": {"admin": ["*"]}}),
        "role name \"admin\"",
    );
    bad(serde_json::json!({"version": 2}), "version 2");
    bad(serde_json::json!({"rules": []}), "unknown field");
    bad(
        serde_json::json!({"rule": [{"who": ["*"], "actions": ["invoke"],
            "approval": {"approvers": "ghosts"}}]}),
        "approvers \"ghosts\"",
    );
    bad(
        serde_json::json!({"rule": [{"who": ["*"], "actions": ["invoke"],
            "approval": {"approvers": "admin", "ttl": "forever"}}]}),
        "approval.ttl",
    );
}

#[test]
fn identities_match_by_role_and_name_not_by_scope() {
    let p = policy(serde_json::json!({
        "rule": [{"who": ["client/alice"], "actions": ["read"]}]
    }));
    let scoped =
        id(Role::Client, "alice").with_scopes(Scopes::new(vec![Scope::parse("g/e").unwrap()]));
    assert!(p.decide(&scoped, req(Action::Read, "f", "g", "e")).allowed);
    assert!(
        !p.decide(&id(Role::Admin, "alice"), req(Action::Read, "f", "g", "e"))
            .allowed
    );
}

#[test]
fn globs() {
    assert!(glob_matches("*", ""));
    assert!(glob_matches("player.*", "player.ban"));
    assert!(!glob_matches("player.*", "players.ban"));
    assert!(glob_matches("*.ban", "player.ban"));
    assert!(glob_matches("a*b*c", "a-b-b-c"));
    assert!(!glob_matches("a*b*c", "a-c"));
    assert!(glob_matches("exact", "exact") && !glob_matches("exact", "exactly"));
}
