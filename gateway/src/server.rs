//! [`run`]: the gateway assembled, from its listeners to its shutdown.
//!
//! Shutdown, in the design's order, when `shutdown` resolves:
//! 1. stop accepting connections and logins; `/readyz` answers 503;
//! 2. tell every session: a GOAWAY frame (requests already sent will be answered; new ones get
//!    ERROR UNAVAILABLE; pushes are still delivered);
//! 3. let the calls in flight finish and their answers go out, within `shutdown_grace`;
//! 4. close every connection with CLOSE SHUTDOWN (sessions stay, offline);
//! 5. flush what must survive: with `offline.persist_path`, every session with pushes kept is
//!    written there (and read back at the next start); from here pushes are refused
//!    (UNAVAILABLE), so none is accepted and then lost;
//! 6. deregister: the agent says goodbye to the mesh;
//! 7. stop the background tasks and return.
//!
//! A second signal exits at once (the binary's signal handler does that).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use croupier_proto::gateway::v1::CloseReason;
use croupier_sdk::{ProviderConfig, TlsFiles};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{Ops, provider};
use crate::auth::Verifier;
use crate::cluster::Cluster;
use crate::config::{AuthMode, ClientTlsConfig, GatewayConfig};
use crate::conn::{self, ConnCtx};
use crate::error::GatewayError;
use crate::frame;
use crate::hub::{Hub, HubConfig, SessionRecord};
use crate::mesh::Mesh;

/// The sockets the gateway serves, bound by the caller (so tests can bind port 0).
pub struct Listeners {
    /// Game clients.
    pub clients: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: Option<TcpListener>,
    /// The push endpoint.
    pub push: Option<TcpListener>,
}

/// Things the caller may want to see while the gateway runs.
#[derive(Clone, Default)]
pub struct Signals {
    /// Cancelled the first time the gateway is registered on the mesh.
    pub registered: CancellationToken,
}

fn tls_acceptor(t: &ClientTlsConfig) -> Result<TlsAcceptor, GatewayError> {
    let read = |p: &Path, what: &'static str| {
        std::fs::read(p).map_err(|source| GatewayError::File {
            what,
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&t.cert, "reading the client TLS certificate")?;
    let key_pem = read(&t.key, "reading the client TLS key")?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", t.cert.display())))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", t.key.display())))?
        .ok_or_else(|| GatewayError::Tls(format!("{}: no private key", t.key.display())))?;
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn load_persisted(path: &Path) -> Result<Vec<SessionRecord>, GatewayError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(GatewayError::File {
                what: "reading the persisted queues",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping an unreadable persisted session");
            }
        }
    }
    Ok(out)
}

fn persist(path: &Path, records: &[SessionRecord]) -> Result<(), GatewayError> {
    let file_err = |source| GatewayError::File {
        what: "writing the persisted queues",
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(file_err)?;
    }
    std::fs::write(&tmp, text).map_err(file_err)?;
    std::fs::rename(&tmp, path).map_err(file_err)
}

/// Runs the gateway on `listeners` until `shutdown` resolves, then shuts down in order (see
/// the module docs).
pub async fn run(
    cfg: GatewayConfig,
    listeners: Listeners,
    prometheus: Option<PrometheusHandle>,
    signals: Signals,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    cfg.validate()?;
    let stem = if cfg.identity.is_empty() {
        format!("agent-{}", cfg.id)
    } else {
        cfg.identity.clone()
    };
    let files = TlsFiles::from_dir(&cfg.tls_dir, &stem);
    let pem = files
        .load()
        .map_err(|e| GatewayError::Mesh(e.to_string()))?;
    let acceptor = cfg.client_tls.as_ref().map(tls_acceptor).transpose()?;
    let mesh = Mesh::new(
        &cfg.servers,
        &pem,
        cfg.calls.channels,
        &cfg.game_id,
        &cfg.env,
        cfg.calls.retry_attempts,
    )?;
    let registry = croupier_sdk::tls::endpoint(&cfg.servers[0], &pem)
        .map(|e| croupier_sdk::Client::from_channel(e.connect_lazy()))
        .map_err(|e| GatewayError::Mesh(e.to_string()))?;

    let hub = Hub::new(HubConfig {
        gateway_id: cfg.id.clone(),
        max_messages: cfg.offline.max_messages,
        max_age: cfg.offline.max_age,
        retention: cfg.offline.retention,
        idle_timeout: cfg.idle_timeout,
        max_sessions: cfg.max_sessions,
        heartbeat: cfg.read_timeout / 3,
        max_frame_bytes: cfg.max_frame_bytes,
    });
    if let Some(p) = &cfg.offline.persist_path {
        let n = hub.restore(load_persisted(p)?);
        if n > 0 {
            tracing::info!(sessions = n, path = %p.display(), "restored persisted offline queues");
        }
    }
    let cluster = Cluster::new(
        hub.clone(),
        mesh.clone(),
        Some(registry),
        &cfg.game_id,
        &cfg.env,
        cfg.peers.handoff,
    );
    let ops = Arc::new(Ops {
        hub: hub.clone(),
        cluster: cluster.clone(),
    });
    let verifier = match cfg.auth.mode {
        AuthMode::Hmac => Verifier::Hmac(cfg.hmac_key()?),
        AuthMode::Mesh => Verifier::Mesh {
            mesh: mesh.clone(),
            function: cfg.auth.function.clone(),
            timeout: cfg.auth.timeout,
            gateway_id: cfg.id.clone(),
        },
    };
    let tracker = TaskTracker::new();
    let ctx = Arc::new(ConnCtx {
        hub: hub.clone(),
        verifier,
        mesh,
        cluster: cluster.clone(),
        routes: cfg.routes.iter().map(|r| (r.msg_id, r.clone())).collect(),
        calls: Arc::new(Semaphore::new(cfg.calls.max_in_flight)),
        tracker: tracker.clone(),
        per_session: cfg.calls.max_in_flight_per_session,
        queue_timeout: cfg.calls.queue_timeout,
        default_timeout: cfg.calls.default_timeout,
        max_frame_bytes: cfg.max_frame_bytes,
        login_timeout: cfg.login_timeout,
        read_timeout: cfg.read_timeout,
        outbound_queue: cfg.outbound_queue,
    });

    // The agent side: gateway.* on the mesh.
    let mut pcfg = ProviderConfig::new(cfg.servers.clone(), &cfg.id, files);
    pcfg.game_id = cfg.game_id.clone();
    pcfg.env = cfg.env.clone();
    pcfg.labels = cfg.labels.clone();
    pcfg.labels.insert("role".into(), "gateway".into());
    let prov = provider(pcfg, ops.clone());
    let mut state = prov.state();
    let provider_stop = CancellationToken::new();
    let provider_task = croupier_proto::task::spawn("run", prov.run(provider_stop.clone()));

    let background = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    {
        // Ready while registered; the first registration refreshes the peer list at once.
        let (ready, cluster, stop, registered) = (
            ready.clone(),
            cluster.clone(),
            background.clone(),
            signals.registered.clone(),
        );
        let refresh = cfg.peers.refresh;
        croupier_proto::task::spawn("run", async move {
            let mut tick = tokio::time::interval(refresh);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => cluster.refresh().await,
                    c = state.changed() => {
                        if c.is_err() { return; }
                        let connected = state.borrow().connected;
                        ready.store(connected, Ordering::Relaxed);
                        if connected {
                            cluster.refresh().await;
                            registered.cancel();
                        }
                    }
                }
            }
        });
    }
    {
        let (hub, stop, every) = (hub.clone(), background.clone(), cfg.sweep_interval);
        croupier_proto::task::spawn("run", async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => { hub.sweep(); }
                }
            }
        });
    }
    if let Some(l) = listeners.http {
        croupier_proto::task::spawn(
            "run",
            crate::http::serve_metrics(l, prometheus, ready.clone(), background.clone()),
        );
    }
    if let Some(l) = listeners.push {
        croupier_proto::task::spawn(
            "run",
            crate::http::serve_push(l, ops.clone(), cfg.push_token.clone(), background.clone()),
        );
    }

    // 1. Accept until shutdown.
    let conns = TaskTracker::new();
    tokio::pin!(shutdown);
    let clients = listeners.clients;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = clients.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        match &acceptor {
            None => {
                conns.spawn(conn::serve(ctx, stream, peer));
            }
            Some(a) => {
                let a = a.clone();
                let handshake = cfg.login_timeout;
                conns.spawn(async move {
                    match tokio::time::timeout(handshake, a.accept(stream)).await {
                        Ok(Ok(tls)) => conn::serve(ctx, tls, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(clients);
    drain(&cfg, &hub, &tracker, &conns, &ready).await;

    // 5. Flush.
    if let Some(p) = &cfg.offline.persist_path {
        let records = hub.records();
        match persist(p, &records) {
            Ok(()) => {
                tracing::info!(sessions = records.len(), path = %p.display(), "offline queues persisted");
            }
            Err(e) => tracing::error!(error = %e, "persisting the offline queues"),
        }
    }
    // 6. Deregister.
    provider_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), provider_task).await;
    // 7. Background tasks.
    background.cancel();
    tracing::info!(gateway_id = %cfg.id, "gateway stopped");
    Ok(())
}

/// Steps 1 to 4 of the shutdown (see the module docs).
async fn drain(
    cfg: &GatewayConfig,
    hub: &Hub,
    calls: &TaskTracker,
    conns: &TaskTracker,
    ready: &AtomicBool,
) {
    ready.store(false, Ordering::Relaxed);
    hub.set_draining();
    let online = hub.online();
    tracing::info!(
        sessions = online,
        "shutting down: no new connections; telling the sessions"
    );
    hub.tell_all(&frame::goaway(
        "the gateway is shutting down: requests already sent will be answered; reconnect",
    ));
    calls.close();
    let in_flight = calls.len();
    if tokio::time::timeout(cfg.shutdown_grace, calls.wait())
        .await
        .is_err()
    {
        tracing::warn!(left = calls.len(), grace = ?cfg.shutdown_grace, "calls still in flight after the grace period");
    } else if in_flight > 0 {
        tracing::info!(calls = in_flight, "calls in flight finished");
    }
    hub.close_all(
        CloseReason::Shutdown,
        "the gateway is shutting down; reconnect",
    );
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

/// Binds the listeners of `cfg`.
pub async fn bind(
    cfg: &GatewayConfig,
) -> Result<(Listeners, HashMap<&'static str, SocketAddr>), GatewayError> {
    async fn one(addr: &str) -> Result<TcpListener, GatewayError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: addr.to_string(),
                source,
            })
    }
    let clients = one(&cfg.listen).await?;
    let mut addrs = HashMap::new();
    addrs.insert(
        "clients",
        clients.local_addr().map_err(|source| GatewayError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?,
    );
    let http = match &cfg.http_listen {
        Some(a) => {
            let l = one(a).await?;
            if let Ok(x) = l.local_addr() {
                addrs.insert("http", x);
            }
            Some(l)
        }
        None => None,
    };
    let push = match &cfg.push_listen {
        Some(a) => {
            let l = one(a).await?;
            if let Ok(x) = l.local_addr() {
                addrs.insert("push", x);
            }
            Some(l)
        }
        None => None,
    };
    Ok((
        Listeners {
            clients,
            http,
            push,
        },
        addrs,
    ))
}
