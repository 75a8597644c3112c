//! The connection gate in front of the gRPC server: TCP accept, TLS handshake and the limits
//! that hold before anyone is authenticated.
//!
//! Every accepted connection must finish its TLS handshake (with a client certificate signed by
//! the Croupier CA) within [`GateConfig::handshake_timeout`]. At most
//! [`GateConfig::max_handshakes`] connections may be mid-handshake, and at most
//! [`GateConfig::max_handshakes_per_source`] from one address. Past the per-source limit, the
//! oldest connection from that address is closed to make room. Past the overall limit, the gate
//! stops accepting until a handshake ends (the kernel's backlog holds the newcomers, which costs
//! nothing), unless the oldest handshake is stale (older than a quarter of the handshake
//! timeout): that one is closed to make room. So a reconnect storm of legitimate agents queues
//! instead of having half-done handshakes thrown away, and a flood of idle or half-open
//! connections still cannot keep clients out for longer than that quarter. Connections in all (authenticated or not) are capped at
//! [`GateConfig::max_connections`]; past it new ones are closed at once. Each time a limit
//! bites, a counter goes up (`croupier_limits_hit_total{kind}`) and a warning is logged (at most
//! once a second per kind, with how many were shed meanwhile). Refused handshakes are logged
//! with the peer's address.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use croupier_control::metrics::LIMITS_HIT;

/// Limits of the gate.
#[derive(Clone, Copy, Debug)]
pub struct GateConfig {
    /// Most connections at once. Default 20 000.
    pub max_connections: usize,
    /// Most connections mid-handshake. Default 1024.
    pub max_handshakes: usize,
    /// Most connections mid-handshake from one address. Default 256.
    pub max_handshakes_per_source: usize,
    /// Longest a TLS handshake may take. Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            max_connections: 20_000,
            max_handshakes: 1024,
            max_handshakes_per_source: 256,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// An authenticated connection; the gate's count of open connections goes down when it drops.
pub struct Conn {
    inner: TlsStream<TcpStream>,
    _open: OpenGuard,
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connections mid-handshake, oldest first.
#[derive(Default)]
struct Handshakes {
    next_id: u64,
    by_id: BTreeMap<u64, (IpAddr, CancellationToken, Instant)>,
    per_source: HashMap<IpAddr, usize>,
}

impl Handshakes {
    fn add(&mut self, ip: IpAddr) -> (u64, CancellationToken) {
        let id = self.next_id;
        self.next_id += 1;
        let token = CancellationToken::new();
        self.by_id.insert(id, (ip, token.clone(), Instant::now()));
        *self.per_source.entry(ip).or_default() += 1;
        (id, token)
    }

    fn remove(&mut self, id: u64) {
        if let Some((ip, _, _)) = self.by_id.remove(&id)
            && let Some(n) = self.per_source.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    /// Closes the oldest handshake (from `ip` when given).
    fn shed_oldest(&mut self, ip: Option<IpAddr>) -> bool {
        let oldest = self
            .by_id
            .iter()
            .find(|(_, (from, _, _))| ip.is_none_or(|ip| ip == *from))
            .map(|(id, (_, t, _))| (*id, t.clone()));
        match oldest {
            Some((id, token)) => {
                token.cancel();
                self.remove(id);
                true
            }
            None => false,
        }
    }

    /// How long the oldest handshake has been going on.
    fn oldest_age(&self) -> Option<Duration> {
        self.by_id.values().next().map(|(_, _, at)| at.elapsed())
    }

    fn count_from(&self, ip: IpAddr) -> usize {
        self.per_source.get(&ip).copied().unwrap_or(0)
    }
}

/// A warning at most once a second per kind, with the count of events in between.
struct Throttled {
    last: Mutex<Option<Instant>>,
    since: AtomicU64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: Mutex::new(None),
            since: AtomicU64::new(0),
        }
    }

    /// Counts one event; returns the count to report when a line is due.
    fn hit(&self) -> Option<u64> {
        let n = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock();
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        *last = Some(Instant::now());
        self.since.store(0, Ordering::Relaxed);
        Some(n)
    }
}

struct Shared {
    cfg: GateConfig,
    /// Connections open: mid-handshake or authenticated.
    open: AtomicUsize,
    handshakes: Mutex<Handshakes>,
    /// Woken when a handshake ends (a slot is free).
    slot_freed: tokio::sync::Notify,
    warn_full: Throttled,
    warn_shed: Throttled,
    warn_refused: Throttled,
    warn_accept: Throttled,
}

fn hit(kind: &'static str) {
    metrics::counter!(LIMITS_HIT, "kind" => kind).increment(1);
}

/// Accepts connections on `listener` through the gate until `shutdown`, yielding those whose
/// TLS handshake succeeded.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cfg: GateConfig,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(256);
    let shared = Arc::new(Shared {
        cfg,
        open: AtomicUsize::new(0),
        handshakes: Mutex::new(Handshakes::default()),
        slot_freed: tokio::sync::Notify::new(),
        warn_full: Throttled::new(),
        warn_shed: Throttled::new(),
        warn_refused: Throttled::new(),
        warn_accept: Throttled::new(),
    });
    let acceptor = TlsAcceptor::from(tls);
    croupier_proto::task::spawn("accept loop", async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = async {
                    wait_for_slot(&shared).await;
                    listener.accept().await
                } => a,
            };
            match accepted {
                Ok((tcp, peer)) => admit(&shared, &acceptor, &tx, tcp, peer),
                Err(e) => {
                    // Out of file descriptors (or a transient error): make room and go on.
                    if let Some(n) = shared.warn_accept.hit() {
                        tracing::warn!(error = %e, times = n, "accepting a connection failed; closing the oldest unauthenticated one");
                    }
                    hit("accept");
                    shared.handshakes.lock().shed_oldest(None);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Returns when a handshake may start: at once below `max_handshakes`; otherwise when one
/// ends, or when the oldest is stale (older than a quarter of the handshake timeout), which is
/// then closed to make room.
async fn wait_for_slot(shared: &Shared) {
    let stale = shared.cfg.handshake_timeout / 4;
    loop {
        let freed = shared.slot_freed.notified();
        let wait = {
            let mut hs = shared.handshakes.lock();
            if hs.by_id.len() < shared.cfg.max_handshakes {
                return;
            }
            match hs.oldest_age() {
                Some(age) if age >= stale => {
                    hs.shed_oldest(None);
                    hit("handshakes");
                    if let Some(n) = shared.warn_shed.hit() {
                        tracing::warn!(
                            in_handshake = hs.by_id.len(),
                            shed = n,
                            "too many connections in their TLS handshake (limits.max_handshakes) and the oldest is stale; closing it"
                        );
                    }
                    return;
                }
                Some(age) => stale - age,
                None => return,
            }
        };
        tokio::select! {
            _ = freed => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn admit(
    shared: &Arc<Shared>,
    acceptor: &TlsAcceptor,
    tx: &mpsc::Sender<io::Result<Conn>>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let cfg = shared.cfg;
    if shared.open.load(Ordering::Relaxed) >= cfg.max_connections {
        hit("connections");
        if let Some(n) = shared.warn_full.hit() {
            tracing::warn!(%peer, open = cfg.max_connections, refused = n, "connection limit reached (limits.max_connections); new connections are closed");
        }
        return; // dropping it closes it
    }
    let _ = tcp.set_nodelay(true);
    let ip = peer.ip();
    let (id, token) = {
        let mut hs = shared.handshakes.lock();
        let mut shed = false;
        if hs.count_from(ip) >= cfg.max_handshakes_per_source {
            shed |= hs.shed_oldest(Some(ip));
        }
        if shed {
            hit("handshakes");
            if let Some(n) = shared.warn_shed.hit() {
                tracing::warn!(%peer, in_handshake = hs.by_id.len(), shed = n, "too many connections in their TLS handshake from one address (limits.max_handshakes_per_source); closing the oldest");
            }
        }
        hs.add(ip)
    };
    shared.open.fetch_add(1, Ordering::Relaxed);
    let guard = OpenGuard(shared.clone());
    let shared = shared.clone();
    let acceptor = acceptor.clone();
    let tx = tx.clone();
    croupier_proto::task::spawn("tls handshake", async move {
        let mut refused = None;
        let handshake = acceptor.accept(tcp).into_fallible();
        let outcome = tokio::select! {
            _ = token.cancelled() => Err("closed to make room for newer connections".to_string()),
            r = tokio::time::timeout(cfg.handshake_timeout, handshake) => match r {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err((e, tcp))) => {
                    refused = Some(tcp);
                    Err(e.to_string())
                }
                Err(_) => Err(format!("no TLS handshake within {:?} (limits.handshake_timeout)", cfg.handshake_timeout)),
            },
        };
        shared.handshakes.lock().remove(id);
        shared.slot_freed.notify_one();
        match outcome {
            Ok(inner) => {
                let _ = tx
                    .send(Ok(Conn {
                        inner,
                        _open: guard,
                    }))
                    .await;
            }
            Err(why) => {
                if let Some(n) = shared.warn_refused.hit() {
                    tracing::warn!(%peer, reason = %why, refused = n, "TLS handshake refused");
                }
                if let Some(tcp) = refused {
                    close_gently(tcp).await;
                }
            }
        }
    });
}

/// Closes a connection whose handshake was refused so that the client reads the alert saying
/// why. In TLS 1.3 the client sends its first request right after its certificate; closing a
/// socket with that request unread makes the kernel send a reset, and a reset makes the
/// client's kernel drop the alert it had not read yet, so the client would see "connection
/// reset" and retry. Shutting down the write side and reading what is left (at most 64 KiB,
/// for a second) closes with a FIN instead.
async fn close_gently(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Raises the soft limit of open files to the hard limit (where the system allows), so the
/// connection limits, not the process's file descriptors, decide when to refuse. Returns the
/// limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
    {
        lim.current = Some(max);
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::debug!(error = %e, "raising the open-file limit failed");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_the_oldest_handshake_overall_and_per_source() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut hs = Handshakes::default();
        let (_, first_a) = hs.add(a);
        let (_, first_b) = hs.add(b);
        let (_, second_a) = hs.add(a);
        assert_eq!(hs.count_from(a), 2);
        assert!(hs.shed_oldest(Some(b)));
        assert!(first_b.is_cancelled() && !first_a.is_cancelled());
        assert!(hs.shed_oldest(None));
        assert!(first_a.is_cancelled() && !second_a.is_cancelled());
        assert_eq!(hs.count_from(a), 1);
        assert_eq!(hs.count_from(b), 0);
    }

    #[test]
    fn throttled_warnings_report_what_they_skipped() {
        let t = Throttled::new();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        *t.last.lock() = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.hit(), Some(3));
    }
}
