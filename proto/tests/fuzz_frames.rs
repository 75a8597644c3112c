//! Property tests (fuzz targets run on stable, in CI with the default number of cases; set
//! `PROPTEST_CASES` for a longer run): the tunnel's frame decoding on both sides and the
//! `Struct` ⇄ JSON conversions never panic, substitutes keep their call's ids, and every payload
//! the limits accept decodes in every envelope.

use croupier_proto::codec::{substitute, undecodable_reason};
use croupier_proto::control::v1::{
    AgentFrame, AgentJobEvent, Invoke, InvokeResult, ServerFrame, agent_frame, server_frame,
};
use croupier_proto::function::v1::JobEvent;
use croupier_proto::json::{json_to_struct, struct_to_json};
use croupier_proto::limits::{DEFAULT_MAX_MESSAGE_BYTES, check_payload, json_depth, struct_depth};
use proptest::prelude::*;
use prost::Message;
use serde_json::Value;

/// JSON values up to `depth` levels (bounded breadth).
fn json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| Value::from(n as i64)),
        (-1e9f64..1e9)
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn nested(depth: usize) -> Value {
    let mut v = Value::from(1);
    for _ in 0..depth {
        v = serde_json::json!({ "a": v });
    }
    v
}

fn decode_any<U: Message + Default + 'static>(bytes: &[u8]) -> Option<U> {
    match U::decode(bytes) {
        Ok(m) => Some(m),
        Err(e) => substitute::<U>(bytes, &e),
    }
}

proptest! {
    /// Arbitrary bytes: decoding a frame, or its substitute, never panics.
    #[test]
    fn arbitrary_bytes_never_panic_a_frame_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_any::<AgentFrame>(&bytes);
        let _ = decode_any::<ServerFrame>(&bytes);
    }

    /// A valid frame with bytes flipped: the decoders never panic, and a substitute for a
    /// result keeps a request id.
    #[test]
    fn mutated_frames_never_panic_and_substitutes_keep_ids(
        payload in json(4),
        id in "[a-z0-9-]{1,36}",
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let data = Some(json_to_struct(&payload));
        let frames = [
            AgentFrame { frame: Some(agent_frame::Frame::Result(InvokeResult {
                request_id: id.clone(), success: true, result: data.clone(), ..Default::default()
            })) }.encode_to_vec(),
            AgentFrame { frame: Some(agent_frame::Frame::JobEvent(AgentJobEvent {
                event: Some(JobEvent { job_id: id.clone(), seq: 3, data: data.clone(), ..Default::default() }),
            })) }.encode_to_vec(),
        ];
        for mut bytes in frames {
            for (at, b) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = *b;
            }
            let _ = decode_any::<AgentFrame>(&bytes);
        }
        let mut invoke = ServerFrame { frame: Some(server_frame::Frame::Invoke(Invoke {
            request_id: id.clone(), function_id: "f".into(), payload: data, ..Default::default()
        })) }.encode_to_vec();
        for (at, b) in &flips {
            let i = at.index(invoke.len());
            invoke[i] = *b;
        }
        let _ = decode_any::<ServerFrame>(&invoke);
    }

    /// Too deep for the decoder: the substitute fails that call, with its ids.
    #[test]
    fn undecodable_payloads_become_failures_of_their_call(id in "[a-z0-9-]{1,36}", extra in 0usize..20) {
        let deep = Some(json_to_struct(&nested(40 + extra)));
        let bytes = AgentFrame { frame: Some(agent_frame::Frame::Result(InvokeResult {
            request_id: id.clone(), success: true, result: deep.clone(), ..Default::default()
        })) }.encode_to_vec();
        let sub = decode_any::<AgentFrame>(&bytes).expect("a substitute");
        match sub.frame {
            Some(agent_frame::Frame::Result(r)) => {
                prop_assert_eq!(r.request_id, id.clone());
                prop_assert!(!r.success);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        let bytes = ServerFrame { frame: Some(server_frame::Frame::Invoke(Invoke {
            request_id: id.clone(), payload: deep, timeout_ms: 7, ..Default::default()
        })) }.encode_to_vec();
        let Some(server_frame::Frame::Invoke(i)) = decode_any::<ServerFrame>(&bytes).and_then(|f| f.frame) else {
            return Err(TestCaseError::fail("no invoke"));
        };
        prop_assert_eq!(i.request_id, id);
        prop_assert_eq!(i.timeout_ms, 7);
        prop_assert!(undecodable_reason(i.payload.as_ref()).is_some());
    }

    /// JSON → Struct → JSON gives the object back (numbers as Struct keeps them), and the two
    /// depth counts agree.
    #[test]
    fn struct_json_round_trips(v in json(6)) {
        let obj = match v { Value::Object(_) => v, other => serde_json::json!({ "v": other }) };
        let s = json_to_struct(&obj);
        let back = struct_to_json(&s);
        prop_assert_eq!(json_depth(&back), json_depth(&obj));
        prop_assert_eq!(struct_depth(&s), json_depth(&obj).max(1));
        let again = struct_to_json(&json_to_struct(&back));
        prop_assert_eq!(again, back);
    }

    /// Whatever the limits accept decodes in the deepest envelope.
    #[test]
    fn accepted_payloads_decode_in_the_deepest_envelope(depth in 1usize..40) {
        let s = json_to_struct(&nested(depth));
        if check_payload(Some(&s), DEFAULT_MAX_MESSAGE_BYTES).is_ok() {
            let bytes = AgentFrame { frame: Some(agent_frame::Frame::JobEvent(AgentJobEvent {
                event: Some(JobEvent { data: Some(s), ..Default::default() }),
            })) }.encode_to_vec();
            prop_assert!(AgentFrame::decode(bytes.as_slice()).is_ok());
        }
    }
}
