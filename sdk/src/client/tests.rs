//! Unit tests of the client's pure parts.

use super::*;
use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::common::v1::Semantics;
use croupier_proto::json::json_to_struct;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[test]
fn safe_descriptors_are_queries_or_idempotent() {
    let d = |kind: &str, idempotent| FunctionDescriptor {
        semantics: Some(Semantics {
            kind: kind.into(),
            idempotent,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(descriptor_is_safe(&d("query", false)));
    assert!(descriptor_is_safe(&d("command", true)));
    assert!(!descriptor_is_safe(&d("command", false)));
    assert!(!descriptor_is_safe(&d("", false)));
    assert!(!descriptor_is_safe(&FunctionDescriptor::default()));
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Pong {
    agent_id: String,
    calls: u64,
}

#[test]
fn typed_payloads_and_results() {
    let p = encode_payload("f", &json!({"a": 1})).unwrap();
    assert_eq!(p, json!({"a": 1}));
    let e = encode_payload("f", &42).unwrap_err();
    assert!(e.to_string().contains("must be a JSON object"), "{e}");

    let ok: Pong = decode_result(
        "agent.ping",
        Some(&json_to_struct(&json!({"agent_id": "a1", "calls": 3}))),
    )
    .unwrap();
    assert_eq!(
        ok,
        Pong {
            agent_id: "a1".into(),
            calls: 3
        }
    );
    let e = decode_result::<Pong>(
        "agent.ping",
        Some(&json_to_struct(&json!({"agent_id": "a1", "calls": "x"}))),
    )
    .unwrap_err();
    assert!(matches!(e, CallError::Decode { .. }));
    assert!(e.to_string().contains("calls"), "{e}");
    // A non-object result travels as {"value": v}.
    let n: u32 = decode_result("f", Some(&json_to_struct(&json!(7)))).unwrap();
    assert_eq!(n, 7);
}
