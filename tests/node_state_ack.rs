//! End-to-end: node state changes the agent acknowledges, through real `croupier server` and
//! `croupier agent` processes over mTLS:
//! - a change to a connected agent is applied and acknowledged within the call (`applied_at`,
//!   "applied", a `node.state.applied` event, no "(pending)" in `croupier agents`);
//! - a change to an agent whose tunnel is down is pending, shown as such, and applied when the
//!   agent comes back, which then takes calls again once set back to normal;
//! - disabling a node fails its synchronous calls in flight with `NODE_DISABLED` at once.

mod common;

use std::time::Duration;

use common::Mesh;
use serde_json::{Value, json};
use tokio::time::Instant;

const HB: Duration = Duration::from_secs(1);

/// `croupier agents --json`'s entry for `id`.
fn agent_json(mesh: &Mesh, id: &str) -> Value {
    let (code, out, err) = mesh.cli("client-c1", &["agents", "--json"]);
    assert_eq!(code, 0, "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    all["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn set_state(mesh: &Mesh, id: &str, state: &str) -> Value {
    let (code, out, err) = mesh.cli(
        "admin-ops",
        &["node", "state", id, state, "--reason", "test", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn a_connected_agent_applies_and_acknowledges_at_once() {
    let mesh = Mesh::start(&["a1"], HB);
    let _agent = mesh.agent_with("a1", &[], &["--packs", "none"]);
    mesh.wait_online(&["a1"]).await;
    let r = set_state(&mesh, "a1", "maintenance");
    assert_eq!(r["delivery"], "applied", "{r}");
    assert!(r["applied_at"].as_i64().unwrap() >= r["changed_at"].as_i64().unwrap());
    let a = agent_json(&mesh, "a1");
    assert_eq!(a["node_state"], "maintenance");
    assert!(a["node_applied_at"].as_i64().unwrap() > 0, "{a}");
    let (_, table, _) = mesh.cli("client-c1", &["agents"]);
    assert!(!table.contains("(pending)"), "{table}");
    let (code, out, err) = mesh.cli(
        "client-c1",
        &["events", "--json", "--node", "a1", "--type", "node.state."],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node.state.applied"), "{out}");
}

#[tokio::test]
async fn a_change_to_an_agent_offline_applies_when_it_returns() {
    let mesh = Mesh::start(&["a2"], HB);
    let agent = mesh.agent_with("a2", &[], &["--packs", "none"]);
    mesh.wait_online(&["a2"]).await;
    agent.signal(9);
    drop(agent);
    // The tunnel goes at once; the registration lingers until heartbeats are missed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent_json(&mesh, "a2")["online"] == true {
        assert!(Instant::now() < deadline, "the tunnel did not close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = set_state(&mesh, "a2", "maintenance");
    assert_eq!(r["applied_at"], 0, "{r}");
    assert!(
        r["delivery"]
            .as_str()
            .unwrap()
            .starts_with("pending: agent offline"),
        "{r}"
    );
    let (_, table, _) = mesh.cli("client-c1", &["agents"]);
    assert!(table.contains("maintenance (pending)"), "{table}");

    let _back = mesh.agent_with("a2", &[], &["--packs", "none"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = agent_json(&mesh, "a2");
        if a["online"] == true && a["node_applied_at"].as_i64().unwrap_or(0) > 0 {
            assert_eq!(a["node_state"], "maintenance");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not applied after reconnecting: {a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back to normal, the agent that registered in maintenance takes calls again.
    let r = set_state(&mesh, "a2", "normal");
    assert_eq!(r["delivery"], "applied", "{r}");
    let client = mesh.client("client-c1").await;
    let answer = client
        .invoke("agent.ping", json!({}), &common::opts())
        .await
        .unwrap();
    assert!(answer.success, "{} {}", answer.error_code, answer.error);
    assert_eq!(answer.agent_id, "a2");
}

#[tokio::test]
async fn disabling_a_node_fails_its_calls_in_flight() {
    let mesh = Mesh::start(&["a3"], HB);
    let _agent = mesh.agent_with("a3", &[], &["--packs", "none"]);
    mesh.wait_online(&["a3"]).await;
    let client = mesh.client("client-c1").await;
    let call = croupier_proto::task::spawn("sleeping call", async move {
        let opts = common::opts().timeout(Duration::from_secs(60));
        client
            .invoke("agent.sleep", json!({"ms": 50_000}), &opts)
            .await
    });
    mesh.wait_in_flight("a3", 1).await;
    let started = Instant::now();
    let r = set_state(&mesh, "a3", "disabled");
    assert_eq!(r["delivery"], "applied", "{r}");
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends when the node is disabled")
        .unwrap()
        .unwrap();
    assert!(!answer.success);
    assert_eq!(answer.error_code, "NODE_DISABLED", "{answer:?}");
    assert!(answer.error.contains("disabled by"), "{}", answer.error);
    assert!(started.elapsed() < Duration::from_secs(10));
}
