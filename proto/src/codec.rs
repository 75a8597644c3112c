//! The gRPC codec of every Croupier service: prost's, except that a tunnel frame that cannot be
//! decoded fails the one call it belongs to instead of the whole `Connect` stream, and that its
//! buffers start at [`FIRST_BUFFER_BYTES`].
//!
//! A decode failure of a streamed message ends a tonic stream. On the tunnel that would drop an
//! agent, and every call in flight on it, because of one bad payload. So when an `AgentFrame` or
//! a `ServerFrame` does not decode, [`CroupierCodec`] reads it again with shallow message types
//! that skip the payload (a `Struct` is a length-delimited field, skipped without recursing) and
//! hands on a substitute that carries the ids and says what went wrong:
//! - an agent's `InvokeResult` becomes a failed result (`error_code` [`UNDECODABLE`]);
//! - an agent's job event keeps its job, seq, type, progress and time; its data is replaced by
//!   `{"code": "UNDECODABLE", "error": …}` and a `DONE` becomes an `ERROR`;
//! - a server's `Invoke` keeps everything but its payload, which becomes
//!   `{"$croupier.undecodable": why}`: the agent answers the call with an error (see
//!   [`undecodable_reason`]).
//!
//! Any other message that does not decode is an error, as with prost's codec. Both sides check
//! payloads against [`crate::limits`] before sending, so the substitutes are a last line of
//! defence against a peer that does not.

use std::any::{Any, TypeId};
use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use prost_types::{Struct, Value, value::Kind};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::control::v1::{
    AgentFrame, AgentJobEvent, Invoke, InvokeResult, ServerFrame, agent_frame, server_frame,
};
use crate::function::v1::{EventType, JobEvent};

/// The error code of a result or event that could not be decoded.
pub const UNDECODABLE: &str = "UNDECODABLE";

/// The payload field that marks an `Invoke` whose payload could not be decoded by the agent.
pub const UNDECODABLE_FIELD: &str = "$croupier.undecodable";

/// A prost codec whose decoder substitutes undecodable tunnel frames (see the module docs).
#[derive(Debug, Clone)]
pub struct CroupierCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for CroupierCodec<T, U> {
    fn default() -> Self {
        CroupierCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for CroupierCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TolerantDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        TolerantDecoder { _pd: PhantomData }
    }
}

/// The first size of a call's encode and decode buffers: 1 KiB, where tonic's default is 8 KiB.
/// They grow to the largest message as needed; what matters is what a long-lived stream holds
/// while idle. Each agent's tunnel holds one of each, so this saves 14 KiB of every agent's
/// memory on the server (and on the agent).
pub const FIRST_BUFFER_BYTES: usize = 1024;

fn buffer_settings() -> BufferSettings {
    // 32 KiB: tonic's yield threshold (when an encoder stops batching messages).
    BufferSettings::new(FIRST_BUFFER_BYTES, 32 * 1024)
}

/// The decoder of [`CroupierCodec`].
#[derive(Debug, Clone, Default)]
pub struct TolerantDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default + 'static> Decoder for TolerantDecoder<U> {
    type Item = U;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let bytes = buf.copy_to_bytes(len);
        match U::decode(bytes.as_ref()) {
            Ok(m) => Ok(Some(m)),
            Err(e) => substitute::<U>(&bytes, &e)
                .map(Some)
                .ok_or_else(|| Status::internal(e.to_string())),
        }
    }
}

/// A substitute for an undecodable `AgentFrame` or `ServerFrame`; `None` for other types or
/// frames that carry no call.
pub fn substitute<U: 'static>(bytes: &[u8], err: &prost::DecodeError) -> Option<U> {
    let why = err.to_string();
    let frame: Box<dyn Any> = if TypeId::of::<U>() == TypeId::of::<AgentFrame>() {
        Box::new(agent_frame_substitute(bytes, &why)?)
    } else if TypeId::of::<U>() == TypeId::of::<ServerFrame>() {
        Box::new(server_frame_substitute(bytes, &why)?)
    } else {
        return None;
    };
    frame.downcast::<U>().ok().map(|b| *b)
}

/// The reason an `Invoke` payload could not be decoded, when the codec substituted it.
pub fn undecodable_reason(payload: Option<&Struct>) -> Option<String> {
    let v = payload?.fields.get(UNDECODABLE_FIELD)?;
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn string_value(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

fn agent_frame_substitute(bytes: &[u8], why: &str) -> Option<AgentFrame> {
    let shallow = ShallowAgentFrame::decode(bytes).ok()?;
    let frame = match shallow.frame? {
        ShallowAgentFrameKind::Result(r) => agent_frame::Frame::Result(InvokeResult {
            request_id: text(&r.request_id),
            success: false,
            result: None,
            error: format!(
                "the agent's answer could not be decoded by the server ({why}); results must \
                 nest at most {} levels and be valid UTF-8",
                crate::limits::MAX_PAYLOAD_DEPTH
            ),
            error_code: UNDECODABLE.into(),
        }),
        ShallowAgentFrameKind::JobEvent(e) => {
            let ev = e.event?;
            let mut kind = ev.r#type;
            if kind == EventType::Done as i32 {
                kind = EventType::Error as i32;
            }
            let data = Struct {
                fields: [
                    ("code".to_string(), string_value(UNDECODABLE.into())),
                    (
                        "error".to_string(),
                        string_value(format!(
                            "the event's data could not be decoded by the server: {why}"
                        )),
                    ),
                ]
                .into_iter()
                .collect(),
            };
            agent_frame::Frame::JobEvent(AgentJobEvent {
                event: Some(JobEvent {
                    job_id: text(&ev.job_id),
                    r#type: kind,
                    message: text(&ev.message),
                    progress: ev.progress,
                    timestamp: ev.timestamp,
                    data: Some(data),
                    seq: ev.seq,
                    received_at: 0,
                }),
            })
        }
    };
    Some(AgentFrame { frame: Some(frame) })
}

fn server_frame_substitute(bytes: &[u8], why: &str) -> Option<ServerFrame> {
    let shallow = ShallowServerFrame::decode(bytes).ok()?;
    let i = shallow.invoke?;
    let payload = Struct {
        fields: [(UNDECODABLE_FIELD.to_string(), string_value(why.to_string()))]
            .into_iter()
            .collect(),
    };
    Some(ServerFrame {
        frame: Some(server_frame::Frame::Invoke(Invoke {
            request_id: text(&i.request_id),
            function_id: text(&i.function_id),
            payload: Some(payload),
            timeout_ms: i.timeout_ms,
            game_id: text(&i.game_id),
            env: text(&i.env),
            caller: text(&i.caller),
            idempotency_key: text(&i.idempotency_key),
            job_id: text(&i.job_id),
            traceparent: text(&i.traceparent),
            config: Default::default(),
        })),
    })
}

// Shallow mirrors of the frames: the same field numbers, strings read as bytes (a string that is
// not UTF-8 fails prost's decoder too), and no payload fields, so that prost skips them.

#[derive(Clone, PartialEq, prost::Message)]
struct ShallowAgentFrame {
    #[prost(oneof = "ShallowAgentFrameKind", tags = "2, 3")]
    frame: Option<ShallowAgentFrameKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ShallowAgentFrameKind {
    #[prost(message, tag = "2")]
    Result(ShallowResult),
    #[prost(message, tag = "3")]
    JobEvent(ShallowAgentJobEvent),
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShallowResult {
    #[prost(bytes = "vec", tag = "1")]
    request_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShallowAgentJobEvent {
    #[prost(message, optional, tag = "1")]
    event: Option<ShallowJobEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShallowJobEvent {
    #[prost(bytes = "vec", tag = "1")]
    job_id: Vec<u8>,
    #[prost(int32, tag = "2")]
    r#type: i32,
    #[prost(bytes = "vec", tag = "3")]
    message: Vec<u8>,
    #[prost(double, tag = "4")]
    progress: f64,
    #[prost(int64, tag = "5")]
    timestamp: i64,
    #[prost(int64, tag = "7")]
    seq: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShallowServerFrame {
    #[prost(message, optional, tag = "1")]
    invoke: Option<ShallowInvoke>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShallowInvoke {
    #[prost(bytes = "vec", tag = "1")]
    request_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    function_id: Vec<u8>,
    #[prost(int64, tag = "4")]
    timeout_ms: i64,
    #[prost(bytes = "vec", tag = "5")]
    game_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    env: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    caller: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    idempotency_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "9")]
    job_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    traceparent: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::json_to_struct;

    fn too_deep() -> Struct {
        let mut v = serde_json::json!(1);
        for _ in 0..60 {
            v = serde_json::json!({ "a": v });
        }
        json_to_struct(&v)
    }

    #[test]
    fn an_undecodable_result_becomes_a_failed_result_for_its_call() {
        let frame = AgentFrame {
            frame: Some(agent_frame::Frame::Result(InvokeResult {
                request_id: "r-1".into(),
                success: true,
                result: Some(too_deep()),
                ..Default::default()
            })),
        };
        let bytes = frame.encode_to_vec();
        let err = AgentFrame::decode(bytes.as_slice()).unwrap_err();
        let sub: AgentFrame = substitute(&bytes, &err).unwrap();
        match sub.frame {
            Some(agent_frame::Frame::Result(r)) => {
                assert_eq!(r.request_id, "r-1");
                assert!(!r.success);
                assert_eq!(r.error_code, UNDECODABLE);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_undecodable_done_event_keeps_its_seq_and_becomes_an_error() {
        let frame = AgentFrame {
            frame: Some(agent_frame::Frame::JobEvent(AgentJobEvent {
                event: Some(JobEvent {
                    job_id: "j-1".into(),
                    r#type: EventType::Done as i32,
                    seq: 7,
                    data: Some(too_deep()),
                    ..Default::default()
                }),
            })),
        };
        let bytes = frame.encode_to_vec();
        let err = AgentFrame::decode(bytes.as_slice()).unwrap_err();
        let sub: AgentFrame = substitute(&bytes, &err).unwrap();
        let Some(agent_frame::Frame::JobEvent(e)) = sub.frame else {
            panic!("not a job event");
        };
        let ev = e.event.unwrap();
        assert_eq!((ev.job_id.as_str(), ev.seq), ("j-1", 7));
        assert_eq!(ev.r#type, EventType::Error as i32);
    }

    #[test]
    fn an_undecodable_invoke_keeps_its_ids_and_marks_its_payload() {
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Invoke(Invoke {
                request_id: "r-2".into(),
                function_id: "f".into(),
                timeout_ms: 500,
                payload: Some(too_deep()),
                ..Default::default()
            })),
        };
        let bytes = frame.encode_to_vec();
        let err = ServerFrame::decode(bytes.as_slice()).unwrap_err();
        let sub: ServerFrame = substitute(&bytes, &err).unwrap();
        let Some(server_frame::Frame::Invoke(i)) = sub.frame else {
            panic!("not an invoke");
        };
        assert_eq!((i.request_id.as_str(), i.timeout_ms), ("r-2", 500));
        assert!(undecodable_reason(i.payload.as_ref()).is_some());
    }

    #[test]
    fn other_messages_are_not_substituted() {
        let err = AgentFrame::decode(&[0xff_u8][..]).unwrap_err();
        assert!(substitute::<crate::function::v1::InvokeFunctionRequest>(&[], &err).is_none());
        // A Hello carries no call: nothing to substitute.
        assert!(substitute::<AgentFrame>(&[0x0a, 0x00], &err).is_none());
    }
}
