//! Calls: `invoke`, its typed form, and [`CallError`], which tells a handler's failure from a
//! gRPC error.

use super::*;
pub use crate::options::CallOptions;
use crate::retry::with_retries;
use croupier_proto::function::v1::{InvokeFunctionRequest, InvokeFunctionResponse};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

/// Why a typed call ([`Client::invoke_typed`], [`JobHandle::wait_typed`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The handler ran and failed (`success=false`), or the job failed or was cancelled.
    #[error("{function} failed: {code}: {message}")]
    Handler {
        /// The function.
        function: String,
        /// The agent that ran it (empty when unknown, e.g. for broadcast).
        agent_id: String,
        /// The handler's error code, e.g. "INVALID_ARGUMENT", "INSUFFICIENT_FUNDS".
        code: String,
        /// The handler's message.
        message: String,
    },
    /// The call failed at the gRPC level: bad payload, no agent, deadline, permission…
    #[error("calling {function}: {:?}: {}", .status.code(), .status.message())]
    Rpc {
        /// The function.
        function: String,
        /// The status.
        #[source]
        status: Status,
    },
    /// The payload could not be turned into a JSON object.
    #[error("encoding the payload of {function}: {reason}")]
    Encode {
        /// The function.
        function: String,
        /// What went wrong.
        reason: String,
    },
    /// The result does not have the expected type.
    #[error("decoding the result of {function}: {reason}")]
    Decode {
        /// The function.
        function: String,
        /// What went wrong, with the path of the offending field.
        reason: String,
    },
}

impl CallError {
    /// The gRPC status, for [`CallError::Rpc`].
    pub fn status(&self) -> Option<&Status> {
        match self {
            CallError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The gRPC code, for [`CallError::Rpc`].
    pub fn grpc_code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }

    /// The handler's error code, for [`CallError::Handler`].
    pub fn handler_code(&self) -> Option<&str> {
        match self {
            CallError::Handler { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Serializes a typed payload; it must be a JSON object (a struct or a map).
pub(super) fn encode_payload<P: Serialize + ?Sized>(
    function: &str,
    payload: &P,
) -> Result<serde_json::Value, CallError> {
    let encode = |reason: String| CallError::Encode {
        function: function.to_string(),
        reason,
    };
    let value = serde_json::to_value(payload).map_err(|e| encode(e.to_string()))?;
    if !value.is_object() {
        return Err(encode(format!(
            "a payload must be a JSON object (a struct or a map), not {value}"
        )));
    }
    Ok(value)
}

/// Deserializes a result (a handler's non-object result arrives wrapped as `{"value": v}`).
pub(crate) fn decode_result<R: DeserializeOwned>(
    function: &str,
    result: Option<&prost_types::Struct>,
) -> Result<R, CallError> {
    let value = opt_struct_to_json(result);
    match crate::typed::from_json::<R>(&value) {
        Ok(r) => Ok(r),
        Err(first) => {
            if let Some(inner) = value
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.get("value"))
                && let Ok(r) = crate::typed::from_json::<R>(inner)
            {
                return Ok(r);
            }
            Err(CallError::Decode {
                function: function.to_string(),
                reason: first,
            })
        }
    }
}

impl Client {
    /// Invokes `function` with a JSON payload. `UNAVAILABLE` is retried when the call is safe to
    /// repeat (an idempotency key, a query or idempotent function, or one listed in the retry
    /// policy), within the call's deadline.
    pub async fn invoke(
        &self,
        function: &str,
        payload: serde_json::Value,
        opts: &CallOptions,
    ) -> Result<InvokeFunctionResponse, Status> {
        let (game_id, env) = (opts.game_or_default(), opts.env_or_default());
        let payload = json_to_struct(&payload);
        let budget = opts.timeout.unwrap_or(self.default_timeout);
        let deadline = Instant::now() + budget + DEADLINE_GRACE;
        let safe = self.repeatable(&game_id, &env, function, opts);
        with_retries(
            &self.retry,
            &self.breaker,
            deadline,
            function,
            safe,
            |left| {
                // A retry gets what is left of the call's timeout.
                let server_timeout = opts.timeout.map(|_| left.saturating_sub(DEADLINE_GRACE));
                let mut req = Request::new(InvokeFunctionRequest {
                    game_id: game_id.clone(),
                    env: env.clone(),
                    function_id: function.to_string(),
                    payload: Some(payload.clone()),
                    options: Some(opts.to_proto_with(server_timeout)),
                });
                // A little over the server-side deadline, so the server's answer arrives first.
                req.set_timeout(left);
                let req = traced(req);
                let mut svc = self.function.clone();
                async move { svc.invoke_function(req).await.map(Response::into_inner) }
            },
        )
        .await
    }

    /// Invokes `function` with a typed payload and returns its typed result. A handler failure
    /// is [`CallError::Handler`] with its code and message; a gRPC failure (bad payload, no
    /// agent, deadline…) is [`CallError::Rpc`]. For a single-agent route: a broadcast has no
    /// single result (use [`Client::invoke`]).
    pub async fn invoke_typed<P, R>(
        &self,
        function: &str,
        payload: &P,
        opts: &CallOptions,
    ) -> Result<R, CallError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = encode_payload(function, payload)?;
        let resp = self
            .invoke(function, payload, opts)
            .await
            .map_err(|status| CallError::Rpc {
                function: function.to_string(),
                status,
            })?;
        if !resp.success {
            return Err(CallError::Handler {
                function: function.to_string(),
                agent_id: resp.agent_id,
                code: resp.error_code,
                message: resp.error,
            });
        }
        decode_result(function, resp.result.as_ref())
    }
}
