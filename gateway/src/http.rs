//! The gateway's two plain-HTTP listeners (HTTP/1.1):
//!
//! - **`http_listen`**, for machines, changes nothing: `GET /metrics` (Prometheus text),
//!   `GET /healthz` (200 while the process runs), `GET /readyz` (200 while the gateway takes
//!   logins: registered on the mesh and not draining; 503 otherwise).
//! - **`push_listen`**, the design's server push over HTTP, for backends that are not on the
//!   mesh: `POST /v1/push`, `/v1/broadcast`, `/v1/kick`, `/v1/sessions` with the same JSON
//!   bodies and answers as the `gateway.*` functions ([`crate::agent`]). Every request needs
//!   `Authorization: Bearer <push_token>` (compared in constant time): 401 otherwise. Errors
//!   are `{"code", "error"}` with 400 (bad request), 503 (draining, mesh trouble) or 500.
//!
//! They are separate so that the metrics port can be exposed to a scraper without exposing a
//! port that pushes to players.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::Ops;
use crate::error::GatewayError;
use crate::metrics as m;

/// Largest push request body.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A response with a full body.
pub type Resp = Response<Full<Bytes>>;

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = text(status, serde_json::to_vec(v).unwrap_or_default());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Equal in constant time (over SHA-256 digests, so the length does not leak either).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` (also used by the server's
/// machine port).
pub async fn serve<F, Fut>(listener: TcpListener, shutdown: CancellationToken, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    continue;
                }
            },
        };
        let h = handler.clone();
        let stop = shutdown.clone();
        croupier_proto::task::spawn("gateway http", async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Serves a machine port until `shutdown`: `GET /metrics` (what `metrics` renders; 404 when
/// it renders nothing), `/healthz` (200 while the process serves) and `/readyz` (200 when `ready`
/// says so, else 503 with its reason); nothing else, and GET only. The gateway and the server's
/// and agent's HTTP ports all use it.
pub async fn serve_machine_port<M, MF, R, RF>(
    listener: TcpListener,
    shutdown: CancellationToken,
    metrics: M,
    ready: R,
) where
    M: Fn() -> MF + Clone + Send + Sync + 'static,
    MF: std::future::Future<Output = Option<String>> + Send + 'static,
    R: Fn() -> RF + Clone + Send + Sync + 'static,
    RF: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    serve(listener, shutdown, move |req: Request<Incoming>| {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        async move {
            if req.method() != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
            }
            match req.uri().path() {
                "/metrics" => match metrics().await {
                    Some(body) => text(StatusCode::OK, body),
                    None => text(StatusCode::NOT_FOUND, "no metrics recorder\n"),
                },
                "/healthz" => text(StatusCode::OK, "ok\n"),
                "/readyz" => match ready().await {
                    Ok(()) => text(StatusCode::OK, "ready\n"),
                    Err(why) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                },
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found: this port serves /metrics, /healthz and /readyz\n",
                ),
            }
        }
    })
    .await;
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`: ready while `ready` is set.
pub async fn serve_metrics(
    listener: TcpListener,
    prometheus: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let prometheus = Arc::new(prometheus);
    serve_machine_port(
        listener,
        shutdown,
        move || {
            let body = prometheus.as_ref().as_ref().map(PrometheusHandle::render);
            async move { body }
        },
        move || {
            let ok = ready.load(Ordering::Relaxed);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("not taking logins (not registered on the mesh, or draining)".to_string())
                }
            }
        },
    )
    .await;
}

/// Serves the push endpoint until `shutdown`.
pub async fn serve_push(
    listener: TcpListener,
    ops: Arc<Ops>,
    token: String,
    shutdown: CancellationToken,
) {
    let token = Arc::new(format!("Bearer {token}"));
    serve(listener, shutdown, move |req: Request<Incoming>| {
        let (ops, token) = (ops.clone(), token.clone());
        async move {
            let path = req.uri().path().to_string();
            let resp = push_request(&ops, &token, req).await;
            let status = resp.status().as_u16().to_string();
            metrics::counter!(m::HTTP_PUSH, "path" => path, "status" => status).increment(1);
            resp
        }
    })
    .await;
}

async fn push_request(ops: &Ops, token: &str, req: Request<Incoming>) -> Resp {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| same_secret(v.as_bytes(), token.as_bytes()));
    if !authorized {
        let body = serde_json::json!({"code": "UNAUTHENTICATED", "error": "a valid bearer token is required"});
        return json(StatusCode::UNAUTHORIZED, &body);
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let body = serde_json::json!({"code": "INVALID_ARGUMENT", "error": format!("reading the body (at most {MAX_BODY_BYTES} bytes): {e}")});
            return json(StatusCode::BAD_REQUEST, &body);
        }
    };
    let v: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let body = serde_json::json!({"code": "INVALID_ARGUMENT", "error": format!("the body is not JSON: {e}")});
                return json(StatusCode::BAD_REQUEST, &body);
            }
        }
    };
    let result = match path.as_str() {
        "/v1/push" => ops.push(v).await,
        "/v1/broadcast" => ops.broadcast(v),
        "/v1/kick" => ops.kick(v).await,
        "/v1/sessions" => ops.sessions(v),
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    match result {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => {
            let status = match &e {
                GatewayError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                GatewayError::Draining | GatewayError::Mesh(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json(
                status,
                &serde_json::json!({"code": e.code(), "error": e.to_string()}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret(b"Bearer abc", b"Bearer abc"));
        assert!(!same_secret(b"Bearer abd", b"Bearer abc"));
        assert!(!same_secret(b"Bearer ab", b"Bearer abc"));
        assert!(!same_secret(b"", b"Bearer abc"));
    }
}
