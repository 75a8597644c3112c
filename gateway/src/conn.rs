//! One client connection: the login handshake, the reader loop and the writer task.
//!
//! The reader serves frames in order: REQUEST (checked seq, a route, a slot in the session's
//! and the gateway's call limits, then a task that calls the mesh and queues the answer), ACK,
//! PING, CLOSE. A frame that breaks the protocol closes this connection with a reason frame and
//! touches nothing else. The writer owns the socket's write half; it drains its queue in
//! batches, writes a CLOSE last and then shuts the socket.
//!
//! The Go design's worker pool maps onto this: a request is a tokio task (spawned on demand,
//! gone when done, so there is no idle worker to clean up and no minimum to keep), bounded by
//! `calls.max_in_flight` for the whole gateway (a request waits up to `calls.queue_timeout` for
//! a slot, then gets RESOURCE_EXHAUSTED) and `calls.max_in_flight_per_session` per connection
//! (past it the reader stops reading, so a greedy client is slowed by TCP back-pressure, not
//! refused). The runtime's worker threads are the pool's fixed size.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use croupier_proto::gateway::v1::{CloseReason, Frame, FrameType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::Verifier;
use crate::cluster::Cluster;
use crate::config::RouteConfig;
use crate::error::FrameError;
use crate::frame::{self, SeqCheck};
use crate::hub::{ConnLink, Hub, Outbound, Player};
use crate::mesh::{Caller, Mesh};
use crate::metrics as m;

/// Longest a write to a client may block before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes gathered before one write.
const WRITE_BATCH: usize = 64 * 1024;

/// What every connection shares.
pub struct ConnCtx {
    /// The players.
    pub hub: Arc<Hub>,
    /// Token checks.
    pub verifier: Verifier,
    /// The mesh.
    pub mesh: Mesh,
    /// Other gateways.
    pub cluster: Arc<Cluster>,
    /// The routing table.
    pub routes: HashMap<u32, RouteConfig>,
    /// Calls in flight in the whole gateway.
    pub calls: Arc<Semaphore>,
    /// Tracks calls in flight (shutdown waits for it).
    pub tracker: TaskTracker,
    /// Per-session call limit.
    pub per_session: usize,
    /// How long a request waits for a slot.
    pub queue_timeout: Duration,
    /// A route's deadline when it sets none.
    pub default_timeout: Duration,
    /// Frame limit.
    pub max_frame_bytes: usize,
    /// Time to LOGIN.
    pub login_timeout: Duration,
    /// Time between any two frames.
    pub read_timeout: Duration,
    /// Writer queue size.
    pub outbound_queue: usize,
}

/// Serves one connection until it ends.
pub async fn serve<S>(ctx: Arc<ConnCtx>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(ctx.outbound_queue);
    let closed = CancellationToken::new();
    let link = ConnLink {
        id: ctx.hub.next_conn_id(),
        tx: tx.clone(),
        closed: closed.clone(),
    };
    croupier_proto::task::spawn("gateway session", writer(wr, rx, closed.clone()));

    let Some((player, session_id)) = login(&ctx, &mut rd, &link, peer).await else {
        return;
    };
    let span = tracing::info_span!("session", player_id = %player.id, session_id = %session_id, conn = link.id);
    read_loop(&ctx, &mut rd, &link, &player, &session_id)
        .instrument(span.clone())
        .await;
    ctx.hub.disconnected(&player, link.id);
    span.in_scope(|| tracing::info!(%peer, "disconnected"));
}

async fn login<R: AsyncRead + Unpin>(
    ctx: &ConnCtx,
    rd: &mut R,
    link: &ConnLink,
    peer: SocketAddr,
) -> Option<(Arc<Player>, String)> {
    let refuse = |reason: CloseReason, message: String, outcome: &'static str| {
        tracing::info!(%peer, %message, "login refused");
        metrics::counter!(m::LOGINS, "outcome" => outcome).increment(1);
        link.close(reason, message);
        None
    };
    let first = tokio::select! {
        _ = link.closed.cancelled() => return None,
        f = tokio::time::timeout(ctx.login_timeout, frame::read_frame(rd, ctx.max_frame_bytes)) => f,
    };
    let login = match first {
        Err(_) => {
            return refuse(
                CloseReason::Unauthenticated,
                format!("no LOGIN within {:?}", ctx.login_timeout),
                "refused",
            );
        }
        Ok(Ok(None) | Err(FrameError::Io(_))) => return None,
        Ok(Err(e)) => {
            metrics::counter!(m::BAD_FRAMES, "kind" => e.kind()).increment(1);
            return refuse(e.close_reason(), e.to_string(), "refused");
        }
        Ok(Ok(Some(f))) => match (frame::kind(&f), f.login) {
            (FrameType::Login, Some(l)) => l,
            _ => {
                metrics::counter!(m::BAD_FRAMES, "kind" => "unexpected").increment(1);
                return refuse(
                    CloseReason::ProtocolError,
                    "the first frame must be LOGIN with a token".into(),
                    "refused",
                );
            }
        },
    };
    if ctx.hub.draining() {
        return refuse(
            CloseReason::Shutdown,
            "the gateway is shutting down; try another".into(),
            "refused",
        );
    }
    let client: String = login.client.chars().take(128).collect();
    let who = match ctx.verifier.verify(&login.token, &client).await {
        Ok(w) => w,
        Err(e @ crate::error::GatewayError::Unauthenticated(_)) => {
            return refuse(CloseReason::Unauthenticated, e.to_string(), "refused");
        }
        Err(e) => {
            return refuse(
                CloseReason::Unauthenticated,
                format!("the token could not be checked: {e}"),
                "error",
            );
        }
    };
    // The player's session may live on another gateway: take it over from there.
    let handed = if ctx.hub.holds(&who.player_id) {
        None
    } else {
        ctx.cluster.handoff(&who.player_id).await
    };
    let player_id = who.player_id.clone();
    let Some(done) = ctx
        .hub
        .login(who, &login.session_id, login.ack_seq, link.clone(), handed)
    else {
        return refuse(
            CloseReason::Unspecified,
            "the gateway is full; try another".into(),
            "refused",
        );
    };
    let outcome = if done.resumed { "resumed" } else { "ok" };
    metrics::counter!(m::LOGINS, "outcome" => outcome).increment(1);
    tracing::info!(%player_id, session_id = %done.session_id, resumed = done.resumed, replayed = done.replayed, %peer, client = %client, "logged in");
    Some((done.player, done.session_id))
}

async fn read_loop<R: AsyncRead + Unpin>(
    ctx: &ConnCtx,
    rd: &mut R,
    link: &ConnLink,
    player: &Arc<Player>,
    session_id: &str,
) {
    let mut seqs = SeqCheck::default();
    let session_slots = Arc::new(Semaphore::new(ctx.per_session));
    loop {
        let next = tokio::select! {
            _ = link.closed.cancelled() => return,
            f = tokio::time::timeout(ctx.read_timeout, frame::read_frame(rd, ctx.max_frame_bytes)) => f,
        };
        let f = match next {
            Err(_) => {
                link.close(
                    CloseReason::Timeout,
                    format!("nothing received within {:?}", ctx.read_timeout),
                );
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Err(FrameError::Io(e))) => {
                tracing::debug!(error = %e, "read failed");
                return;
            }
            Ok(Err(e)) => return protocol_error(link, &e),
            Ok(Ok(Some(f))) => f,
        };
        match frame::kind(&f) {
            FrameType::Request => {
                if let Err(e) = seqs.accept(f.seq) {
                    return protocol_error(link, &e);
                }
                let payload = match frame::payload(&f, ctx.max_frame_bytes) {
                    Ok(p) => p,
                    Err(e) => return protocol_error(link, &e),
                };
                if !ctx.hub.touch(player, link.id) {
                    return; // replaced by a newer connection
                }
                // Back-pressure: wait for a slot of this session before reading on.
                let slot = tokio::select! {
                    _ = link.closed.cancelled() => return,
                    s = session_slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                };
                let req = Req {
                    msg_id: f.msg_id,
                    seq: f.seq,
                    flags: f.flags & frame::FLAG_JSON,
                    payload,
                    traceparent: (!f.traceparent.is_empty()).then_some(f.traceparent),
                    received: Instant::now(),
                };
                dispatch(ctx, link, player, session_id, req, slot).await;
            }
            FrameType::Ack => {
                if let Err(last) = ctx.hub.ack(player, link.id, f.seq) {
                    let e = FrameError::Unexpected(format!(
                        "ACK of push seq {} but the highest sent is {last}",
                        f.seq
                    ));
                    return protocol_error(link, &e);
                }
            }
            FrameType::Ping => {
                let _ = link
                    .tx
                    .try_send(Outbound::Frame(frame::bare(FrameType::Pong, f.seq)));
            }
            FrameType::Close => {
                tracing::debug!("the client closed");
                link.close(CloseReason::Normal, "bye");
                return;
            }
            other => {
                let e = FrameError::Unexpected(format!(
                    "a client may not send {} here",
                    other.as_str_name()
                ));
                return protocol_error(link, &e);
            }
        }
    }
}

fn protocol_error(link: &ConnLink, e: &FrameError) {
    tracing::warn!(kind = e.kind(), error = %e, "protocol error; closing the connection");
    metrics::counter!(m::BAD_FRAMES, "kind" => e.kind()).increment(1);
    link.close(e.close_reason(), e.to_string());
}

struct Req {
    msg_id: u32,
    seq: u64,
    flags: u32,
    payload: bytes::Bytes,
    traceparent: Option<String>,
    received: Instant,
}

async fn dispatch(
    ctx: &ConnCtx,
    link: &ConnLink,
    player: &Arc<Player>,
    session_id: &str,
    req: Req,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let answer = |f: Frame| {
        let _ = link.tx.try_send(Outbound::Frame(f));
    };
    let Some(route) = ctx.routes.get(&req.msg_id).cloned() else {
        metrics::counter!(m::REQUESTS, "route" => "none", "outcome" => "NOT_FOUND").increment(1);
        return answer(frame::error(
            req.msg_id,
            req.seq,
            "NOT_FOUND",
            format!("no route for message id {}", req.msg_id),
        ));
    };
    if ctx.hub.draining() {
        return answer(frame::error(
            req.msg_id,
            req.seq,
            "UNAVAILABLE",
            "the gateway is shutting down; send it again after reconnecting",
        ));
    }
    let Ok(Ok(permit)) =
        tokio::time::timeout(ctx.queue_timeout, ctx.calls.clone().acquire_owned()).await
    else {
        metrics::counter!(m::REQUESTS, "route" => route.function.clone(), "outcome" => "RESOURCE_EXHAUSTED").increment(1);
        return answer(frame::error(
            req.msg_id,
            req.seq,
            "RESOURCE_EXHAUSTED",
            "too many requests in flight at the gateway",
        ));
    };
    let mesh = ctx.mesh.clone();
    let tx = link.tx.clone();
    let closed = link.closed.clone();
    let player_id = player.id.clone();
    let session_id = session_id.to_string();
    let gateway_id = ctx.hub.config().gateway_id.clone();
    let default_timeout = ctx.default_timeout;
    metrics::gauge!(m::IN_FLIGHT).increment(1.0);
    let span = tracing::debug_span!("request", msg_id = req.msg_id, seq = req.seq, function = %route.function);
    ctx.tracker.spawn(
        async move {
            let caller = Caller {
                player_id: &player_id,
                session_id: &session_id,
                gateway_id: &gateway_id,
            };
            let result = mesh
                .request(
                    &route,
                    default_timeout,
                    &caller,
                    req.msg_id,
                    req.seq,
                    req.flags,
                    &req.payload,
                    req.traceparent.as_deref(),
                )
                .await;
            let (f, outcome) = match result {
                Ok(a) => (
                    frame::message(FrameType::Response, req.msg_id, req.seq, a.flags, a.payload),
                    "ok".to_string(),
                ),
                Err(e) => {
                    tracing::debug!(code = %e.code, message = %e.message, "request failed");
                    let outcome = if e.handler {
                        "handler_error".to_string()
                    } else {
                        e.code.clone()
                    };
                    (frame::error(req.msg_id, req.seq, &e.code, e.message), outcome)
                }
            };
            // The answer waits for room in the write queue, unless the connection goes.
            tokio::select! {
                _ = closed.cancelled() => {}
                _ = tx.send(Outbound::Frame(f)) => {}
            }
            let secs = req.received.elapsed().as_secs_f64();
            metrics::histogram!(m::REQUEST_SECONDS, "route" => route.function.clone(), "outcome" => outcome.clone()).record(secs);
            metrics::counter!(m::REQUESTS, "route" => route.function, "outcome" => outcome)
                .increment(1);
            metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
            drop(permit);
            drop(slot);
        }
        .instrument(span),
    );
}

async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outbound>,
    closed: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = closed.cancelled() => None,
        };
        let Some(first) = first else { break };
        buf.clear();
        let mut last = false;
        let add = |o: Outbound, buf: &mut BytesMut| match o {
            Outbound::Frame(f) => {
                frame::encode_into(&f, buf);
                false
            }
            Outbound::Close(f) => {
                frame::encode_into(&f, buf);
                true
            }
        };
        last |= add(first, &mut buf);
        while !last && buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(o) => last |= add(o, &mut buf),
                Err(_) => break,
            }
        }
        let write = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        if last {
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            break;
        }
        if buf.capacity() > 4 * WRITE_BATCH {
            buf = BytesMut::with_capacity(256);
        }
    }
    closed.cancel();
}
