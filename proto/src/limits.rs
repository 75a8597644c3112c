//! The limits every Croupier decoder shares, and the checks that keep a payload inside them.
//!
//! A payload (`google.protobuf.Struct`) travels in several envelopes: the caller's
//! `InvokeFunctionRequest`, the tunnel's `Invoke` frame, the agent's `InvokeResult` or job event,
//! the caller's response, a broadcast's `AgentResult`. Every protobuf decoder bounds how deeply
//! messages nest (prost, C++ and Python protobuf: 100 levels) and how large a message may be
//! (`max_message_bytes`, 10 MiB by default). A payload that fits one envelope but not a deeper or
//! larger one would break the stream that carries the deeper one, so the checks here are made
//! once, at the edge, against the tightest envelope:
//!
//! - **Depth**: at most [`MAX_PAYLOAD_DEPTH`] nested objects and lists. Each level of a `Struct`
//!   costs three protobuf message levels (the map entry, the `Value`, the inner `Struct`), so a
//!   payload at the limit uses 96 levels below its envelope, and the deepest envelope
//!   ([`ENVELOPE_DEPTH`]) still fits in 100.
//! - **Size**: a payload may use the message limit minus [`FRAME_OVERHEAD_BYTES`], which leaves
//!   room for the envelope around it (ids, caller, deadline: a few hundred bytes at most, since
//!   every id is at most 128 characters).

use prost::Message;
use prost_types::{Struct, Value, value::Kind};

/// Most nested objects/lists in a payload, result or event data.
pub const MAX_PAYLOAD_DEPTH: usize = 32;

/// Message levels an envelope may add around a payload (`AgentFrame` → `AgentJobEvent` →
/// `JobEvent` → `Struct` is the deepest).
pub const ENVELOPE_DEPTH: usize = 3;

/// The message nesting limit of protobuf decoders (prost's `RECURSION_LIMIT`, and the default of
/// C++ and Python protobuf).
pub const DECODER_NESTING_LIMIT: usize = 100;

/// Bytes kept free for the envelope around a payload at the message limit.
pub const FRAME_OVERHEAD_BYTES: usize = 16 * 1024;

/// The default message limit of servers, agents and SDK clients, in bytes (10 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// The largest payload a message limit of `max_message_bytes` allows.
pub fn max_payload_bytes(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_sub(FRAME_OVERHEAD_BYTES)
}

/// Why a payload is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// Nested deeper than [`MAX_PAYLOAD_DEPTH`].
    TooDeep {
        /// The payload's depth, counted up to one past the limit.
        depth: usize,
    },
    /// Larger than the payload limit.
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::TooDeep { .. } => write!(
                f,
                "nests objects/lists more than {MAX_PAYLOAD_DEPTH} levels deep (the limit every \
                 Croupier decoder shares); flatten it"
            ),
            PayloadError::TooLarge { bytes, limit } => write!(
                f,
                "is {bytes} bytes encoded; at most {limit} are accepted (the message limit less \
                 {FRAME_OVERHEAD_BYTES} bytes for the frame around it)"
            ),
        }
    }
}

impl std::error::Error for PayloadError {}

/// How deeply `s` nests objects and lists: `{}` is 1, `{"a": {"b": 1}}` is 2. Counting stops
/// one past [`MAX_PAYLOAD_DEPTH`], so a hostile payload costs no more than a valid one.
pub fn struct_depth(s: &Struct) -> usize {
    struct_depth_from(s, 1)
}

fn struct_depth_from(s: &Struct, level: usize) -> usize {
    if level > MAX_PAYLOAD_DEPTH {
        return level;
    }
    s.fields
        .values()
        .map(|v| value_depth(v, level))
        .max()
        .unwrap_or(level)
        .max(level)
}

fn value_depth(v: &Value, level: usize) -> usize {
    match &v.kind {
        Some(Kind::StructValue(s)) => struct_depth_from(s, level + 1),
        Some(Kind::ListValue(l)) => {
            let inner = level + 1;
            if inner > MAX_PAYLOAD_DEPTH {
                return inner;
            }
            l.values
                .iter()
                .map(|v| value_depth(v, inner))
                .max()
                .unwrap_or(inner)
                .max(inner)
        }
        _ => level,
    }
}

/// Checks a payload's depth and encoded size against the limits of `max_message_bytes`.
pub fn check_payload(s: Option<&Struct>, max_message_bytes: usize) -> Result<(), PayloadError> {
    let Some(s) = s else { return Ok(()) };
    let depth = struct_depth(s);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(PayloadError::TooDeep { depth });
    }
    let bytes = s.encoded_len();
    let limit = max_payload_bytes(max_message_bytes);
    if bytes > limit {
        return Err(PayloadError::TooLarge { bytes, limit });
    }
    Ok(())
}

/// How deeply a JSON value nests objects and lists, counted like [`struct_depth`] (a scalar is
/// 0), stopping one past [`MAX_PAYLOAD_DEPTH`].
pub fn json_depth(v: &serde_json::Value) -> usize {
    fn depth(v: &serde_json::Value, level: usize) -> usize {
        if level > MAX_PAYLOAD_DEPTH {
            return level;
        }
        match v {
            serde_json::Value::Object(m) => m
                .values()
                .map(|v| depth(v, level + 1))
                .max()
                .unwrap_or(level + 1)
                .max(level + 1),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|v| depth(v, level + 1))
                .max()
                .unwrap_or(level + 1)
                .max(level + 1),
            _ => level,
        }
    }
    depth(v, 0)
}

/// Shortens `text` to at most `max` characters for an error message or a log line, escaping
/// control characters (a newline cannot forge a log line, an escape sequence cannot drive a
/// terminal) and marking the cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 8);
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Unicode bidirectional controls, which reorder what a terminal shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::v1::{AgentFrame, AgentJobEvent, Invoke, ServerFrame};
    use crate::function::v1::{
        AgentResult, InvokeFunctionRequest, InvokeFunctionResponse, JobEvent,
    };
    use crate::json::json_to_struct;

    fn nested(depth: usize) -> Struct {
        let mut v = serde_json::json!(1);
        for _ in 0..depth {
            v = serde_json::json!({ "a": v });
        }
        json_to_struct(&v)
    }

    fn nested_lists(depth: usize) -> Struct {
        let mut v = serde_json::json!(1);
        for _ in 1..depth {
            v = serde_json::json!([v]);
        }
        json_to_struct(&serde_json::json!({ "l": v }))
    }

    #[test]
    fn counts_depth_of_objects_and_lists() {
        assert_eq!(struct_depth(&Struct::default()), 1);
        assert_eq!(struct_depth(&nested(1)), 1);
        assert_eq!(struct_depth(&nested(5)), 5);
        assert_eq!(struct_depth(&nested_lists(4)), 4);
        assert_eq!(struct_depth(&nested(500)), MAX_PAYLOAD_DEPTH + 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": 2}]})), 3);
        assert_eq!(json_depth(&serde_json::json!(3)), 0);
    }

    /// Every envelope a payload travels in decodes a payload at the limit, so a payload that
    /// passes [`check_payload`] can never break a decoder on the way.
    #[test]
    fn a_payload_at_the_depth_limit_decodes_in_every_envelope() {
        for payload in [nested(MAX_PAYLOAD_DEPTH), nested_lists(MAX_PAYLOAD_DEPTH)] {
            assert!(check_payload(Some(&payload), DEFAULT_MAX_MESSAGE_BYTES).is_ok());
            let p = Some(payload);
            let request = InvokeFunctionRequest {
                payload: p.clone(),
                ..Default::default()
            };
            InvokeFunctionRequest::decode(request.encode_to_vec().as_slice()).unwrap();
            let invoke = ServerFrame {
                frame: Some(crate::control::v1::server_frame::Frame::Invoke(Invoke {
                    payload: p.clone(),
                    ..Default::default()
                })),
            };
            ServerFrame::decode(invoke.encode_to_vec().as_slice()).unwrap();
            let event = AgentFrame {
                frame: Some(crate::control::v1::agent_frame::Frame::JobEvent(
                    AgentJobEvent {
                        event: Some(JobEvent {
                            data: p.clone(),
                            ..Default::default()
                        }),
                    },
                )),
            };
            AgentFrame::decode(event.encode_to_vec().as_slice()).unwrap();
            let broadcast = InvokeFunctionResponse {
                results: vec![AgentResult {
                    result: p.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            InvokeFunctionResponse::decode(broadcast.encode_to_vec().as_slice()).unwrap();
        }
    }

    /// A descriptor's schema (at most 30 levels: `SchemaLimits`) travels one level deeper than
    /// payloads, in a watch event.
    #[test]
    fn a_schema_at_its_depth_limit_decodes_in_a_watch_event() {
        use crate::registry::v1::{FunctionRegistration, RegistrationEvent};
        let event = RegistrationEvent {
            registration: Some(FunctionRegistration {
                function_descriptor: Some(crate::common::v1::FunctionDescriptor {
                    params_schema: Some(nested(30)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        RegistrationEvent::decode(event.encode_to_vec().as_slice()).unwrap();
    }

    #[test]
    fn a_payload_past_the_depth_limit_is_refused() {
        let err = check_payload(
            Some(&nested(MAX_PAYLOAD_DEPTH + 1)),
            DEFAULT_MAX_MESSAGE_BYTES,
        )
        .unwrap_err();
        assert!(matches!(err, PayloadError::TooDeep { .. }));
        assert!(err.to_string().contains("32 levels"), "{err}");
    }

    #[test]
    fn a_payload_past_the_size_limit_is_refused() {
        let big = json_to_struct(&serde_json::json!({ "s": "x".repeat(2000) }));
        assert!(check_payload(Some(&big), 2000 + FRAME_OVERHEAD_BYTES + 64).is_ok());
        let err = check_payload(Some(&big), 2000 + FRAME_OVERHEAD_BYTES).unwrap_err();
        assert!(matches!(err, PayloadError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn excerpts_escape_control_characters_and_cut() {
        assert_eq!(excerpt("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("x\u{202E}y", 10), "x\\u{202e}y");
    }
}
