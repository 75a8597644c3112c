//! Idempotency when the first execution outlives its deadline: the key stays claimed while the
//! agent still runs the call, a repeat never starts a second execution, and the outcome the
//! agent finally reports is what later repeats get.

mod common;

use std::time::Duration;

use common::raw_agent::{RawAgent, descriptor};
use common::{Mesh, opts};
use croupier_proto::control::v1::server_frame::Frame;
use croupier_sdk::CallOptions;
use serde_json::json;
use tonic::Code;

fn keyed() -> CallOptions {
    CallOptions {
        idempotency_key: "order-17".into(),
        timeout: Some(Duration::from_secs(1)),
        ..opts()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_whose_first_execution_still_runs_never_starts_a_second() {
    let mesh = Mesh::start(&["raw"], Duration::from_secs(5));
    // An agent whose handler does not stop when cancelled (a thread that cannot be
    // interrupted, a side effect already under way).
    let mut raw = RawAgent::connect(&mesh, "raw", vec![descriptor("slow.op")]).await;
    mesh.wait_online(&["raw"]).await;
    let c1 = mesh.client("client-c1").await;

    let first = {
        let c = mesh.client("client-c1").await;
        croupier_proto::task::spawn(
            "a_key_whose_first_execution_still_runs_never_starts_a_second",
            async move { c.invoke("slow.op", json!({"n": 1}), &keyed()).await },
        )
    };
    let inv = raw.next_invoke(Duration::from_secs(10)).await;
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The server told the agent to stop; the agent goes on anyway.
    match raw.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Cancel(c)) => assert_eq!(c.request_id, inv.request_id),
        other => panic!("expected the first call's Cancel, got {other:?}"),
    }

    // A repeat while it runs: no second execution; the caller is told it still runs.
    let err = c1
        .invoke("slow.op", json!({"n": 1}), &keyed())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("still running"), "{}", err.message());
    if let Some(Frame::Invoke(second)) = raw.next_frame(Duration::from_millis(300)).await {
        panic!("a second execution started: {second:?}");
    }

    // The first execution ends after all: its outcome is stored and repeats get it.
    raw.answer(&inv.request_id, json!({"charged": 17})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let replay = loop {
        match c1.invoke("slow.op", json!({"n": 1}), &keyed()).await {
            Ok(r) => break r,
            Err(e) if e.code() == Code::Aborted && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(replay.success);
    assert_eq!(
        croupier_proto::json::opt_struct_to_json(replay.result.as_ref()),
        json!({"charged": 17})
    );
    if let Some(Frame::Invoke(again)) = raw.next_frame(Duration::from_millis(300)).await {
        panic!("the function ran again: {again:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_execution_that_was_cancelled_frees_the_key() {
    let mesh = Mesh::start(&["raw"], Duration::from_secs(5));
    let mut raw = RawAgent::connect(&mesh, "raw", vec![descriptor("slow.op")]).await;
    mesh.wait_online(&["raw"]).await;
    let c1 = mesh.client("client-c1").await;
    let first = {
        let c = mesh.client("client-c1").await;
        croupier_proto::task::spawn(
            "a_first_execution_that_was_cancelled_frees_the_key",
            async move { c.invoke("slow.op", json!({}), &keyed()).await },
        )
    };
    let inv = raw.next_invoke(Duration::from_secs(10)).await;
    assert_eq!(
        first.await.unwrap().unwrap_err().code(),
        Code::DeadlineExceeded
    );
    // This agent does stop, and says so: the key is free again, and a repeat executes.
    raw.send(croupier_proto::control::v1::agent_frame::Frame::Result(
        croupier_proto::control::v1::InvokeResult {
            request_id: inv.request_id.clone(),
            success: false,
            error: "cancelled".into(),
            error_code: "CANCELLED".into(),
            ..Default::default()
        },
    ))
    .await;
    let second = {
        let c = c1.clone();
        croupier_proto::task::spawn(
            "a_first_execution_that_was_cancelled_frees_the_key",
            async move {
                c.invoke(
                    "slow.op",
                    json!({}),
                    &CallOptions {
                        timeout: Some(Duration::from_secs(10)),
                        ..keyed()
                    },
                )
                .await
            },
        )
    };
    let again = raw.next_invoke(Duration::from_secs(10)).await;
    assert_ne!(again.request_id, inv.request_id);
    raw.answer(&again.request_id, json!({"ran": 2})).await;
    let r = second.await.unwrap().unwrap();
    assert!(r.success, "{r:?}");
}
