//! A tower layer that counts every rpc the server answers ([`RPC_TOTAL`] by `rpc` and `code`)
//! and times it ([`RPC_SECONDS`]). The `rpc` label is `Service/Method` for the methods the
//! protos define (and gRPC health and reflection); any other path is `other`, so a client
//! cannot grow the label set. The code is read from the response headers: a unary error is a
//! trailers-only response that carries `grpc-status` there; a response without it opened fine
//! (`OK`; a stream's final status is not counted).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;
use tonic::codegen::http;

use crate::metrics::{RPC_SECONDS, RPC_TOTAL};

/// The layer: wraps the server's routes.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    /// Each known method's path and its label.
    known: Arc<HashMap<String, Arc<str>>>,
    handles: Arc<croupier_proto::metric_handles::Handles>,
}

impl RpcMetricsLayer {
    /// A layer that knows the methods of the croupier protos, gRPC health and reflection.
    pub fn new() -> RpcMetricsLayer {
        let mut known = HashMap::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(croupier_proto::FILE_DESCRIPTOR_SET)
        {
            for file in set.file {
                for svc in &file.service {
                    for m in &svc.method {
                        let path = format!("/{}.{}/{}", file.package(), svc.name(), m.name());
                        known.insert(path.clone(), label(&path));
                    }
                }
            }
        }
        for extra in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            known.insert(extra.to_string(), label(extra));
        }
        RpcMetricsLayer {
            known: Arc::new(known),
            handles: Default::default(),
        }
    }

    fn label(&self, path: &str) -> Arc<str> {
        self.known
            .get(path)
            .cloned()
            .unwrap_or_else(|| Arc::from("other"))
    }
}

/// "/croupier.function.v1.FunctionService/InvokeFunction" → "FunctionService/InvokeFunction".
fn label(path: &str) -> Arc<str> {
    let (svc, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let svc = svc.rsplit('.').next().unwrap_or(svc);
    Arc::from(format!("{svc}/{method}"))
}

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        RpcMetricsLayer::new()
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = self.layer.label(req.uri().path());
        let handles = self.layer.handles.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            let code = match &resp {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", code_name),
                Err(_) => "UNKNOWN",
            };
            let took = started.elapsed().as_secs_f64();
            handles.record(&[&rpc, code], took, || {
                (
                    metrics::counter!(RPC_TOTAL, "rpc" => rpc.to_string(), "code" => code),
                    metrics::histogram!(RPC_SECONDS, "rpc" => rpc.to_string()),
                )
            });
            resp
        })
    }
}

/// The upper-case name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_defined_methods_or_other() {
        let l = RpcMetricsLayer::new();
        assert_eq!(
            &*l.label("/croupier.function.v1.FunctionService/InvokeFunction"),
            "FunctionService/InvokeFunction"
        );
        assert_eq!(&*l.label("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(
            &*l.label("/croupier.function.v1.FunctionService/MadeUp"),
            "other"
        );
        assert_eq!(&*l.label("/x"), "other");
        assert_eq!(code_name(7), "PERMISSION_DENIED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
