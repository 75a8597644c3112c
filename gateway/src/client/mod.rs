//! A client library for game clients written in Rust, and a reference for clients in other
//! languages (the protocol itself is documented in `proto/croupier/gateway/v1/gateway.proto`).
//!
//! [`GameClient`] keeps one session alive: it logs in, sends a PING every heartbeat interval
//! the gateway announces, matches answers to requests by seq, acknowledges every push and
//! hands each one to the application once (a push whose seq it has already handed over in the
//! same session is dropped), and when the connection breaks it reconnects with backoff (100 ms
//! doubling to 10 s, ±20 %) and resumes the session with the last seq it processed, so pushes
//! queued meanwhile arrive in order. It stops for good when the gateway refuses the token, the
//! player logs in elsewhere (REPLACED) or is kicked. Requests in flight when a connection
//! breaks fail with [`ClientError::Disconnected`]: they may or may not have run, so the client
//! never resends them on its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), croupier_gateway::client::ClientError> {
//! use croupier_gateway::client::{ClientConfig, Event, GameClient};
//! let (client, mut events) = GameClient::connect(ClientConfig::new("127.0.0.1:7000", "v1.…")).await?;
//! let answer = client.request_json(1001, &serde_json::json!({"hello": "world"})).await?;
//! println!("{answer}");
//! while let Some(ev) = events.recv().await {
//!     if let Event::Push { msg_id, payload, .. } = ev {
//!         println!("push {msg_id}: {}", String::from_utf8_lossy(&payload));
//!     }
//! }
//! # Ok(()) }
//! ```

mod conn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use croupier_proto::gateway::v1::{CloseReason, Frame, FrameType};
use croupier_sdk::backoff::Backoff;
use tokio::sync::{mpsc, oneshot};

pub use conn::{ClientTls, Connection, Io, Reader, Writer};

use crate::frame::{self, FLAG_JSON};

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached.
    #[error("connecting to the gateway: {0}")]
    Connect(String),
    /// TLS material is unusable.
    #[error("client TLS: {0}")]
    Tls(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[source] std::io::Error),
    /// The gateway sent something that breaks the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The gateway closed the connection with a reason.
    #[error("closed by the gateway: {reason:?}: {message}")]
    Closed {
        /// Why.
        reason: CloseReason,
        /// The gateway's message.
        message: String,
    },
    /// The connection broke while the request was in flight (it may or may not have run).
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The request failed: the gateway's or the backend's code and message.
    #[error("{code}: {message}")]
    Request {
        /// The code (NOT_FOUND, UNAVAILABLE, a handler's code…).
        code: String,
        /// The message.
        message: String,
        /// True when sending it again may succeed.
        retryable: bool,
    },
    /// The answer was not the JSON the caller expected.
    #[error("decoding the answer: {0}")]
    Decode(String),
    /// The client has stopped.
    #[error("the client has stopped")]
    Stopped,
}

/// How a [`GameClient`] connects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The gateway, host:port.
    pub addr: String,
    /// The player's token.
    pub token: String,
    /// TLS, when the gateway's listener speaks it.
    pub tls: Option<ClientTls>,
    /// Sent in LOGIN for the gateway's logs.
    pub client_name: String,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// A PING at least this often; default: the interval the gateway announces.
    pub heartbeat: Option<Duration>,
    /// Reconnect after a broken connection. Default true.
    pub reconnect: bool,
}

impl ClientConfig {
    /// Plain TCP to `addr` with `token`, reconnecting.
    pub fn new(addr: &str, token: &str) -> Self {
        ClientConfig {
            addr: addr.into(),
            token: token.into(),
            tls: None,
            client_name: format!("croupier-gateway-client/{}", env!("CARGO_PKG_VERSION")),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 0.2),
            heartbeat: None,
            reconnect: true,
        }
    }
}

/// What happens to the session, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Logged in (first time or after a reconnect).
    Connected {
        /// The session.
        session_id: String,
        /// True when the gateway resumed an existing session.
        resumed: bool,
        /// Pushes the gateway dropped since the last login.
        dropped: u64,
        /// The gateway holding the session.
        gateway_id: String,
    },
    /// A push, handed over once.
    Push {
        /// Its message id.
        msg_id: u32,
        /// Its seq in the session.
        seq: u64,
        /// Frame flags (JSON or opaque).
        flags: u32,
        /// The payload.
        payload: Bytes,
    },
    /// The gateway is draining (GOAWAY); the client reconnects after the CLOSE.
    GoingAway(String),
    /// The connection ended; the client reconnects unless the reason says otherwise.
    Disconnected {
        /// The CLOSE reason (UNSPECIFIED when the connection just broke).
        reason: CloseReason,
        /// Why.
        message: String,
    },
    /// The client stopped for good (REPLACED, KICKED, UNAUTHENTICATED, or `close`).
    Stopped {
        /// The reason.
        reason: CloseReason,
        /// Why.
        message: String,
    },
}

/// An answer to a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// Frame flags (JSON or opaque).
    pub flags: u32,
    /// The payload.
    pub payload: Bytes,
}

enum Cmd {
    Request {
        msg_id: u32,
        flags: u32,
        payload: Bytes,
        traceparent: String,
        reply: oneshot::Sender<Result<Reply, ClientError>>,
    },
    Close,
}

#[derive(Default)]
struct Shared {
    session_id: String,
    last_seq: u64,
}

/// A game client's session with a gateway (see the module docs).
#[derive(Clone)]
pub struct GameClient {
    cmds: mpsc::Sender<Cmd>,
    shared: Arc<Mutex<Shared>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GameClient {
    /// Connects and logs in; the first login must succeed (a refused token is
    /// [`ClientError::Closed`] with reason UNAUTHENTICATED). Events arrive on the receiver.
    pub async fn connect(
        cfg: ClientConfig,
    ) -> Result<(GameClient, mpsc::Receiver<Event>), ClientError> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (events_tx, events) = mpsc::channel(4096);
        let conn = login(&cfg, &shared, &events_tx).await?;
        let (cmds, cmd_rx) = mpsc::channel(1024);
        croupier_proto::task::spawn("connect", run(cfg, shared.clone(), conn, cmd_rx, events_tx));
        Ok((GameClient { cmds, shared }, events))
    }

    /// The current session id.
    pub fn session_id(&self) -> String {
        lock(&self.shared).session_id.clone()
    }

    /// The highest push seq handed over in this session.
    pub fn last_seq(&self) -> u64 {
        lock(&self.shared).last_seq
    }

    /// Sends a request and waits for its answer.
    pub async fn request(
        &self,
        msg_id: u32,
        flags: u32,
        payload: Bytes,
        traceparent: &str,
    ) -> Result<Reply, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Request {
                msg_id,
                flags,
                payload,
                traceparent: traceparent.into(),
                reply,
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    /// Sends a JSON request and decodes the JSON answer.
    pub async fn request_json(
        &self,
        msg_id: u32,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let payload = serde_json::to_vec(body).unwrap_or_default().into();
        let r = self.request(msg_id, FLAG_JSON, payload, "").await?;
        serde_json::from_slice(&r.payload).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Says goodbye (CLOSE NORMAL) and stops.
    pub async fn close(&self) {
        let _ = self.cmds.send(Cmd::Close).await;
    }
}

async fn login(
    cfg: &ClientConfig,
    shared: &Mutex<Shared>,
    events: &mpsc::Sender<Event>,
) -> Result<(Connection, Duration), ClientError> {
    let mut conn = Connection::connect(&cfg.addr, cfg.tls.as_ref()).await?;
    let (sid, ack) = {
        let s = lock(shared);
        (s.session_id.clone(), s.last_seq)
    };
    let ok = conn.login(&cfg.token, &sid, ack, &cfg.client_name).await?;
    {
        let mut s = lock(shared);
        if s.session_id != ok.session_id {
            // A new numbering: nothing of it was seen yet.
            s.session_id = ok.session_id.clone();
            s.last_seq = 0;
        }
    }
    let hb = cfg
        .heartbeat
        .unwrap_or(Duration::from_millis(ok.heartbeat_ms.max(100) as u64));
    let _ = events
        .send(Event::Connected {
            session_id: ok.session_id,
            resumed: ok.resumed,
            dropped: ok.dropped,
            gateway_id: ok.gateway_id,
        })
        .await;
    Ok((conn, hb))
}

fn final_reason(r: CloseReason) -> bool {
    matches!(
        r,
        CloseReason::Replaced
            | CloseReason::Kicked
            | CloseReason::Unauthenticated
            | CloseReason::Normal
    )
}

async fn run(
    mut cfg: ClientConfig,
    shared: Arc<Mutex<Shared>>,
    first: (Connection, Duration),
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Event>,
) {
    let mut current = Some(first);
    loop {
        let (conn, hb) = match current.take() {
            Some(c) => c,
            None => {
                let delay = cfg.backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    c = cmds.recv() => match c {
                        Some(Cmd::Request { reply, .. }) => {
                            let _ = reply.send(Err(ClientError::Disconnected("reconnecting".into())));
                            continue;
                        }
                        Some(Cmd::Close) | None => return stop(&events, CloseReason::Normal, "closed by the client").await,
                    },
                }
                match login(&cfg, &shared, &events).await {
                    Ok(c) => {
                        cfg.backoff.reset();
                        c
                    }
                    Err(ClientError::Closed { reason, message }) if final_reason(reason) => {
                        return stop(&events, reason, &message).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reconnect failed");
                        continue;
                    }
                }
            }
        };
        let (reason, message) = session(conn, hb, &shared, &mut cmds, &events).await;
        if reason == CloseReason::Normal && message == "closed by the client" {
            return stop(&events, reason, &message).await;
        }
        let _ = events
            .send(Event::Disconnected {
                reason,
                message: message.clone(),
            })
            .await;
        if final_reason(reason) || !cfg.reconnect {
            return stop(&events, reason, &message).await;
        }
    }
}

async fn stop(events: &mpsc::Sender<Event>, reason: CloseReason, message: &str) {
    let _ = events
        .send(Event::Stopped {
            reason,
            message: message.into(),
        })
        .await;
}

/// Serves one connection; returns why it ended.
async fn session(
    conn: Connection,
    heartbeat: Duration,
    shared: &Mutex<Shared>,
    cmds: &mut mpsc::Receiver<Cmd>,
    events: &mpsc::Sender<Event>,
) -> (CloseReason, String) {
    let (mut rd, mut wr) = conn.into_split();
    let (in_tx, mut incoming) = mpsc::channel::<Result<Option<Frame>, ClientError>>(256);
    let reader = croupier_proto::task::spawn("session", async move {
        loop {
            let f = rd.recv().await;
            let end = !matches!(f, Ok(Some(_)));
            if in_tx.send(f).await.is_err() || end {
                return;
            }
        }
    });
    let mut pending: HashMap<u64, oneshot::Sender<Result<Reply, ClientError>>> = HashMap::new();
    let mut next_seq = 1u64;
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    let ended = loop {
        tokio::select! {
            c = cmds.recv() => match c {
                Some(Cmd::Request { msg_id, flags, payload, traceparent, reply }) => {
                    let seq = next_seq;
                    next_seq += 1;
                    let mut f = frame::message(FrameType::Request, msg_id, seq, flags, payload);
                    f.traceparent = traceparent;
                    if let Err(e) = wr.send(&f).await {
                        let _ = reply.send(Err(ClientError::Disconnected(e.to_string())));
                        break (CloseReason::Unspecified, e.to_string());
                    }
                    pending.insert(seq, reply);
                }
                Some(Cmd::Close) | None => {
                    let _ = wr.send(&frame::close(CloseReason::Normal, "bye")).await;
                    break (CloseReason::Normal, "closed by the client".to_string());
                }
            },
            _ = tick.tick() => {
                if let Err(e) = wr.send(&frame::bare(FrameType::Ping, next_seq)).await {
                    break (CloseReason::Unspecified, e.to_string());
                }
            }
            f = incoming.recv() => {
                let f = match f {
                    Some(Ok(Some(f))) => f,
                    Some(Ok(None)) | None => break (CloseReason::Unspecified, "the gateway closed the connection".into()),
                    Some(Err(e)) => break (CloseReason::Unspecified, e.to_string()),
                };
                match frame::kind(&f) {
                    FrameType::Response => {
                        if let Some(r) = pending.remove(&f.seq) {
                            let _ = r.send(Ok(Reply { flags: f.flags, payload: f.payload }));
                        }
                    }
                    FrameType::Error => {
                        let e = f.error.unwrap_or_default();
                        if let Some(r) = pending.remove(&f.seq) {
                            let _ = r.send(Err(ClientError::Request { code: e.code, message: e.message, retryable: e.retryable }));
                        }
                    }
                    FrameType::Push => {
                        let fresh = {
                            let mut s = lock(shared);
                            if f.seq > s.last_seq { s.last_seq = f.seq; true } else { false }
                        };
                        if fresh {
                            let ev = Event::Push { msg_id: f.msg_id, seq: f.seq, flags: f.flags, payload: f.payload };
                            let _ = events.send(ev).await;
                        }
                        if let Err(e) = wr.send(&frame::bare(FrameType::Ack, f.seq)).await {
                            break (CloseReason::Unspecified, e.to_string());
                        }
                    }
                    FrameType::Goaway => {
                        let m = f.close.map(|c| c.message).unwrap_or_default();
                        let _ = events.send(Event::GoingAway(m)).await;
                    }
                    FrameType::Close => {
                        let c = f.close.unwrap_or_default();
                        break (CloseReason::try_from(c.reason).unwrap_or_default(), c.message);
                    }
                    _ => {}
                }
            }
        }
    };
    reader.abort();
    for (_, r) in pending.drain() {
        let _ = r.send(Err(ClientError::Disconnected(ended.1.clone())));
    }
    ended
}
