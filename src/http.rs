//! The server's plain-HTTP port for machines (`--http-listen`, config `[http] listen`): `GET
//! /metrics` (Prometheus text), `GET /healthz` (200 while the process serves) and `GET /readyz`
//! (200 while the store answers and the server is not draining, 503 otherwise). No client
//! certificate is needed, nothing else is exposed, and nothing changes state.
//!
//! Unset, it listens on [`DEFAULT_LISTEN`], or on a free port of 127.0.0.1 when that one is
//! taken (several servers on one machine); an address that is configured must bind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use croupier_gateway::http::{serve, text};
use croupier_registry::store::Store;
use hyper::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{READY, ScrapeGauges};

/// Where the port listens when the configuration says nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// How long `/readyz` waits for the store.
const STORE_PROBE: Duration = Duration::from_secs(2);

/// Binds the port: `listen` None is the default (with a fallback to a free port), `""` is off.
pub async fn bind(listen: Option<&str>) -> anyhow::Result<Option<TcpListener>> {
    match listen {
        Some("") => Ok(None),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .with_context(|| format!("binding the HTTP port {addr} (http.listen)")),
        None => match TcpListener::bind(DEFAULT_LISTEN).await {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                tracing::warn!(error = %e, "{DEFAULT_LISTEN} is taken; the HTTP port takes a free one (set http.listen to choose)");
                Ok(Some(TcpListener::bind("127.0.0.1:0").await?))
            }
        },
    }
}

/// What `/readyz` looks at.
pub struct Readiness {
    /// The store (probed with a read).
    pub store: Arc<dyn Store>,
    /// Set when the server starts draining.
    pub draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Ready: not draining, and the store answers a read within [`STORE_PROBE`]. The reason
    /// when not.
    pub async fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        match tokio::time::timeout(STORE_PROBE, self.store.get(croupier_registry::keys::POLICY))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("store: {e}")),
            Err(_) => Err(format!("store: no answer within {STORE_PROBE:?}")),
        }
    }
}

/// Serves the port on `listener` until `shutdown`; returns its address.
pub fn spawn(
    listener: TcpListener,
    gauges: Arc<ScrapeGauges>,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let prometheus = crate::metrics::prometheus();
    croupier_proto::task::spawn(
        "http port",
        serve(listener, shutdown, move |req| {
            let (prometheus, gauges, ready) = (prometheus.clone(), gauges.clone(), ready.clone());
            async move {
                if req.method() != Method::GET {
                    return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
                }
                match req.uri().path() {
                    "/metrics" => match &prometheus {
                        Some(h) => {
                            let ok = ready.check().await.is_ok();
                            metrics::gauge!(READY).set(if ok { 1.0 } else { 0.0 });
                            gauges.update();
                            text(StatusCode::OK, h.render())
                        }
                        None => text(
                            StatusCode::NOT_FOUND,
                            "no metrics: another recorder was installed in this process\n",
                        ),
                    },
                    "/healthz" => text(StatusCode::OK, "ok\n"),
                    "/readyz" => match ready.check().await {
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
        }),
    );
    Ok(addr)
}

/// Serves an agent's port on `listener` until `shutdown`: `/metrics` (the provider's and the
/// packs' metrics), `/healthz`, and `/readyz` (200 while the tunnel to a server is open).
pub fn spawn_agent(
    listener: TcpListener,
    state: tokio::sync::watch::Receiver<croupier_sdk::provider::ProviderState>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let prometheus = crate::metrics::prometheus();
    croupier_sdk::metrics::describe();
    croupier_agent::metrics::describe();
    let process = Arc::new(metrics_process::Collector::default());
    croupier_proto::task::spawn(
        "agent http port",
        serve(listener, shutdown, move |req| {
            let (prometheus, state, process) = (prometheus.clone(), state.clone(), process.clone());
            async move {
                if req.method() != Method::GET {
                    return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
                }
                let connected = state.borrow().connected;
                match req.uri().path() {
                    "/metrics" => match &prometheus {
                        Some(h) => {
                            process.collect();
                            text(StatusCode::OK, h.render())
                        }
                        None => text(StatusCode::NOT_FOUND, "no metrics recorder\n"),
                    },
                    "/healthz" => text(StatusCode::OK, "ok\n"),
                    "/readyz" if connected => text(StatusCode::OK, "ready\n"),
                    "/readyz" => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no tunnel to a server\n",
                    ),
                    _ => text(
                        StatusCode::NOT_FOUND,
                        "not found: this port serves /metrics, /healthz and /readyz\n",
                    ),
                }
            }
        }),
    );
    Ok(addr)
}
