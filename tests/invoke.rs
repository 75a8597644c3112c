//! End-to-end: invocation through real server and agent processes — round trip, every routing
//! mode, idempotency, payload validation and the error statuses.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Mesh, opts};
use croupier_proto::json::opt_struct_to_json;
use serde_json::json;
use tonic::Code;

const HB: Duration = Duration::from_secs(5);

/// A server with agent a1 online, and a client.
async fn one_agent() -> (Mesh, common::Proc, croupier_sdk::Client) {
    let mesh = Mesh::start(&["a1"], HB);
    let a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let c = mesh.client("client-c1").await;
    (mesh, a1, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_goes_to_the_agent_and_its_answer_comes_back() {
    let (_mesh, _a1, c) = one_agent().await;
    let r = c
        .invoke("agent.ping", json!({"hello": "world"}), &opts())
        .await
        .unwrap();
    assert!(r.success, "{r:?}");
    assert_eq!(r.agent_id, "a1");
    let out = opt_struct_to_json(r.result.as_ref());
    assert_eq!(out["agent_id"], "a1");
    assert_eq!(out["payload"], json!({"hello": "world"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_fails_the_schema_is_invalid_argument_naming_the_field() {
    let (_mesh, _a1, c) = one_agent().await;
    let e = c
        .invoke("agent.sleep", json!({"ms": "abc"}), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("/ms"), "{}", e.message());
    let e = c
        .invoke("agent.sleep", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("\"ms\""), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_functions_malformed_ids_and_modes_say_what_to_fix() {
    let (_mesh, _a1, c) = one_agent().await;
    let e = c
        .invoke("no.such.function", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no.such.function"));
    let e = c.invoke("bad/id", json!({}), &opts()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("function_id"), "{}", e.message());
    let mut o = opts();
    o.routing = "nearest".into();
    let e = c.invoke("agent.ping", json!({}), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nearest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_cancels_the_handler_and_the_mesh_carries_on() {
    let (_mesh, _a1, c) = one_agent().await;
    let mut o = opts();
    o.timeout = Some(Duration::from_secs(1));
    let t = std::time::Instant::now();
    let e = c
        .invoke("agent.sleep", json!({"ms": 10_000}), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let r = c
        .invoke("agent.sleep", json!({"ms": 10}), &opts())
        .await
        .unwrap();
    assert!(r.success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_no_agent_provides_is_unavailable() {
    let (mesh, _a1, c) = one_agent().await;
    let admin = mesh.client("admin-ops").await;
    admin
        .register_function(
            "g",
            "e",
            croupier_proto::common::v1::FunctionDescriptor {
                id: "player.ban".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = c
        .invoke("player.ban", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("no agent provides player.ban"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_modes() {
    let mesh = Mesh::start(&["a1", "a2", "a3"], HB);
    let _a1 = mesh.agent("a1", &["region=eu"]);
    let _a2 = mesh.agent("a2", &["region=eu"]);
    let _a3 = mesh.agent("a3", &["region=us"]);
    mesh.wait_online(&["a1", "a2", "a3"]).await;
    let c = mesh.client("client-c1").await;
    let ping = |o: croupier_sdk::CallOptions| {
        let c = c.clone();
        async move {
            let r = c.invoke("agent.ping", json!({}), &o).await.unwrap();
            assert!(r.success, "{r:?}");
            r.agent_id
        }
    };

    // hash: a key keeps its agent; different keys spread.
    let mut o = opts();
    o.routing = "hash".into();
    o.hash_key = "player-42".into();
    let first = ping(o.clone()).await;
    for _ in 0..10 {
        assert_eq!(ping(o.clone()).await, first);
    }
    let mut seen = HashSet::new();
    for k in 0..30 {
        o.hash_key = format!("player-{k}");
        seen.insert(ping(o.clone()).await);
    }
    assert!(seen.len() >= 2, "30 keys all went to {seen:?}");
    o.hash_key.clear();
    let e = c.invoke("agent.ping", json!({}), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("hash_key"));

    // round_robin: strict rotation.
    let mut o = opts();
    o.routing = "round_robin".into();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..9 {
        *counts.entry(ping(o.clone()).await).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 3), "{counts:?}");

    // lb (default): idle agents share the work.
    let mut seen = HashSet::new();
    for _ in 0..9 {
        seen.insert(ping(opts()).await);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // targeted: always the named agent; an unknown one is NOT_FOUND.
    let mut o = opts();
    o.routing = "targeted".into();
    o.target = "a2".into();
    for _ in 0..5 {
        assert_eq!(ping(o.clone()).await, "a2");
    }
    o.target = "zz".into();
    let e = c.invoke("agent.ping", json!({}), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // selector: only matching agents.
    let mut o = opts();
    o.selector.insert("region".into(), "us".into());
    for _ in 0..6 {
        assert_eq!(ping(o.clone()).await, "a3");
    }
    o.selector.insert("region".into(), "eu".into());
    for _ in 0..6 {
        let a = ping(o.clone()).await;
        assert!(a == "a1" || a == "a2", "{a}");
    }
    o.selector.insert("region".into(), "mars".into());
    let e = c.invoke("agent.ping", json!({}), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("selector"), "{}", e.message());

    // broadcast: one result per agent.
    let mut o = opts();
    o.routing = "broadcast".into();
    let r = c
        .invoke("agent.ping", json!({"b": true}), &o)
        .await
        .unwrap();
    assert!(r.success, "{r:?}");
    let agents: HashSet<String> = r.results.iter().map(|x| x.agent_id.clone()).collect();
    assert_eq!(
        agents,
        HashSet::from(["a1".into(), "a2".into(), "a3".into()])
    );
    for x in &r.results {
        assert_eq!(
            opt_struct_to_json(x.result.as_ref())["agent_id"],
            json!(x.agent_id)
        );
    }
    // broadcast with a selector.
    o.selector.insert("region".into(), "eu".into());
    let r = c.invoke("agent.ping", json!({}), &o).await.unwrap();
    assert_eq!(r.results.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_executes_once() {
    let mesh = Mesh::start(&["a1"], HB);
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let c = mesh.client("client-c1").await;
    let calls = |r: &croupier_proto::function::v1::InvokeFunctionResponse| {
        opt_struct_to_json(r.result.as_ref())["calls"]
            .as_i64()
            .unwrap()
    };

    let mut o = opts();
    o.idempotency_key = "order-7".into();
    // Concurrent first calls: one executes, the others wait for its outcome.
    let runs = (0..4).map(|_| {
        let (c, o) = (c.clone(), o.clone());
        async move { c.invoke("agent.ping", json!({"n": 1}), &o).await.unwrap() }
    });
    let first: Vec<_> = futures::future::join_all(runs).await;
    let executed = calls(&first[0]);
    for r in &first {
        assert_eq!(calls(r), executed);
        assert_eq!(r.request_id, first[0].request_id);
    }
    // A later repeat returns the stored outcome.
    let again = c.invoke("agent.ping", json!({"n": 1}), &o).await.unwrap();
    assert_eq!(calls(&again), executed);
    // The handler ran once: the next unkeyed ping is the next execution.
    let next = c
        .invoke("agent.ping", json!({"n": 1}), &opts())
        .await
        .unwrap();
    assert_eq!(calls(&next), executed + 1);
    // Same key, different payload: FAILED_PRECONDITION.
    let e = c
        .invoke("agent.ping", json!({"n": 2}), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("different payload"));
    // The key is scoped to the function: another function with the same key executes.
    let r = c.invoke("agent.sleep", json!({"ms": 1}), &o).await.unwrap();
    assert!(r.success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_and_nothing_else_is_affected() {
    let mesh = Mesh::start(&["a1"], HB);
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let c = mesh.client("client-c1").await;
    let channel = croupier_sdk::tls::connect(
        &mesh.url,
        &croupier_sdk::TlsFiles::from_dir(&mesh.certs(), "client-c1")
            .load()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut raw =
        croupier_proto::function::v1::function_service_client::FunctionServiceClient::new(channel)
            .max_encoding_message_size(64 * 1024 * 1024);
    let big = "x".repeat(11 * 1024 * 1024);
    let e = raw
        .invoke_function(croupier_proto::function::v1::InvokeFunctionRequest {
            game_id: "g".into(),
            env: "e".into(),
            function_id: "agent.ping".into(),
            payload: Some(croupier_proto::json::json_to_struct(&json!({"big": big}))),
            options: None,
        })
        .await
        .unwrap_err();
    // A message over the limit is RESOURCE_EXHAUSTED (DESIGN §4), naming the size and limit.
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("too large") || e.message().contains("limit"),
        "{}",
        e.message()
    );
    let r = c.invoke("agent.ping", json!({}), &opts()).await.unwrap();
    assert!(r.success);
}
