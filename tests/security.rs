//! End-to-end: mTLS and identities — plaintext and unknown-CA clients are refused, agent and
//! client certificates can only do what their role allows, and node states gate work.

mod common;

use std::time::Duration;

use common::{Mesh, opts};
use croupier_proto::common::v1::NodeState;
use croupier_proto::control::v1::RegisterAgentRequest;
use croupier_sdk::TlsFiles;
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_unknown_ca_clients_are_refused() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    let addr = mesh.url.trim_start_matches("https://").to_string();

    // Plaintext HTTP/2 to the TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut reg =
            croupier_proto::registry::v1::registry_service_client::RegistryServiceClient::new(ch);
        let e = reg
            .get_registrations(croupier_proto::registry::v1::GetRegistrationsRequest::default())
            .await
            .unwrap_err();
        // The TLS port answers plaintext HTTP/2 with a protocol error and no data.
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown
            ),
            "{e:?}"
        );
    }

    // A client certificate from another CA (trusting the real server).
    let other = tempfile::tempdir().unwrap();
    common::certs(other.path(), &[]);
    let tls = TlsFiles {
        ca: mesh.certs().join("ca.pem"),
        cert: other.path().join("client-c1.pem"),
        key: other.path().join("client-c1.key"),
    };
    match croupier_sdk::Client::connect(&mesh.url, &tls).await {
        Err(e) => assert!(e.to_string().contains("connecting"), "{e}"),
        Ok(c) => {
            // TLS 1.3: the server's refusal of the client certificate arrives after the
            // client's handshake, as a closed connection on the first call.
            let e = c.agents("", "").await.unwrap_err();
            assert!(
                matches!(
                    e.code(),
                    Code::Unavailable | Code::Cancelled | Code::Unknown
                ),
                "{e:?}"
            );
        }
    }

    // The CLI with that certificate: unreachable (exit 5), saying the server refused it, at
    // once: in TLS 1.3 the refusal arrives as a fatal alert on the first call, which no retry
    // changes (five attempts would open the circuit breaker and log a warning).
    let mixed = tempfile::tempdir().unwrap();
    std::fs::copy(mesh.certs().join("ca.pem"), mixed.path().join("ca.pem")).unwrap();
    for f in ["client-c1.pem", "client-c1.key"] {
        std::fs::copy(other.path().join(f), mixed.path().join(f)).unwrap();
    }
    let out = std::process::Command::new(common::bin())
        .args(["agents", "--server", &mesh.url, "--tls-dir"])
        .arg(mixed.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("refused this client certificate"), "{err}");
    assert!(!err.contains("circuit opened"), "retried: {err}");

    // The real client still works.
    let c = mesh.client("client-c1").await;
    c.agents("", "").await.unwrap();
}

fn register(agent_id: &str) -> RegisterAgentRequest {
    RegisterAgentRequest {
        agent_id: agent_id.into(),
        game_id: "g".into(),
        env: "e".into(),
        functions: vec!["x.y".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_enforced() {
    let mesh = Mesh::start(&["a1", "a2"], Duration::from_secs(5));
    let a1 = mesh.client("agent-a1").await;
    let e = a1
        .control_service()
        .register_agent(register("a2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("spiffe://croupier/agent/a1") && e.message().contains("\"a2\""),
        "{}",
        e.message()
    );
    let client = mesh.client("client-c1").await;
    let e = client
        .control_service()
        .register_agent(register("a1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("spiffe://croupier/client/c1"),
        "{}",
        e.message()
    );
    let e = client
        .set_node_state("a1", NodeState::Maintenance, "nope")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("admin"), "{}", e.message());
    let e = a1
        .set_node_state("a1", NodeState::Disabled, "nope")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // An agent registering as itself is fine; bad ids are INVALID_ARGUMENT.
    a1.control_service()
        .register_agent(register("a1"))
        .await
        .unwrap();
    let mut bad = register("a1");
    bad.game_id = "../etc".into();
    let e = a1.control_service().register_agent(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("game_id"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_states_gate_work() {
    let mesh = Mesh::start(&["a1"], Duration::from_millis(500));
    let agent = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let c = mesh.client("client-c1").await;
    let admin = mesh.client("admin-ops").await;

    let rec = admin
        .set_node_state("a1", NodeState::Maintenance, "kernel upgrade")
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(rec.actor, "spiffe://croupier/admin/ops");
    let e = c
        .invoke("agent.ping", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("maintenance") && e.message().contains("kernel upgrade"),
        "{}",
        e.message()
    );
    let listed = c.agents("g", "e").await.unwrap();
    let node = listed[0].node_state.clone().unwrap();
    assert_eq!(node.state, NodeState::Maintenance as i32);
    assert_eq!(node.reason, "kernel upgrade");

    admin
        .set_node_state("a1", NodeState::Normal, "done")
        .await
        .unwrap();
    assert!(
        c.invoke("agent.ping", json!({}), &opts())
            .await
            .unwrap()
            .success
    );

    // Disabled: the agent's next registration is refused with a clear error.
    admin
        .set_node_state("a1", NodeState::Disabled, "retired")
        .await
        .unwrap();
    agent.signal(9);
    mesh.wait_gone("a1", Duration::from_secs(10)).await;
    let a1 = mesh.client("agent-a1").await;
    let e = a1
        .control_service()
        .register_agent(register("a1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("disabled") && e.message().contains("retired"),
        "{}",
        e.message()
    );
    admin
        .set_node_state("a1", NodeState::Normal, "back")
        .await
        .unwrap();
    let _agent = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
}
