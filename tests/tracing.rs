//! Spans over OTLP, end to end: a real server and agent export to an OTLP gRPC receiver run by
//! the test (the trace service of `opentelemetry-proto`), and one call from the CLI makes one
//! trace whose spans cover the server and the agent with the right parent links.

mod common;

use std::time::Duration;

use common::Mesh;
use common::otlp::{one, receiver};

#[tokio::test(flavor = "multi_thread")]
async fn one_cli_call_is_one_trace_across_server_and_agent() {
    let (rx, endpoint) = receiver().await;
    let mesh = Mesh::start_with(
        &["a1"],
        Duration::from_secs(5),
        &[],
        &["--otlp-endpoint", &endpoint],
    );
    let _agent = mesh.agent_with(
        "a1",
        &[],
        &["--packs", "none", "--otlp-endpoint", &endpoint],
    );
    mesh.wait_online(&["a1"]).await;

    let game = ["--game-id", "g", "--env", "e"];
    let (code, out, err) = mesh.cli(
        "client-c1",
        &[&["invoke", "agent.ping", "--payload", "{}"][..], &game].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let trace = rx.trace_of("agent.ping").await;
    let spans = rx
        .trace(&trace, &["InvokeFunction", "route", "handler"])
        .await;
    let server = one(&spans, "InvokeFunction");
    let route = one(&spans, "route");
    let handler = one(&spans, "handler");
    // The CLI sent no context: the server's span is the root.
    assert_eq!(server.parent, "", "{server:?}");
    assert_eq!(server.service, "croupier-server");
    assert_eq!(route.parent, server.span_id, "{route:?}");
    assert_eq!(route.service, "croupier-server");
    assert_eq!(handler.parent, route.span_id, "{handler:?}");
    assert_eq!(handler.service, "croupier-agent");
    assert!(
        handler
            .attributes
            .contains(&("croupier.agent_id".into(), "a1".into())),
        "{handler:?}"
    );
    assert!(
        !server.failed && !route.failed && !handler.failed,
        "{spans:#?}"
    );

    // A caller's own context is continued, and a call that fails (past its deadline) marks
    // its spans failed.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let c1 = mesh.client("client-c1").await;
    let late = croupier_proto::trace::scope(parent.to_string(), async {
        c1.invoke(
            "agent.sleep",
            serde_json::json!({"ms": 5000}),
            &croupier_sdk::CallOptions {
                timeout: Some(Duration::from_secs(1)),
                ..common::opts()
            },
        )
        .await
    })
    .await
    .unwrap_err();
    assert_eq!(late.code(), tonic::Code::DeadlineExceeded, "{late:?}");
    let spans = rx
        .trace(
            "0af7651916cd43dd8448eb211c80319c",
            &["InvokeFunction", "route", "handler"],
        )
        .await;
    let server = one(&spans, "InvokeFunction");
    assert_eq!(server.parent, "b7ad6b7169203331", "{server:?}");
    for name in ["InvokeFunction", "route", "handler"] {
        assert!(
            one(&spans, name).failed,
            "{name} not marked failed: {spans:#?}"
        );
    }
}
