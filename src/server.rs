//! Assembles the control plane on one mTLS port: `ControlService`, `FunctionService`,
//! `RegistryService`, `grpc.health.v1` and server reflection, with the caller's identity taken
//! from its certificate by an interceptor.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use croupier_control::audit::{AuditLog, AuditOptions, Checkpoint};
use croupier_control::service::ControlServer;
use croupier_control::{AgentLink, ControlConfig, ControlPlane};
use croupier_function::approval::Approvals;
use croupier_function::forward::Forwarder;
use croupier_function::pipeline::Pipelines;
use croupier_function::service::FunctionServer;
use croupier_function::{InvokeConfig, Invoker, JobConfig, JobManager};
use croupier_proto::control::v1::control_service_server::ControlServiceServer;
use croupier_proto::function::v1::function_service_server::FunctionServiceServer;
use croupier_proto::registry::v1::registry_service_server::RegistryServiceServer;
use croupier_registry::identity::IdentityResolver;
use croupier_registry::model::{ServerRecord, now_ms};
use croupier_registry::service::RegistryServer;
use croupier_registry::store::embedded::{EmbeddedOptions, EmbeddedStore};
use croupier_registry::store::etcd::{EtcdOptions, EtcdStore};
use croupier_registry::store::{Store, StoreError};
use croupier_registry::view::RegistryView;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::config::{ServerConfig, StoreKind};

/// Service names reported by `grpc.health.v1`.
const SERVICES: &[&str] = &[
    "croupier.control.v1.ControlService",
    "croupier.function.v1.FunctionService",
    "croupier.registry.v1.RegistryService",
];

/// How often expired idempotency records are swept.
const IDEM_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Server TLS from `ca.pem`, `server.pem` and `server.key` in `dir`. Clients must present a
/// certificate signed by the CA: plaintext and unknown-CA clients fail the handshake.
pub fn server_tls(dir: &std::path::Path) -> anyhow::Result<ServerTlsConfig> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (make certificates with `croupier certs init --dir {}`)",
                p.display(),
                dir.display()
            )
        })
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.pem")?, read("server.key")?))
        .client_ca_root(Certificate::from_pem(read("ca.pem")?)))
}

/// The server's certificate chain and key from `server.pem` and `server.key` in `dir`, and a
/// reader of the directory's other files that names the file and the fix when one is missing.
#[allow(clippy::type_complexity)]
pub fn server_cert(
    dir: &std::path::Path,
) -> anyhow::Result<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
    impl Fn(&str) -> anyhow::Result<Vec<u8>>,
)> {
    let dir = dir.to_path_buf();
    let read = move |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| {
            format!(
                "reading {} (make certificates with `croupier certs init --dir {}`)",
                p.display(),
                dir.display()
            )
        })
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut read("server.pem")?.as_slice())
        .collect::<Result<_, _>>()
        .context("parsing server.pem")?;
    let key = rustls_pemfile::private_key(&mut read("server.key")?.as_slice())
        .context("parsing server.key")?
        .context("server.key holds no private key")?;
    Ok((certs, key, read))
}

/// The rustls configuration of the one port, from `ca.pem`, `server.pem` and `server.key` in
/// `dir`: the server's certificate, a client certificate signed by the CA required, HTTP/2.
pub fn rustls_config(dir: &std::path::Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (certs, key, read) = server_cert(dir)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut read("ca.pem")?.as_slice()) {
        roots.add(ca.context("parsing ca.pem")?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .context("building the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("loading the server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens the embedded store in `<data_dir>/store`. A damaged log stops the server with where the
/// damage is and what to run; a dropped torn last record and a converted version 1 log are
/// printed.
fn open_embedded(cfg: &ServerConfig) -> anyhow::Result<EmbeddedStore> {
    let opts = EmbeddedOptions::default().with_fsync(cfg.store_fsync);
    let data = cfg.data_dir.display();
    let store = match EmbeddedStore::open_with(&cfg.data_dir.join("store"), opts) {
        Ok(store) => store,
        Err(StoreError::Corrupt(c)) => anyhow::bail!(
            "the embedded store is damaged: {c}. The server will not start on it and left the file \
             untouched. See what is wrong with `croupier store check --data-dir {data}` and \
             repair it with `croupier store repair --data-dir {data}` (it keeps a copy of the \
             original)"
        ),
        // The message once: the I/O source of `e` says the same again.
        Err(e) => anyhow::bail!("opening the store in {data}: {e}"),
    };
    let report = store.open_report();
    if let Some(torn) = &report.torn_tail {
        println!("croupier server: embedded store: {torn}");
    }
    if let Some(kept) = &report.converted_from_v1 {
        println!(
            "croupier server: embedded store: converted the log to format version 2; the \
             version 1 log is kept as {}",
            kept.display()
        );
    }
    Ok(store)
}

/// What `GetServerInfo` answers: this binary's version and commit, the server id and store.
fn server_info(cfg: &ServerConfig) -> croupier_proto::registry::v1::GetServerInfoResponse {
    croupier_proto::registry::v1::GetServerInfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("CROUPIER_COMMIT").into(),
        server_id: cfg.server_id.clone(),
        store: match cfg.store {
            StoreKind::Embedded => "embedded",
            StoreKind::Etcd => "etcd",
        }
        .into(),
        started_at: croupier_registry::model::now_ms(),
    }
}

/// Every service accepts gzip-compressed requests and answers compressed to a client that
/// accepts gzip (`grpc-accept-encoding`), as gRPC negotiates it. The SDK's clients ask for it
/// only when told (`Client::with_gzip`, the CLI's `--gzip`), and agents not at all: their
/// payloads are small, and on a LAN compression costs more than it saves.
const GZIP: tonic::codec::CompressionEncoding = tonic::codec::CompressionEncoding::Gzip;

/// Runs the server on `listener` until `shutdown` resolves, then drains: health goes
/// NOT_SERVING, new registrations are refused, agents are told to go away, in-flight calls get
/// up to `shutdown_grace` to finish, watches end, and the listener closes. Returns once the
/// background tasks have finished (the job writer's last flush, at most `shutdown_grace`) and
/// the store is closed (the embedded store's data dir is unlocked and its revision written).
pub async fn serve(
    cfg: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let store = open_store(&cfg).await?;
    serve_store(cfg, store, listener, shutdown).await
}

/// [`serve`] on a store opened before (by [`open_store`]), e.g. to fail before anything else
/// starts when the data dir is held by another process. Closes the store when it returns.
pub async fn serve_store(
    cfg: ServerConfig,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let served = match rustls_config(&cfg.tls_dir) {
        Ok(tls) => serve_on(cfg, store.clone(), tls, listener, shutdown).await,
        Err(e) => Err(e),
    };
    // Tasks that still hold the store (connections past their grace) can no longer write to
    // it: the embedded store's data dir is unlocked and its revision recorded.
    store.close().await;
    served
}

/// Opens the configured store: the embedded one in `data_dir` (created when missing; fails at
/// once when another process holds it) or etcd.
pub async fn open_store(cfg: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let (store, backend): (Arc<dyn Store>, &'static str) = match cfg.store {
        StoreKind::Embedded => (Arc::new(open_embedded(cfg)?), "embedded"),
        StoreKind::Etcd => (
            Arc::new(
                EtcdStore::connect(EtcdOptions {
                    endpoints: cfg.etcd_endpoints.clone(),
                    namespace: cfg.etcd_namespace.clone(),
                    ca: cfg.etcd_ca.clone(),
                    cert: cfg.etcd_cert.clone(),
                    key: cfg.etcd_key.clone(),
                    timeout: None,
                })
                .await
                .context("connecting to etcd")?,
            ),
            "etcd",
        ),
    };
    Ok(Arc::new(croupier_registry::store::metered::Metered::new(
        store, backend,
    )))
}

async fn serve_on(
    cfg: ServerConfig,
    store: Arc<dyn Store>,
    tls: Arc<rustls::ServerConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let fd_limit = crate::gate::raise_fd_limit();
    let background = CancellationToken::new();
    // The background tasks that must finish their work (the job writer's last flush, the
    // server registration's revoke) before serve returns.
    let tasks = croupier_proto::task::TaskTracker::new();
    let view = RegistryView::start(store.clone(), background.child_token())
        .await
        .context("loading the registry")?;
    let audit = if cfg.audit_log {
        let opts = AuditOptions {
            max_payload_bytes: cfg.audit.max_payload_bytes,
            max_file_bytes: cfg.audit.max_file_bytes,
            keep_files: cfg.audit.keep_files,
            fail_closed: cfg.audit.fail_closed,
            write_timeout: cfg.audit.write_timeout,
        };
        let checkpoint = Checkpoint {
            store: store.clone(),
            key: croupier_registry::keys::audit_head(&cfg.server_id),
        };
        AuditLog::to_file_with(&cfg.data_dir.join("audit.log"), opts, Some(checkpoint))
            .await
            .context("opening the audit log")?
    } else {
        AuditLog::disabled()
    };
    let control = ControlPlane::start(
        ControlConfig {
            server_id: cfg.server_id.clone(),
            heartbeat_interval: cfg.heartbeat_interval,
            missed_heartbeats: cfg.missed_heartbeats,
            max_labels: cfg.limits.max_labels,
            max_functions: cfg.limits.max_functions_per_agent,
            tunnel_queue: 1024,
            max_message_bytes: cfg.limits.max_message_bytes,
            max_descriptor_bytes: cfg.limits.max_descriptor_bytes,
            max_functions_per_scope: cfg.limits.max_functions_per_scope,
            max_status_entries: cfg.limits.max_status_entries,
            max_status_bytes: cfg.limits.max_status_bytes,
            max_text_chars: cfg.limits.max_text_chars,
            schema_limits: cfg.limits.schema(),
            events_retained: cfg.fleet.events_retained,
            events_max_age: cfg.fleet.events_max_age,
            inventory_versions: cfg.fleet.inventory_versions,
            metrics_history: croupier_control::fleet::HistoryTimes {
                raw_for: cfg.fleet.metrics_raw_for,
                step: cfg.fleet.metrics_step,
                keep: cfg.fleet.metrics_keep,
            },
        },
        store.clone(),
        view.clone(),
        audit.clone(),
        background.child_token(),
    );
    let addr: SocketAddr = listener.local_addr()?;
    let advertise = advertise_url(&cfg, addr);
    let forwarder = Arc::new(Forwarder::new(
        &cfg.server_id,
        view.clone(),
        &read_tls(&cfg.tls_dir, "ca.pem")?,
        &read_tls(&cfg.tls_dir, "server.pem")?,
        &read_tls(&cfg.tls_dir, "server.key")?,
    ));
    let jobs = JobManager::start(
        JobConfig {
            max_events: cfg.jobs.max_events,
            max_event_age: cfg.jobs.max_event_age,
            record_retention: cfg.jobs.record_retention,
            max_duration: cfg.jobs.max_duration,
            linger: cfg.jobs.linger,
            orphan_after: control.config().offline_after(),
            max_event_bytes: cfg.jobs.max_event_bytes,
            max_job_bytes: cfg.jobs.max_job_bytes,
            max_agent_bytes: cfg.jobs.max_agent_bytes,
            max_agent_unstored_bytes: cfg.jobs.max_agent_unstored_bytes,
            clients_read_all: cfg.jobs.clients_read_all,
            ..JobConfig::default()
        },
        store.clone(),
        control.clone() as Arc<dyn AgentLink>,
        Some(forwarder.clone()),
        audit.clone(),
        &tasks,
        background.child_token(),
    )
    .await
    .context("loading jobs")?;
    // The one cycle of the assembly: the control plane hands job frames from agents' tunnels to
    // the job manager, which reaches agents through the control plane. The plane is built first
    // (the manager needs it as its AgentLink) and is given the manager here, before any agent
    // can connect (the listener is not serving yet).
    control.set_job_sink(jobs.clone());
    jobs.set_policy_source(view.clone());
    jobs.set_node_events(control.events().clone());
    let pipelines =
        Arc::new(Pipelines::new(store.clone(), audit.clone()).with_policy(view.clone()));
    let invoker = Arc::new(
        Invoker::new(
            InvokeConfig {
                default_timeout: cfg.default_timeout,
                max_timeout: cfg.max_timeout,
                idempotency_retention: cfg.idempotency_retention,
                max_concurrent_per_caller: cfg.limits.max_concurrent_calls_per_caller,
                max_message_bytes: cfg.limits.max_message_bytes,
                schema_limits: cfg.limits.schema(),
                schema_budget: cfg.limits.schema_budget,
                max_descriptor_bytes: cfg.limits.max_descriptor_bytes,
                late_answer_grace: cfg.late_answer_grace,
            },
            store.clone(),
            view.clone(),
            control.clone() as Arc<dyn AgentLink>,
            audit.clone(),
            jobs.clone(),
            pipelines.clone(),
        )
        .with_forwarder(forwarder.clone()),
    );
    spawn_idempotency_sweep(&tasks, invoker.clone(), background.child_token());

    let (health, health_service) = tonic_health::server::health_reporter();
    for s in SERVICES {
        health.set_service_status(*s, ServingStatus::Serving).await;
    }
    // Reflection in both versions: grpcio-reflection, older grpcurl and many GUI clients ask
    // v1alpha only.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(croupier_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building server reflection")?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .context("building server reflection (v1alpha)")?;

    let resolver = IdentityResolver::new();
    let revocations = cfg
        .revocation_list
        .clone()
        .unwrap_or_else(|| cfg.tls_dir.join(crate::certs::REVOKED_FILE));
    let reload = croupier_registry::identity::watch_revocations(resolver.clone(), revocations)
        .await
        .map_err(anyhow::Error::msg)
        .context("loading the revocation list (config `revocation_list`)")?;
    // Stops reloading when the server returns.
    let _reload = tokio_util::task::AbortOnDropHandle::new(reload);
    let tunnels_resolver = resolver.clone();
    let ident = move |req| resolver.intercept(req);
    let max = cfg.limits.max_message_bytes;
    let watches = CancellationToken::new();
    let control_server =
        Arc::new(ControlServer::new(control.clone()).with_resolver(tunnels_resolver));
    let control_svc = ControlServiceServer::from_arc(control_server.clone())
        .accept_compressed(GZIP)
        .send_compressed(GZIP)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let approvals = Arc::new(Approvals::new(
        store.clone(),
        view.clone(),
        invoker.clone(),
        audit.clone(),
    ));
    let function_server = Arc::new(
        FunctionServer::new(invoker, jobs.clone(), pipelines, approvals)
            .with_server_id(&cfg.server_id),
    );
    let function_svc = FunctionServiceServer::from_arc(function_server.clone())
        .accept_compressed(GZIP)
        .send_compressed(GZIP)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let registry_server = Arc::new(
        RegistryServer::new(view.clone(), control.clone(), watches.clone())
            .with_max_message_bytes(max)
            .with_info(server_info(&cfg)),
    );
    let registry_svc = RegistryServiceServer::from_arc(registry_server.clone())
        .accept_compressed(GZIP)
        .send_compressed(GZIP)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The recorder is installed before the first rpc is counted.
    let _ = crate::metrics::prometheus();
    let router = Server::builder()
        .layer(crate::rpc_metrics::RpcMetricsLayer::new())
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted::<tonic::body::Body>,
        ))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(InterceptedService::new(control_svc, ident.clone()))
        .add_service(InterceptedService::new(function_svc, ident.clone()))
        .add_service(InterceptedService::new(registry_svc, ident));
    let gate = crate::gate::GateConfig {
        max_connections: cfg.limits.max_connections,
        max_handshakes: cfg.limits.max_handshakes,
        max_handshakes_per_source: cfg.limits.max_handshakes_per_source,
        handshake_timeout: cfg.limits.handshake_timeout,
    };
    if let Some(fds) = fd_limit
        && (fds as usize) < gate.max_connections + 256
    {
        tracing::warn!(
            fds,
            max_connections = gate.max_connections,
            "the open-file limit is below limits.max_connections; raise it (ulimit -n) or lower the limit"
        );
    }
    let accepting = CancellationToken::new();
    let incoming = crate::gate::incoming(listener, tls, gate, accepting.clone());
    let server = croupier_proto::task::spawn(
        "serve",
        router.serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        }),
    );
    spawn_server_registration(
        &tasks,
        store.clone(),
        ServerRecord {
            server_id: cfg.server_id.clone(),
            url: advertise.clone(),
            started_at: now_ms(),
        },
        background.child_token(),
    );
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(http) = crate::http::bind(cfg.http.listen.as_deref()).await? {
        let at = crate::http::spawn(
            http,
            Arc::new(
                crate::metrics::ScrapeGauges::new(view.clone(), control.clone())
                    .with_jobs(jobs.clone()),
            ),
            Arc::new(crate::http::Readiness {
                store: store.clone(),
                draining: draining.clone(),
            }),
            background.child_token(),
        )?;
        tracing::info!(%at, "HTTP port: /metrics, /healthz, /readyz");
        // Before the "listening" line, which is the last one a supervisor may read.
        if cfg.announce {
            println!("croupier metrics on http://{at}/metrics");
        }
    }
    crate::console::start(
        &cfg,
        croupier_console::Backend {
            control: control_server,
            function: function_server,
            registry: registry_server,
            store: store.clone(),
            audit: audit.clone(),
        },
        background.child_token(),
    )
    .await?;
    tracing::info!(%addr, server_id = %cfg.server_id, %advertise, store = ?cfg.store, "croupier server listening");
    if cfg.announce {
        println!("croupier server listening on https://{addr}");
    }

    let mut server = server;
    tokio::select! {
        _ = shutdown => {}
        r = &mut server => {
            background.cancel();
            tasks.close();
            tasks.wait().await;
            return r.context("server task")?.context("serving");
        }
    }
    tracing::info!(grace = ?cfg.shutdown_grace, "shutting down: draining");
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in SERVICES {
        health
            .set_service_status(*s, ServingStatus::NotServing)
            .await;
    }
    control.drain(cfg.shutdown_grace).await;
    watches.cancel();
    accepting.cancel();
    let _ = stop_tx.send(());
    match tokio::time::timeout(cfg.shutdown_grace, &mut server).await {
        Ok(r) => r.context("server task")?.context("serving")?,
        Err(_) => {
            tracing::warn!("connections still open after the grace period; closing them");
            server.abort();
        }
    }
    background.cancel();
    tasks.close();
    if tokio::time::timeout(cfg.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running after the grace period");
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Tonic answers a request over `max_message_bytes` with `OUT_OF_RANGE` ("message length too
/// large"); DESIGN §4 gives limits `RESOURCE_EXHAUSTED` (as grpc-go does), so the status of
/// such an answer is rewritten. The message, which names the size and the limit, is kept.
pub fn oversize_is_resource_exhausted<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let h = resp.headers_mut();
    let oversize = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if oversize {
        h.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    resp
}

/// Accepted connections with Nagle's algorithm off. The builder's `tcp_nodelay` only applies to
/// listeners tonic binds itself; without this, a small frame written while an earlier one is
/// unacknowledged (a stream's first message after its headers) waits for the peer's delayed ACK,
/// some 40 ms.
pub fn nodelay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// The URL other replicas use to reach this server: `advertise_url` from the config, else the
/// bound address (an unspecified IP becomes 127.0.0.1, which only suits one machine).
fn advertise_url(cfg: &ServerConfig, addr: SocketAddr) -> String {
    if !cfg.advertise_url.is_empty() {
        return cfg.advertise_url.clone();
    }
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        tracing::warn!(
            "listening on an unspecified address: set advertise_url so other servers can reach this one"
        );
    }
    format!("https://{addr}")
}

fn read_tls(dir: &std::path::Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

/// How long a server's registration outlives its last refresh.
const SERVER_LEASE_TTL: Duration = Duration::from_secs(10);

/// Keeps `/croupier/servers/{id}` alive under a lease (refreshed every third of its TTL, and
/// written again when the lease was lost), and revokes it when `stop` is cancelled.
fn spawn_server_registration(
    tasks: &croupier_proto::task::TaskTracker,
    store: Arc<dyn Store>,
    record: ServerRecord,
    stop: CancellationToken,
) {
    croupier_proto::task::spawn_on(tasks, "server registration", async move {
        let key = croupier_registry::keys::server(&record.server_id);
        let Ok(value) = serde_json::to_vec(&record) else {
            return;
        };
        let mut lease: Option<i64> = None;
        loop {
            let ok = match lease {
                Some(l) => store.keep_alive(l).await.is_ok(),
                None => false,
            };
            if !ok {
                lease = None;
                match store.grant_lease(SERVER_LEASE_TTL).await {
                    Ok(l) => match store.put(&key, value.clone(), Some(l)).await {
                        Ok(_) => lease = Some(l),
                        Err(e) => {
                            tracing::warn!(error = %e, "registering this server failed; retrying");
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "registering this server failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(SERVER_LEASE_TTL / 3) => {}
            }
        }
        if let Some(l) = lease {
            let _ = store.revoke_lease(l).await;
        }
    });
}

fn spawn_idempotency_sweep(
    tasks: &croupier_proto::task::TaskTracker,
    invoker: Arc<Invoker>,
    stop: CancellationToken,
) {
    croupier_proto::task::spawn_on(tasks, "idempotency sweep", async move {
        let mut tick = tokio::time::interval(IDEM_SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match invoker.idempotency().sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired idempotency records swept"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            }
        }
    });
}
