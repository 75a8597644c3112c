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
use croupier_gateway::http::serve_machine_port;
use croupier_registry::store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
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
    let probe = ready.clone();
    croupier_proto::task::spawn(
        "http port",
        serve_machine_port(
            listener,
            shutdown,
            move || {
                let (prometheus, gauges, ready) =
                    (prometheus.clone(), gauges.clone(), ready.clone());
                async move {
                    let h = prometheus?;
                    let ok = ready.check().await.is_ok();
                    metrics::gauge!(READY).set(if ok { 1.0 } else { 0.0 });
                    gauges.update();
                    Some(h.render())
                }
            },
            move || {
                let probe = probe.clone();
                async move { probe.check().await }
            },
        ),
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
        serve_machine_port(
            listener,
            shutdown,
            move || {
                process.collect();
                let body = prometheus.as_ref().map(PrometheusHandle::render);
                async move { body }
            },
            move || {
                let connected = state.borrow().connected;
                async move {
                    if connected {
                        Ok(())
                    } else {
                        Err("no tunnel to a server".to_string())
                    }
                }
            },
        ),
    );
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_registry::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn ready_while_the_store_answers_and_not_while_draining() {
        let ready = Readiness {
            store: Arc::new(EmbeddedStore::in_memory()),
            draining: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(ready.check().await, Ok(()));
        ready.draining.store(true, Ordering::Relaxed);
        assert_eq!(ready.check().await, Err("draining".to_string()));
    }
}
