//! The invoker over the embedded store with scripted agents and tokio's paused clock: routing
//! fallbacks, safe retries, deadline edges, idempotency races, broadcasts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{bed, call, client};
use croupier_control::Load;
use croupier_control::fake::Reply;
use croupier_function::{FunctionError, InvokeConfig, JobConfig};
use croupier_proto::control::v1::InvokeResult;
use croupier_proto::function::v1::InvokeOptions;
use croupier_proto::json::opt_struct_to_json;
use croupier_registry::model::DescriptorRecord;
use serde_json::json;
use tonic::Code;

fn opts() -> InvokeOptions {
    InvokeOptions::default()
}

fn answering(agent: &'static str) -> impl Fn(&croupier_proto::control::v1::Invoke) -> Reply {
    move |_| Reply::ok(json!({ "by": agent }))
}

fn by(resp: &croupier_proto::function::v1::InvokeFunctionResponse) -> serde_json::Value {
    opt_struct_to_json(resp.result.as_ref())["by"].clone()
}

#[tokio::test(start_paused = true)]
async fn a_call_moves_past_an_agent_whose_tunnel_is_gone() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    b.agent("a1", &["f"], |_| Reply::Unreachable).await;
    b.agent("a2", &["f"], answering("a2")).await;
    b.link.set_load(
        "a2",
        Load {
            in_flight: 3,
            ..Default::default()
        },
    );
    let r = b
        .invoker
        .invoke(&client(), call("f", json!({}), opts()), None, false)
        .await
        .unwrap();
    assert_eq!(by(&r), "a2");
    let tried: Vec<String> = b.link.invokes().into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        tried,
        ["a1", "a2"],
        "the least loaded first, then the other"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_agent_is_retried_elsewhere_only_when_the_call_is_safe_to_repeat() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    b.agent("a1", &["f"], |_| Reply::Lost).await;
    b.agent("a2", &["f"], answering("a2")).await;
    b.link.set_load(
        "a2",
        Load {
            in_flight: 3,
            ..Default::default()
        },
    );
    let err = b
        .invoker
        .invoke(&client(), call("f", json!({}), opts()), None, false)
        .await
        .unwrap_err();
    assert!(matches!(err, FunctionError::AgentLost(_)), "{err:?}");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.to_string().contains("not retried"), "{err}");

    let keyed = InvokeOptions {
        idempotency_key: "k1".into(),
        ..opts()
    };
    let r = b
        .invoker
        .invoke(&client(), call("f", json!({}), keyed), None, false)
        .await
        .unwrap();
    assert_eq!(by(&r), "a2", "a keyed call moves to another agent");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_decides_to_the_millisecond() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    let late = |_: &croupier_proto::control::v1::Invoke| {
        Reply::After(
            Duration::from_millis(1500),
            InvokeResult {
                success: true,
                ..Default::default()
            },
        )
    };
    b.agent("a1", &["f"], late).await;
    let timed = |secs| InvokeOptions {
        timeout: secs,
        ..opts()
    };
    let err = b
        .invoker
        .invoke(&client(), call("f", json!({}), timed(1)), None, false)
        .await
        .unwrap_err();
    assert!(matches!(err, FunctionError::DeadlinePassed(_)), "{err:?}");
    assert!(err.to_string().contains("within 1s"), "{err}");
    let r = b
        .invoker
        .invoke(&client(), call("f", json!({}), timed(2)), None, false)
        .await
        .unwrap();
    assert!(r.success);
    // The caller's own gRPC deadline is shorter than the options: it wins.
    let err = b
        .invoker
        .invoke(
            &client(),
            call("f", json!({}), timed(2)),
            Some(Duration::from_millis(700)),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, FunctionError::DeadlinePassed(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_with_one_idempotency_key_execute_once() {
    let b = Arc::new(bed(InvokeConfig::default(), JobConfig::default()).await);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    b.agent("a1", &["f"], move |_| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::After(
            Duration::from_millis(300),
            InvokeResult {
                success: true,
                result: Some(croupier_proto::json::json_to_struct(&json!({ "run": n }))),
                ..Default::default()
            },
        )
    })
    .await;
    let keyed = InvokeOptions {
        idempotency_key: "order-1".into(),
        ..opts()
    };
    let calls = (0..8).map(|_| {
        let b = b.clone();
        let keyed = keyed.clone();
        croupier_proto::task::spawn("test call", async move {
            b.invoker
                .invoke(&client(), call("f", json!({"n": 1}), keyed), None, false)
                .await
        })
    });
    let results = futures::future::join_all(calls).await;
    for r in results {
        let r = r.unwrap().unwrap();
        assert_eq!(opt_struct_to_json(r.result.as_ref()), json!({"run": 1}));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The same key with another payload is refused, finally.
    let err = b
        .invoker
        .invoke(&client(), call("f", json!({"n": 2}), keyed), None, false)
        .await
        .unwrap_err();
    assert!(matches!(err, FunctionError::IdempotencyConflict), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_broadcast_answers_per_agent_with_each_ones_outcome() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    b.agent("a1", &["f"], answering("a1")).await;
    b.agent("a2", &["f"], |_| Reply::Lost).await;
    let r = b
        .invoker
        .invoke(
            &client(),
            call(
                "f",
                json!({}),
                InvokeOptions {
                    routing_mode: "broadcast".into(),
                    ..opts()
                },
            ),
            None,
            false,
        )
        .await
        .unwrap();
    assert!(!r.success);
    assert_eq!(r.error_code, "PARTIAL_FAILURE");
    let codes: Vec<(&str, bool, &str)> = r
        .results
        .iter()
        .map(|a| (a.agent_id.as_str(), a.success, a.error_code.as_str()))
        .collect();
    assert!(codes.contains(&("a1", true, "")), "{codes:?}");
    assert!(codes.contains(&("a2", false, "UNAVAILABLE")), "{codes:?}");
}

#[tokio::test(start_paused = true)]
async fn unknown_functions_schemas_and_targets_get_their_own_errors() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    b.agent("a1", &["f"], answering("a1")).await;
    b.descriptor(DescriptorRecord {
        id: "f".into(),
        params_schema: json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        ..Default::default()
    })
    .await;
    let who = client();
    let err = b
        .invoker
        .invoke(&who, call("nope", json!({}), opts()), None, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FunctionError::NotRegistered { .. }),
        "{err:?}"
    );
    let err = b
        .invoker
        .invoke(&who, call("f", json!({"n": "x"}), opts()), None, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FunctionError::SchemaMismatch { detail, .. } if detail.contains("/n")),
        "{err:?}"
    );
    let targeted = InvokeOptions {
        routing_mode: "targeted".into(),
        target_agent: "a9".into(),
        ..opts()
    };
    let err = b
        .invoker
        .invoke(&who, call("f", json!({}), targeted), None, false)
        .await
        .unwrap_err();
    assert!(matches!(err, FunctionError::NotProvided(_)), "{err:?}");
    assert!(b.link.invokes().is_empty(), "nothing reached an agent");
}

#[tokio::test(start_paused = true)]
async fn the_per_caller_limit_refuses_the_call_past_it() {
    let cfg = InvokeConfig {
        max_concurrent_per_caller: 2,
        ..InvokeConfig::default()
    };
    let b = Arc::new(bed(cfg, JobConfig::default()).await);
    b.agent("a1", &["f"], |_| {
        Reply::After(Duration::from_secs(5), InvokeResult::default())
    })
    .await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            croupier_proto::task::spawn("test call", async move {
                b.invoker
                    .invoke(&client(), call("f", json!({}), opts()), None, false)
                    .await
            })
        })
        .collect();
    while b.link.invokes().len() < 2 {
        tokio::task::yield_now().await;
    }
    let err = b
        .invoker
        .invoke(&client(), call("f", json!({}), opts()), None, false)
        .await
        .unwrap_err();
    assert!(matches!(err, FunctionError::LimitReached(_)), "{err:?}");
    for s in slow {
        s.await.unwrap().unwrap();
    }
}
