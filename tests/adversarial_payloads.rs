//! Adversarial payloads: one caller's bad call fails that call only, with a clear status, and
//! never the agents' tunnels or other callers' calls in flight on them.

mod common;

use std::time::Duration;

use common::raw_agent::{RawAgent, descriptor};
use common::{Mesh, opts};
use croupier_proto::control::v1::{InvokeResult, agent_frame};
use croupier_proto::json::json_to_struct;
use croupier_sdk::CallOptions;
use serde_json::json;
use tonic::Code;

/// `{"a": {"a": … 1}}` nested `depth` objects deep.
fn nested(depth: usize) -> serde_json::Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!({ "a": v });
    }
    v
}

fn broadcast() -> CallOptions {
    CallOptions {
        routing: "broadcast".into(),
        ..opts()
    }
}

/// Starts a 1.5 s `agent.sleep` on every agent (broadcast), as another caller's work in flight.
fn sleeper(mesh: &Mesh) -> tokio::task::JoinHandle<Result<(bool, usize), tonic::Status>> {
    let url = mesh.url.clone();
    let certs = mesh.certs();
    croupier_proto::task::spawn("sleeper", async move {
        let c = croupier_sdk::Client::connect(
            &url,
            &croupier_sdk::TlsFiles::from_dir(&certs, "client-c1"),
        )
        .await
        .unwrap();
        let r = c
            .invoke("agent.sleep", json!({"ms": 1500}), &broadcast())
            .await?;
        Ok((r.success, r.results.len()))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_too_deep_fails_its_call_and_no_tunnel() {
    let mesh = Mesh::start(&["a1", "a2"], Duration::from_secs(1));
    let _a1 = mesh.agent("a1", &[]);
    let _a2 = mesh.agent("a2", &[]);
    mesh.wait_online(&["a1", "a2"]).await;
    let client = mesh.client("client-c1").await;
    let in_flight = sleeper(&mesh);
    mesh.wait_in_flight("a1", 1).await;
    mesh.wait_in_flight("a2", 1).await;

    // One level past the limit: refused at the edge, naming it.
    let err = client
        .invoke("agent.ping", nested(33), &broadcast())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("32 levels"), "{}", err.message());

    // At the limit the call goes through; agent.ping's echo nests one level deeper than the
    // payload, so each agent refuses its own result (the caller could not decode it) and says so.
    let r = client
        .invoke("agent.ping", nested(32), &broadcast())
        .await
        .unwrap();
    assert_eq!(r.results.len(), 2);
    for a in &r.results {
        assert!(!a.success);
        assert_eq!(a.error_code, "RESULT_REFUSED", "{a:?}");
    }
    // One level less echoes fine.
    let r = client
        .invoke("agent.ping", nested(31), &broadcast())
        .await
        .unwrap();
    assert!(r.success, "{r:?}");

    // The other caller's calls, in flight on both tunnels all along, complete.
    let (ok, n) = in_flight.await.unwrap().expect("the sleeper's call");
    assert!(ok && n == 2, "in-flight calls failed: ok={ok} results={n}");
    for id in ["a1", "a2"] {
        assert!(
            !mesh.agent_log(id).contains("tunnel lost"),
            "agent {id} lost its tunnel:\n{}",
            mesh.agent_log(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_at_the_message_limit_fails_its_call_and_no_tunnel() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(1));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let in_flight = sleeper(&mesh);
    mesh.wait_in_flight("a1", 1).await;

    // Just under the 10 MiB message limit: the request decodes, but its Invoke frame would not
    // fit in the agent's limit. Refused before anything is sent.
    let big = json!({ "s": "x".repeat(10 * 1024 * 1024 - 200) });
    let err = client.invoke("agent.ping", big, &opts()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("frame around it"),
        "{}",
        err.message()
    );

    let (ok, _) = in_flight.await.unwrap().expect("the sleeper's call");
    assert!(ok, "the call in flight failed");
    let r = client
        .invoke("agent.ping", json!({}), &opts())
        .await
        .unwrap();
    assert!(r.success);
    assert!(!mesh.agent_log("a1").contains("tunnel lost"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_answer_fails_its_call_and_the_tunnel_serves_the_next() {
    let mesh = Mesh::start(&["raw"], Duration::from_secs(5));
    let mut raw = RawAgent::connect(&mesh, "raw", vec![descriptor("raw.echo")]).await;
    mesh.wait_online(&["raw"]).await;

    // The agent answers with a result nested 60 levels deep: more than the server's decoder
    // takes. That frame fails its call only.
    let call = {
        let c = mesh.client("client-c1").await;
        croupier_proto::task::spawn(
            "an_undecodable_answer_fails_its_call_and_the_tunnel_serves_the_next",
            async move { c.invoke("raw.echo", json!({}), &opts()).await },
        )
    };
    let inv = raw.next_invoke(Duration::from_secs(10)).await;
    raw.send(agent_frame::Frame::Result(InvokeResult {
        request_id: inv.request_id.clone(),
        success: true,
        result: Some(json_to_struct(&nested(60))),
        ..Default::default()
    }))
    .await;
    let r = call.await.unwrap().unwrap();
    assert!(!r.success);
    assert_eq!(r.error_code, "UNDECODABLE", "{r:?}");
    assert!(r.error.contains("could not be decoded"), "{}", r.error);

    // The same tunnel serves the next call.
    let call = {
        let c = mesh.client("client-c1").await;
        croupier_proto::task::spawn(
            "an_undecodable_answer_fails_its_call_and_the_tunnel_serves_the_next",
            async move { c.invoke("raw.echo", json!({}), &opts()).await },
        )
    };
    let inv = raw.next_invoke(Duration::from_secs(10)).await;
    raw.answer(&inv.request_id, json!({"fine": true})).await;
    let r = call.await.unwrap().unwrap();
    assert!(r.success, "{r:?}");
    assert_eq!(
        croupier_proto::json::opt_struct_to_json(r.result.as_ref()),
        json!({"fine": true})
    );
}
