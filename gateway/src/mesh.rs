//! [`Mesh`]: the gateway as a mesh caller. A player's REQUEST becomes one `InvokeFunction` of
//! the function its route names, with:
//! - the payload `{"player_id", "session_id", "gateway_id", "msg_id", "seq", "data"}` where
//!   `data` is the client's JSON, or `"data_b64"` (base64) instead when the client sent opaque
//!   bytes;
//! - the route's routing mode, by default `hash` on the player id (a player's calls stick to one
//!   agent while the agent set is unchanged);
//! - the route's deadline (gRPC deadline exactly, server-side timeout rounded up to a second);
//! - the client's `traceparent`, when valid, as gRPC metadata `traceparent`;
//! - retries of `UNAVAILABLE` (50 ms doubling, within the deadline) only for routes marked
//!   `idempotent`: a call that may have run is never repeated otherwise.
//!
//! The answer: a result `{"data_b64": "…"}` goes back as those bytes (opaque); any other result
//! goes back as its JSON (flag JSON). A handler failure or a gRPC error becomes an ERROR frame
//! with the code.
//!
//! Calls go over `calls.channels` HTTP/2 channels (round robin), each balancing over the
//! configured servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use croupier_proto::function::v1::{
    InvokeFunctionRequest, InvokeFunctionResponse, InvokeOptions,
    function_service_client::FunctionServiceClient,
};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use croupier_sdk::TlsPem;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::config::RouteConfig;
use crate::error::GatewayError;
use crate::frame::FLAG_JSON;

/// Largest message to or from the mesh (the servers' default).
const MAX_MESSAGE_BYTES: usize = croupier_proto::limits::DEFAULT_MAX_MESSAGE_BYTES;

/// The mesh, as the gateway calls it. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    clients: Vec<FunctionServiceClient<Channel>>,
    next: AtomicUsize,
    game_id: String,
    env: String,
    retry_attempts: u32,
}

/// Who is calling: the fields every request payload carries.
#[derive(Clone, Debug)]
pub struct Caller<'a> {
    /// The player.
    pub player_id: &'a str,
    /// The session.
    pub session_id: &'a str,
    /// This gateway.
    pub gateway_id: &'a str,
}

/// A successful answer, ready for a RESPONSE frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Frame flags of the payload.
    pub flags: u32,
    /// The payload.
    pub payload: Bytes,
}

/// A failed request, ready for an ERROR frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The code (gRPC code name in upper snake case, or the handler's own code).
    pub code: String,
    /// The message.
    pub message: String,
    /// True for a handler that ran and failed (as opposed to the mesh failing).
    pub handler: bool,
}

impl Failure {
    fn from_status(s: &Status) -> Self {
        Failure {
            code: code_name(s.code()).into(),
            message: s.message().into(),
            handler: false,
        }
    }
}

/// The upper-snake-case name of a gRPC code ("UNAVAILABLE").
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// True for a W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
pub fn valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// The mesh payload of a request (see the module docs).
pub fn request_payload(
    caller: &Caller<'_>,
    msg_id: u32,
    seq: u64,
    flags: u32,
    data: &[u8],
) -> Result<serde_json::Value, String> {
    let mut v = serde_json::json!({
        "player_id": caller.player_id,
        "session_id": caller.session_id,
        "gateway_id": caller.gateway_id,
        "msg_id": msg_id,
        "seq": seq,
    });
    if flags & FLAG_JSON != 0 {
        let data: serde_json::Value = if data.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(data).map_err(|e| format!("the JSON payload: {e}"))?
        };
        v["data"] = data;
    } else {
        v["data_b64"] = STANDARD.encode(data).into();
    }
    Ok(v)
}

/// The RESPONSE payload of a result (see the module docs).
pub fn answer_of(result: &serde_json::Value) -> Answer {
    if let Some(o) = result.as_object()
        && o.len() == 1
        && let Some(b) = o.get("data_b64").and_then(|v| v.as_str())
        && let Ok(bytes) = STANDARD.decode(b)
    {
        return Answer {
            flags: 0,
            payload: bytes.into(),
        };
    }
    Answer {
        flags: FLAG_JSON,
        payload: serde_json::to_vec(result).unwrap_or_default().into(),
    }
}

impl Mesh {
    /// Channels to `servers` with the gateway's mTLS material (they connect lazily, so the
    /// gateway starts while the mesh is still coming up).
    pub fn new(
        servers: &[String],
        pem: &TlsPem,
        channels: usize,
        game_id: &str,
        env: &str,
        retry_attempts: u32,
    ) -> Result<Mesh, GatewayError> {
        let mut clients = Vec::new();
        for _ in 0..channels.max(1) {
            let mut endpoints = Vec::new();
            for s in servers {
                endpoints.push(
                    croupier_sdk::tls::endpoint(s, pem)
                        .map_err(|e| GatewayError::Mesh(e.to_string()))?,
                );
            }
            let channel = Channel::balance_list(endpoints.into_iter());
            clients.push(
                FunctionServiceClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        Ok(Mesh {
            inner: Arc::new(Inner {
                clients,
                next: AtomicUsize::new(0),
                game_id: game_id.into(),
                env: env.into(),
                retry_attempts: retry_attempts.max(1),
            }),
        })
    }

    fn client(&self) -> FunctionServiceClient<Channel> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.clients.len();
        self.inner.clients[i].clone()
    }

    /// One `InvokeFunction` with `options` and a deadline of `timeout`.
    pub async fn invoke(
        &self,
        function: &str,
        payload: &serde_json::Value,
        mut options: InvokeOptions,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<InvokeFunctionResponse, Status> {
        options.timeout = timeout.as_secs_f64().ceil().max(1.0) as i32;
        let mut req = Request::new(InvokeFunctionRequest {
            game_id: self.inner.game_id.clone(),
            env: self.inner.env.clone(),
            function_id: function.to_string(),
            payload: Some(json_to_struct(payload)),
            options: Some(options),
        });
        req.set_timeout(timeout);
        if let Some(tp) = traceparent
            && let Ok(v) = tp.parse()
        {
            req.metadata_mut().insert("traceparent", v);
        }
        self.client()
            .invoke_function(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// A call routed the default way (least loaded), for the gateway's own needs (token checks).
    pub async fn call_plain(
        &self,
        function: &str,
        payload: serde_json::Value,
        timeout: Duration,
    ) -> Result<InvokeFunctionResponse, Status> {
        self.invoke(function, &payload, InvokeOptions::default(), timeout, None)
            .await
    }

    /// A player's request on `route` (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub async fn request(
        &self,
        route: &RouteConfig,
        default_timeout: Duration,
        caller: &Caller<'_>,
        msg_id: u32,
        seq: u64,
        flags: u32,
        data: &[u8],
        traceparent: Option<&str>,
    ) -> Result<Answer, Failure> {
        let payload =
            request_payload(caller, msg_id, seq, flags, data).map_err(|message| Failure {
                code: "INVALID_ARGUMENT".into(),
                message,
                handler: false,
            })?;
        let timeout = route.timeout.unwrap_or(default_timeout);
        let deadline = Instant::now() + timeout;
        let options = InvokeOptions {
            routing_mode: route.routing.clone(),
            hash_key: if route.routing == "hash" {
                caller.player_id.to_string()
            } else {
                String::new()
            },
            ..Default::default()
        };
        let traceparent = traceparent.filter(|t| valid_traceparent(t));
        let attempts = if route.idempotent {
            self.inner.retry_attempts
        } else {
            1
        };
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure {
                    code: "DEADLINE_EXCEEDED".into(),
                    message: format!("{} did not answer within {timeout:?}", route.function),
                    handler: false,
                });
            }
            match self
                .invoke(
                    &route.function,
                    &payload,
                    options.clone(),
                    left,
                    traceparent,
                )
                .await
            {
                Ok(resp) if resp.success => {
                    return Ok(answer_of(&opt_struct_to_json(resp.result.as_ref())));
                }
                Ok(resp) => {
                    return Err(Failure {
                        code: resp.error_code,
                        message: resp.error,
                        handler: true,
                    });
                }
                Err(s) if s.code() == Code::Unavailable && attempt < attempts => {
                    tracing::debug!(function = %route.function, attempt, message = %s.message(), "retrying an idempotent route");
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(delay.min(left)).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(s) => return Err(Failure::from_status(&s)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn traceparents_are_checked() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn payloads_carry_the_player_and_the_data() {
        let c = Caller {
            player_id: "p1",
            session_id: "s1",
            gateway_id: "gw-1",
        };
        let v = request_payload(&c, 7, 3, FLAG_JSON, br#"{"move":"e4"}"#).unwrap();
        assert_eq!(
            v,
            json!({"player_id":"p1","session_id":"s1","gateway_id":"gw-1","msg_id":7,"seq":3,"data":{"move":"e4"}})
        );
        let v = request_payload(&c, 7, 3, 0, &[1, 2, 3]).unwrap();
        assert_eq!(v["data_b64"], "AQID");
        let e = request_payload(&c, 7, 3, FLAG_JSON, b"{nope").unwrap_err();
        assert!(e.contains("JSON payload"), "{e}");
    }

    #[test]
    fn answers_are_json_unless_the_handler_sends_bytes() {
        let a = answer_of(&json!({"ok": true}));
        assert_eq!(a.flags, FLAG_JSON);
        assert_eq!(&a.payload[..], br#"{"ok":true}"#);
        let a = answer_of(&json!({"data_b64": "AQID"}));
        assert_eq!((a.flags, &a.payload[..]), (0, &[1u8, 2, 3][..]));
    }
}
