//! `POST /api/rpc/{Method}`: the console's API is the mesh's own rpcs, in protobuf JSON.
//!
//! The request body is the rpc's request message as protobuf JSON (proto field names;
//! unknown fields are refused); the answer is the response message the same way, 64-bit
//! integers as numbers and every field present. The handler is the one the mTLS port runs,
//! called in-process with the caller's [`Identity`] in the request extensions, so the policy,
//! scopes, approvals and the audit apply exactly as they do to a certificate. Only the rpcs in
//! [`METHODS`] are reachable; agents' rpcs (`RegisterAgent`, `Connect`…) are not.
//!
//! A failed rpc answers `{"code", "message", "reason", "details"}` with an HTTP status for its gRPC code;
//! `reason` and `details` are the `ErrorInfo` the handler attached (`APPROVAL_REQUIRED` with
//! the approval id…).

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use croupier_proto::control::v1::control_service_server::ControlService;
use croupier_proto::function::v1::function_service_server::FunctionService;
use croupier_proto::registry::v1::registry_service_server::RegistryService;
use croupier_registry::identity::Identity;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use serde_json::json;
use tonic_types::StatusExt;

use crate::Console;
use crate::auth::{Principal, error};

/// Every rpc the console forwards, with its service.
pub const METHODS: &[(&str, &str)] = &[
    ("croupier.control.v1.ControlService", "SetNodeState"),
    ("croupier.control.v1.ControlService", "GetNodeResources"),
    ("croupier.control.v1.ControlService", "QueryNodeMetrics"),
    ("croupier.control.v1.ControlService", "ListAudit"),
    ("croupier.control.v1.ControlService", "GetPolicy"),
    ("croupier.control.v1.ControlService", "TestPolicy"),
    ("croupier.control.v1.ControlService", "ListAssignments"),
    ("croupier.control.v1.ControlService", "ListUsers"),
    ("croupier.control.v1.ControlService", "ListTokens"),
    ("croupier.function.v1.FunctionService", "InvokeFunction"),
    ("croupier.function.v1.FunctionService", "InvokeJob"),
    ("croupier.function.v1.FunctionService", "CancelJob"),
    ("croupier.function.v1.FunctionService", "GetJob"),
    ("croupier.function.v1.FunctionService", "ListJobs"),
    ("croupier.function.v1.FunctionService", "GetStepLog"),
    ("croupier.function.v1.FunctionService", "ListPipelines"),
    ("croupier.function.v1.FunctionService", "GetPipeline"),
    ("croupier.function.v1.FunctionService", "PutPipeline"),
    ("croupier.function.v1.FunctionService", "DeletePipeline"),
    ("croupier.function.v1.FunctionService", "ListApprovals"),
    ("croupier.function.v1.FunctionService", "GetApproval"),
    ("croupier.function.v1.FunctionService", "DecideApproval"),
    ("croupier.function.v1.FunctionService", "GetFunctionStats"),
    ("croupier.registry.v1.RegistryService", "GetRegistrations"),
    ("croupier.registry.v1.RegistryService", "ListAgents"),
    ("croupier.registry.v1.RegistryService", "GetServerInfo"),
    ("croupier.registry.v1.RegistryService", "WatchRegistrations"),
    ("croupier.function.v1.FunctionService", "StreamJobEvents"),
    ("croupier.control.v1.ControlService", "StreamNodeEvents"),
];

/// Protobuf JSON for the rpcs in [`METHODS`], from the compiled descriptor set.
pub struct Transcoder {
    pool: DescriptorPool,
}

/// A failed rpc or a body that does not decode, as an HTTP answer (boxed: an error path
/// need not make every `Result` large).
#[derive(Debug)]
pub struct ApiError(pub Box<Response>);

impl From<Response> for ApiError {
    fn from(resp: Response) -> Self {
        ApiError(Box::new(resp))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        ApiError::from(status_response(&status))
    }
}

/// The HTTP answer for a gRPC status.
pub fn status_response(status: &tonic::Status) -> Response {
    use tonic::Code;
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let info = status.get_details_error_info();
    let reason = info.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
    let details = info.map(|i| i.metadata).unwrap_or_default();
    (
        http,
        Json(json!({
            "code": crate::rpc::code_name(status.code()),
            "message": status.message(),
            "reason": reason,
            "details": details,
        })),
    )
        .into_response()
}

/// A gRPC code as its canonical name: `NOT_FOUND`, `INVALID_ARGUMENT`…
pub fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl Transcoder {
    pub(crate) fn new() -> anyhow::Result<Transcoder> {
        let pool = DescriptorPool::decode(croupier_proto::FILE_DESCRIPTOR_SET)?;
        for (service, method) in METHODS {
            let s = pool
                .get_service_by_name(service)
                .ok_or_else(|| anyhow::anyhow!("no service {service} in the descriptors"))?;
            anyhow::ensure!(
                s.methods().any(|m| m.name() == *method),
                "no rpc {service}.{method} in the descriptors"
            );
        }
        Ok(Transcoder { pool })
    }

    /// The descriptor of an rpc the console forwards.
    pub fn method(&self, name: &str) -> Option<MethodDescriptor> {
        let (service, _) = METHODS.iter().find(|(_, m)| *m == name)?;
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == name)
    }

    /// Decodes protobuf JSON into the prost message `T` described by `desc`.
    pub fn decode<T: prost::Message + Default>(
        desc: MessageDescriptor,
        body: &[u8],
    ) -> Result<T, ApiError> {
        let bad = |e: String| {
            ApiError::from(error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                format!("the body is not a valid {}: {e}", desc.full_name()),
            ))
        };
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            body
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        let dynamic = DynamicMessage::deserialize_with_options(
            desc.clone(),
            &mut de,
            &prost_reflect::DeserializeOptions::new().deny_unknown_fields(true),
        )
        .map_err(|e| bad(e.to_string()))?;
        de.end().map_err(|e| bad(e.to_string()))?;
        dynamic.transcode_to::<T>().map_err(|e| bad(e.to_string()))
    }

    /// Encodes the prost message `msg` described by `desc` as protobuf JSON.
    pub fn encode<T: prost::Message>(desc: MessageDescriptor, msg: &T) -> serde_json::Value {
        let bytes = msg.encode_to_vec();
        match DynamicMessage::decode(desc, bytes.as_slice()) {
            Ok(dynamic) => {
                let options = prost_reflect::SerializeOptions::new()
                    .use_proto_field_name(true)
                    .stringify_64_bit_integers(false)
                    .skip_default_fields(false);
                dynamic
                    .serialize_with_options(serde_json::value::Serializer, &options)
                    .unwrap_or_else(|e| json!({"encoding_error": e.to_string()}))
            }
            Err(e) => json!({"encoding_error": e.to_string()}),
        }
    }
}

/// The request `req` as a tonic request from `who`.
pub fn request<T>(req: T, who: &Identity) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    r.extensions_mut().insert(who.clone());
    r
}

async fn unary<Req, Resp, F, Fut>(
    method: &MethodDescriptor,
    body: &[u8],
    who: &Identity,
    call: F,
) -> Result<serde_json::Value, ApiError>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let req: Req = Transcoder::decode(method.input(), body)?;
    let resp = call(request(req, who)).await?;
    Ok(Transcoder::encode(method.output(), resp.get_ref()))
}

/// `POST /api/rpc/{Method}`.
pub async fn call(
    State(console): State<Arc<Console>>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(m) = console.rpc.method(&name) else {
        return Err(ApiError::from(error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_RPC",
            format!(
                "the console does not forward {name:?}; it forwards: {}",
                METHODS
                    .iter()
                    .map(|(_, m)| *m)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )));
    };
    if m.is_server_streaming() {
        return Err(ApiError::from(error(
            StatusCode::BAD_REQUEST,
            "STREAMING_RPC",
            format!("{name} streams: read it with GET /api/stream/{name}"),
        )));
    }
    let b = &console.backend;
    let (c, f, r) = (&*b.control, &*b.function, &*b.registry);
    let who = &p.identity;
    let out = match name.as_str() {
        "SetNodeState" => unary(&m, &body, who, |q| c.set_node_state(q)).await,
        "GetNodeResources" => unary(&m, &body, who, |q| c.get_node_resources(q)).await,
        "QueryNodeMetrics" => unary(&m, &body, who, |q| c.query_node_metrics(q)).await,
        "ListAudit" => unary(&m, &body, who, |q| c.list_audit(q)).await,
        "GetPolicy" => unary(&m, &body, who, |q| c.get_policy(q)).await,
        "TestPolicy" => unary(&m, &body, who, |q| c.test_policy(q)).await,
        "ListAssignments" => unary(&m, &body, who, |q| c.list_assignments(q)).await,
        "ListUsers" => unary(&m, &body, who, |q| c.list_users(q)).await,
        "ListTokens" => unary(&m, &body, who, |q| c.list_tokens(q)).await,
        "InvokeFunction" => unary(&m, &body, who, |q| f.invoke_function(q)).await,
        "InvokeJob" => unary(&m, &body, who, |q| f.invoke_job(q)).await,
        "CancelJob" => unary(&m, &body, who, |q| f.cancel_job(q)).await,
        "GetJob" => unary(&m, &body, who, |q| f.get_job(q)).await,
        "ListJobs" => unary(&m, &body, who, |q| f.list_jobs(q)).await,
        "GetStepLog" => unary(&m, &body, who, |q| f.get_step_log(q)).await,
        "ListPipelines" => unary(&m, &body, who, |q| f.list_pipelines(q)).await,
        "GetPipeline" => unary(&m, &body, who, |q| f.get_pipeline(q)).await,
        "PutPipeline" => unary(&m, &body, who, |q| f.put_pipeline(q)).await,
        "DeletePipeline" => unary(&m, &body, who, |q| f.delete_pipeline(q)).await,
        "ListApprovals" => unary(&m, &body, who, |q| f.list_approvals(q)).await,
        "GetApproval" => unary(&m, &body, who, |q| f.get_approval(q)).await,
        "DecideApproval" => unary(&m, &body, who, |q| f.decide_approval(q)).await,
        "GetFunctionStats" => unary(&m, &body, who, |q| f.get_function_stats(q)).await,
        "GetRegistrations" => unary(&m, &body, who, |q| r.get_registrations(q)).await,
        "ListAgents" => unary(&m, &body, who, |q| r.list_agents(q)).await,
        "GetServerInfo" => unary(&m, &body, who, |q| r.get_server_info(q)).await,
        _ => Err(ApiError::from(error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_RPC",
            format!("{name} is listed but not dispatched"),
        ))),
    }?;
    Ok(Json(out))
}

/// `GET /api/audit/verify`: checks this server's audit chain against its checkpoint, as
/// `croupier audit verify --ask-server` does (admins: the checkpoint comes from `ListAudit`).
pub async fn verify_audit(
    State(console): State<Arc<Console>>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use croupier_control::audit::chain;
    let head = console
        .backend
        .control
        .list_audit(request(
            croupier_proto::control::v1::ListAuditRequest {
                limit: 1,
                ..Default::default()
            },
            &p.identity,
        ))
        .await?
        .into_inner();
    let Some(path) = console
        .backend
        .audit
        .path()
        .map(std::path::Path::to_path_buf)
    else {
        return Ok(Json(json!({"enabled": false})));
    };
    let checkpoint = (head.checkpoint_seq > 0).then(|| chain::Head {
        seq: head.checkpoint_seq,
        hash: head.checkpoint_hash.clone(),
    });
    let outcome = tokio::task::spawn_blocking(move || {
        chain::verify(&chain::log_files(&path), checkpoint.as_ref())
    })
    .await
    .map_err(|e| {
        ApiError::from(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            e.to_string(),
        ))
    })?;
    Ok(Json(match outcome {
        Ok(v) => json!({
            "enabled": true, "ok": true, "records": v.records, "first_seq": v.first_seq,
            "head": {"seq": v.head.seq, "hash": v.head.hash},
            "checkpoint_seq": head.checkpoint_seq,
        }),
        Err(b) => json!({"enabled": true, "ok": false, "broken": b.to_string()}),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_proto::function::v1 as fpb;

    #[test]
    fn every_listed_rpc_has_a_descriptor_and_json_round_trips() {
        let t = Transcoder::new().unwrap();
        let m = t.method("InvokeFunction").unwrap();
        let req: fpb::InvokeFunctionRequest = Transcoder::decode(
            m.input(),
            br#"{"game_id":"g","env":"e","function_id":"agent.ping","payload":{"a":[1,"x",{"b":true}]},"options":{"timeout":5,"routing_mode":"broadcast"}}"#,
        )
        .unwrap();
        assert_eq!(req.function_id, "agent.ping");
        assert_eq!(req.options.as_ref().unwrap().routing_mode, "broadcast");
        let back = Transcoder::encode(m.input(), &req);
        assert_eq!(back["payload"]["a"][2]["b"], true);
        assert_eq!(back["options"]["timeout"], 5);
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused_with_the_message_named() {
        let t = Transcoder::new().unwrap();
        let m = t.method("GetJob").unwrap();
        let err = Transcoder::decode::<fpb::GetJobRequest>(m.input(), br#"{"jobid":"x"}"#)
            .err()
            .unwrap();
        assert_eq!(err.0.status(), StatusCode::BAD_REQUEST);
        assert!(Transcoder::decode::<fpb::GetJobRequest>(m.input(), b"{").is_err());
        assert!(t.method("RegisterAgent").is_none());
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }
}
