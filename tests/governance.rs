//! End-to-end governance with real processes and certificates: scoped agents and clients,
//! revoked certificates, who reads a job, and an agent that tries to loosen a function's `auth`.

mod common;

use std::time::{Duration, Instant};

use common::raw_agent::{RawAgent, descriptor};
use common::{Mesh, certs_cmd, opts};
use croupier_proto::common::v1::{ApprovalConfig, AuthConfig, FunctionDescriptor};
use croupier_proto::control::v1::RegisterAgentRequest;
use croupier_proto::function::v1::ListJobsRequest;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

/// Issues more certificates into the mesh's directory with `croupier certs init`.
fn issue(mesh: &Mesh, args: &[&str]) {
    certs_cmd(&mesh.certs(), "init", args);
}

/// The ids of the agents `client` sees.
async fn agent_ids(client: &croupier_sdk::Client) -> Vec<String> {
    let agents = client.agents("", "").await.unwrap();
    agents.into_iter().map(|a| a.agent_id).collect()
}

fn registration(agent: &str, game: &str, env: &str) -> RegisterAgentRequest {
    RegisterAgentRequest {
        agent_id: agent.into(),
        game_id: game.into(),
        env: env.into(),
        functions: vec!["x.y".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_certificates_keep_agents_and_clients_in_their_game() {
    let mesh = Mesh::start(&[], Duration::from_secs(5));
    issue(&mesh, &["--agent", "ga", "--scope", "g/e"]);
    issue(
        &mesh,
        &["--agent", "hb", "--client", "hc", "--scope", "h/*"],
    );

    // An agent of game h cannot register in game g; the refusal names its scope.
    let hb = mesh.client("agent-hb").await;
    let err = hb
        .control_service()
        .register_agent(registration("hb", "g", "e"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("scoped to h/*"), "{}", err.message());
    assert!(err.message().contains("--scope g/e"), "{}", err.message());
    // In its own game it may.
    hb.control_service()
        .register_agent(registration("hb", "h", "live"))
        .await
        .unwrap();

    // The g-scoped agent process serves game g.
    let _ga = mesh.agent("ga", &[]);
    mesh.wait_online(&["ga"]).await;

    // An unscoped client sees both games; the h-scoped client sees only h and cannot call g.
    let c1 = mesh.client("client-c1").await;
    let all = agent_ids(&c1).await;
    assert!(
        all.contains(&"ga".to_string()) && all.contains(&"hb".to_string()),
        "{all:?}"
    );
    let hc = mesh.client("client-hc").await;
    assert_eq!(agent_ids(&hc).await, ["hb"]);
    let regs = hc.registrations("", "", "").await.unwrap();
    let seen: Vec<(&str, &str)> = regs
        .registrations
        .iter()
        .map(|r| (r.game_id.as_str(), r.function_id.as_str()))
        .collect();
    assert_eq!(seen, [("h", "x.y")], "the h client sees h's function only");
    let all = c1.registrations("", "", "").await.unwrap();
    assert!(
        all.registrations.iter().any(|r| r.game_id == "g"),
        "the unscoped client sees g's functions"
    );
    let err = hc
        .invoke("agent.ping", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("scoped to h/*"), "{}", err.message());
    c1.invoke("agent.ping", json!({}), &opts()).await.unwrap();

    // certs list shows the scopes.
    let listed = certs_cmd(&mesh.certs(), "list", &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    let hc_cert = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == "client-hc.pem")
        .unwrap();
    assert_eq!(hc_cert["scopes"], json!(["h/*"]));
    assert_eq!(hc_cert["identity"], "spiffe://croupier/client/hc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_read_by_their_caller_or_an_admin_and_revoked_certificates_are_refused() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    issue(&mesh, &["--client", "c2"]);
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;

    let c1 = mesh.client("client-c1").await;
    let job = c1
        .start_job("agent.countdown", json!({"steps": 2, "ms": 10}), &opts())
        .await
        .unwrap();
    let id = job.id().to_string();
    let c2 = mesh.client("client-c2").await;
    let err = c2.get_job(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("spiffe://croupier/client/c1"),
        "{}",
        err.message()
    );
    let err = c2.cancel_job(&id, "not mine").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut follow = c2
        .function_service()
        .stream_job_events(croupier_proto::function::v1::StreamJobEventsRequest {
            job_id: id.clone(),
            from_seq: 0,
            ..Default::default()
        })
        .await;
    if let Ok(stream) = &mut follow {
        let first = stream.get_mut().message().await;
        assert!(
            matches!(&first, Err(s) if s.code() == Code::PermissionDenied),
            "{first:?}"
        );
    } else {
        assert_eq!(follow.unwrap_err().code(), Code::PermissionDenied);
    }
    let listed = c2.list_jobs(ListJobsRequest::default()).await.unwrap();
    assert!(
        listed.jobs.iter().all(|j| j.job_id != id),
        "c2 listed c1's job"
    );
    // The caller and an admin read it.
    assert_eq!(c1.get_job(&id).await.unwrap().job_id, id);
    let admin = mesh.client("admin-ops").await;
    assert_eq!(admin.get_job(&id).await.unwrap().job_id, id);
    let listed = c1.list_jobs(ListJobsRequest::default()).await.unwrap();
    assert!(listed.jobs.iter().any(|j| j.job_id == id));

    // Revoke c2: within the reload interval its calls are refused, saying why; c1 goes on.
    c2.agents("", "").await.unwrap();
    certs_cmd(&mesh.certs(), "revoke", &["client-c2"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let err = loop {
        match c2.agents("", "").await {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => panic!("the revoked certificate is still accepted"),
        }
    };
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("is revoked"), "{}", err.message());
    c1.agents("", "").await.unwrap();

    // Revoking an agent closes the tunnel it opened before: calls stop reaching it at once,
    // without waiting for it to reconnect or miss heartbeats.
    c1.invoke("agent.ping", json!({}), &opts()).await.unwrap();
    certs_cmd(&mesh.certs(), "revoke", &["agent-a1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let err = loop {
        match c1.invoke("agent.ping", json!({}), &opts()).await {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => panic!("the revoked agent's tunnel still serves calls"),
        }
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        mesh.server_log()
            .contains("closing a tunnel: its certificate was revoked"),
        "{}",
        mesh.server_log()
    );
}

fn guarded(id: &str, roles: &[&str]) -> FunctionDescriptor {
    FunctionDescriptor {
        auth: Some(AuthConfig {
            allowed_roles: roles.iter().map(ToString::to_string).collect(),
            sensitive_fields: vec!["password".into()],
            ..Default::default()
        }),
        ..descriptor(id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_redeclares_a_function_open_does_not_open_it() {
    let mesh = Mesh::start(&["a1", "a2"], Duration::from_millis(500));
    let a1 = RawAgent::connect(&mesh, "a1", vec![guarded("vault.get", &["admin"])]).await;
    drop(a1);
    mesh.wait_gone("a1", Duration::from_secs(10)).await;

    // a1 is gone; a2 declares the function with an open auth. The registration goes through
    // (a2 may serve it), but the descriptor keeps who may call.
    let _a2 = RawAgent::connect(&mesh, "a2", vec![guarded("vault.get", &[])]).await;
    let c1 = mesh.client("client-c1").await;
    let regs = c1.registrations("g", "e", "vault.get").await.unwrap();
    let d = regs.registrations[0].function_descriptor.clone().unwrap();
    assert_eq!(d.auth.unwrap().allowed_roles, ["admin"]);
    let err = c1
        .invoke("vault.get", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // RegisterFunction from a2 with an open auth does not open it either.
    let a2c = mesh.client("agent-a2").await;
    a2c.register_function("g", "e", guarded("vault.get", &[]))
        .await
        .unwrap();
    let err = c1
        .invoke("vault.get", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // An admin can open it.
    let admin = mesh.client("admin-ops").await;
    admin
        .register_function("g", "e", guarded("vault.get", &["admin", "client"]))
        .await
        .unwrap();
    let regs = c1.registrations("g", "e", "vault.get").await.unwrap();
    let d = regs.registrations[0].function_descriptor.clone().unwrap();
    assert_eq!(d.auth.unwrap().allowed_roles, ["admin", "client"]);

    // An admin's descriptor asks for an admin's approval; the agent cannot drop it.
    let mut approved = guarded("vault.get", &["admin", "client"]);
    approved.auth.as_mut().unwrap().approval = Some(ApprovalConfig {
        approvers: "admin".into(),
        count: 1,
        ttl: "5m".into(),
    });
    admin.register_function("g", "e", approved).await.unwrap();
    let err = a2c
        .register_function("g", "e", guarded("vault.get", &["admin", "client"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("an admin registered its descriptor"));
    let err = c1
        .invoke("vault.get", json!({"password": "hunter2"}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "APPROVAL_REQUIRED");
    // The approver sees the payload with its sensitive field masked.
    let pending = admin.approval(&info.metadata["approval_id"]).await.unwrap();
    let payload = croupier_proto::json::opt_struct_to_json(pending.payload.as_ref());
    assert_eq!(payload, json!({"password": "***"}));
    assert_eq!(pending.rule, "the descriptor of vault.get");
}
