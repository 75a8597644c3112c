//! The console's HTTPS listener: rustls with the server's certificate (no client certificate:
//! browsers sign in instead), HTTP/1.1 and HTTP/2, and the routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{Console, assets, auth, rpc, stream};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The source address of a request's connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    let api = Router::new()
        .route("/api/me", get(auth::me))
        .route("/api/logout", post(auth::logout))
        .route("/api/rpc/{method}", post(rpc::call))
        .route("/api/stream/{method}", get(stream::stream))
        .route("/api/audit/verify", get(rpc::verify_audit))
        .route("/api/pipeline-toml", post(crate::pipeline::put))
        .route("/api/pipeline-toml/{id}", get(crate::pipeline::get))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/", get(assets::index))
        .route("/static/{*path}", get(assets::asset))
        .route("/api/login", post(auth::login))
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
        .layer(axum::middleware::from_fn(assets::headers))
        .with_state(console)
}

/// Serves the console on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    console: Arc<Console>,
    stop: CancellationToken,
) {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let app = router(console);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = stop.clone();
        croupier_proto::task::spawn("console-conn", async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "console TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = app.map_request(move |mut r: axum::http::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(Peer(peer));
                r
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
