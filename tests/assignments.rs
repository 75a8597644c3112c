//! End-to-end: function assignments through real `croupier server` and `croupier agent`
//! processes over mTLS:
//! - a selector assignment disabling `agent.ping` on the `region=eu` agent routes every call
//!   to the other agent, refuses a call targeted at it with a message naming the assignment,
//!   and `GetAssignments` says so; deleting it brings the agent back;
//! - an agent's own assignment beats the selector one, and its config reaches the handler;
//! - the agents are told over the tunnel and fetch their assignments again;
//! - only admins (the policy's `assign`) change assignments; everyone lists them.

mod common;

use std::time::Duration;

use common::{Mesh, opts};
use croupier_proto::control::v1::GetAssignmentsRequest;
use croupier_proto::json::opt_struct_to_json;
use croupier_sdk::{CallOptions, Client};
use serde_json::{Value, json};
use tokio::time::Instant;

const HB: Duration = Duration::from_secs(1);

/// `croupier assign …` as `identity`: (exit code, stdout, stderr).
fn assign(mesh: &Mesh, identity: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["assign"];
    all.extend_from_slice(args);
    mesh.cli(identity, &all)
}

/// Pings `n` times with least-loaded routing; the agents that answered.
async fn pingers(client: &Client, n: usize) -> Vec<String> {
    let mut who = Vec::new();
    for i in 0..n {
        let r = client
            .invoke("agent.ping", json!({"i": i}), &opts())
            .await
            .unwrap();
        assert!(r.success, "{} {}", r.error_code, r.error);
        who.push(r.agent_id);
    }
    who
}

async fn ping_on(client: &Client, agent: &str) -> Result<Value, tonic::Status> {
    let mut o: CallOptions = opts();
    o.routing = "targeted".into();
    o.target = agent.into();
    let r = client.invoke("agent.ping", json!({}), &o).await?;
    assert!(r.success, "{} {}", r.error_code, r.error);
    Ok(opt_struct_to_json(r.result.as_ref()))
}

#[tokio::test]
async fn assignments_disable_and_configure_functions_per_agent_and_selector() {
    let mesh = Mesh::start(&["eu1", "us1"], HB);
    let _eu = mesh.agent_with("eu1", &["region=eu"], &["--packs", "none"]);
    let _us = mesh.agent_with("us1", &["region=us"], &["--packs", "none"]);
    mesh.wait_online(&["eu1", "us1"]).await;
    let client = mesh.client("client-c1").await;

    // Clients may not change assignments.
    let (code, _, err) = assign(
        &mesh,
        "client-c1",
        &[
            "set",
            "x",
            "--function",
            "agent.ping",
            "--game-id",
            "g",
            "--env",
            "e",
            "--agent",
            "eu1",
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("may not change assignments"), "{err}");

    let (code, out, err) = assign(
        &mesh,
        "admin-ops",
        &[
            "set",
            "eu-off",
            "--function",
            "agent.ping",
            "--game-id",
            "g",
            "--env",
            "e",
            "--selector",
            "region=eu",
            "--disable",
            "--reason",
            "bad build in eu",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let stored: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stored["enabled"], false);
    assert!(stored["actor"].as_str().unwrap().contains("admin/ops"));

    // Routing goes around eu1; a call aimed at it says why.
    let who = pingers(&client, 8).await;
    assert!(who.iter().all(|a| a == "us1"), "{who:?}");
    let e = ping_on(&client, "eu1").await.unwrap_err();
    assert!(
        e.message().contains("disabled on it by assignment eu-off"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("bad build in eu"), "{}", e.message());

    // GetAssignments (as an admin) says the same.
    let admin = mesh.client("admin-ops").await;
    let got = admin
        .control_service()
        .get_assignments(GetAssignmentsRequest {
            agent_id: "eu1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ping = got
        .assignments
        .iter()
        .find(|a| a.function_id == "agent.ping")
        .unwrap();
    assert!(!ping.enabled);
    assert_eq!(ping.assignment_ids, ["eu-off"]);
    assert_ne!(got.version, 0);

    // The agent's own assignment beats the selector, and its config reaches the handler.
    let (code, _, err) = assign(
        &mesh,
        "admin-ops",
        &[
            "set",
            "eu1-canary",
            "--function",
            "agent.ping",
            "--game-id",
            "g",
            "--env",
            "e",
            "--agent",
            "eu1",
            "--config",
            "level=3",
            "--config",
            "mode=canary",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r = ping_on(&client, "eu1").await.unwrap();
    assert_eq!(r["config"], json!({"level": "3", "mode": "canary"}), "{r}");
    let r = ping_on(&client, "us1").await.unwrap();
    assert_eq!(r["config"], json!({}), "{r}");

    // The agents were told over the tunnel and fetched their assignments again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mesh.agent_log("eu1").contains("assignments changed") {
        assert!(
            Instant::now() < deadline,
            "eu1 was not told: {}",
            mesh.agent_log("eu1")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Listing: everyone; filtered by agent.
    let (code, out, err) = assign(&mesh, "client-c1", &["list", "--agent", "us1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["assignments"].as_array().unwrap().len(), 0, "{list}");
    let (code, out, _) = assign(&mesh, "client-c1", &["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("eu-off") && out.contains("eu1-canary"),
        "{out}"
    );

    // Deleting both: eu1 takes calls again, with no config.
    for id in ["eu1-canary", "eu-off"] {
        let (code, out, err) = assign(&mesh, "admin-ops", &["delete", id, "--json"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("\"deleted\":true"), "{out}");
    }
    let r = ping_on(&client, "eu1").await.unwrap();
    assert_eq!(r["config"], json!({}));
    let (code, out, _) = assign(&mesh, "admin-ops", &["delete", "eu-off"]);
    assert_eq!(code, 0);
    assert!(out.contains("no assignment eu-off"), "{out}");
}
