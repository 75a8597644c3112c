//! [`Hub`]: the players this gateway holds, their sessions and connections. The Go design's
//! PlayerManager and SessionManager in one place, behind one map lock (held only to find or
//! insert a player) and one lock per player (its session, mailbox and connection link).
//!
//! - A **session** belongs to a player: an id, attributes, a [`Mailbox`] and, while online, a
//!   [`ConnLink`] to the connection's writer. It outlives its connection: offline, it is kept
//!   for `offline.retention` so that a reconnect resumes it and gets what was queued meanwhile.
//! - **One connection per player.** A login installs its link and closes the previous one with
//!   CLOSE REPLACED; frames of a replaced connection are ignored.
//! - Every push goes into the mailbox first and, when online, onto the link under the same
//!   lock, so LOGIN_OK, the replay of what was queued and new pushes reach the client in seq
//!   order.
//! - The **sweep** closes connections idle past `idle_timeout` (CLOSE IDLE), ends offline
//!   sessions past `offline.retention` and drops pushes past `offline.max_age`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use croupier_proto::gateway::v1::{CloseReason, Frame, FrameType, LoginOk};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::PlayerIdentity;
use crate::frame;
use crate::mailbox::{Mailbox, Pushed};
use crate::metrics as m;

/// What the hub needs from the configuration.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// This gateway's agent id.
    pub gateway_id: String,
    /// Pushes kept per player.
    pub max_messages: usize,
    /// Oldest push kept.
    pub max_age: Duration,
    /// How long an offline session is kept.
    pub retention: Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Most connected sessions.
    pub max_sessions: usize,
    /// Announced heartbeat interval.
    pub heartbeat: Duration,
    /// Announced frame limit.
    pub max_frame_bytes: usize,
}

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to write.
    Frame(Frame),
    /// A last frame: write it, then close the connection.
    Close(Frame),
}

/// The hub's handle on one connection.
#[derive(Clone, Debug)]
pub struct ConnLink {
    /// Unique per connection.
    pub id: u64,
    /// The writer's queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection must stop (the writer closes it).
    pub closed: CancellationToken,
}

impl ConnLink {
    /// Queues a frame; false when the queue is full or the writer is gone (the caller then
    /// treats the client as gone).
    fn send(&self, f: Frame) -> bool {
        self.tx.try_send(Outbound::Frame(f)).is_ok()
    }

    /// Sends a CLOSE and ends the connection (at once when the queue is full).
    pub fn close(&self, reason: CloseReason, message: impl Into<String>) {
        let f = frame::close(reason, message);
        if self.tx.try_send(Outbound::Close(f)).is_err() {
            self.closed.cancel();
        }
        metrics::counter!(m::CLOSES, "reason" => reason_label(reason)).increment(1);
    }
}

/// The lower-case label of a close reason.
pub fn reason_label(r: CloseReason) -> &'static str {
    match r {
        CloseReason::Unspecified => "unspecified",
        CloseReason::Normal => "normal",
        CloseReason::Unauthenticated => "unauthenticated",
        CloseReason::ProtocolError => "protocol_error",
        CloseReason::FrameTooLarge => "frame_too_large",
        CloseReason::Replaced => "replaced",
        CloseReason::Idle => "idle",
        CloseReason::Timeout => "timeout",
        CloseReason::Kicked => "kicked",
        CloseReason::Shutdown => "shutdown",
        CloseReason::SlowConsumer => "slow_consumer",
    }
}

/// One player held here.
#[derive(Debug)]
pub struct Player {
    /// The player id.
    pub id: String,
    state: Mutex<Session>,
}

#[derive(Debug)]
struct Session {
    session_id: String,
    attrs: HashMap<String, String>,
    conn: Option<ConnLink>,
    mailbox: Mailbox,
    last_request: Instant,
    offline_since: Instant,
    /// Taken out of the hub (handed off, kicked, expired): a late connection must not revive it.
    removed: bool,
}

/// A session as it moves between gateways or to disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The player.
    pub player_id: String,
    /// The session id.
    pub session_id: String,
    /// The player's attributes.
    #[serde(default)]
    pub attrs: HashMap<String, String>,
    /// The pushes not yet acknowledged, and the numbering.
    pub mailbox: Mailbox,
}

/// Where one push went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Written to the player's live connection (kept until acknowledged).
    Sent,
    /// Kept for the player, who is offline.
    Queued,
    /// This gateway does not hold the player.
    NotHeld,
}

/// The result of a login.
#[derive(Debug)]
pub struct LoggedIn {
    /// The player.
    pub player: Arc<Player>,
    /// The session id.
    pub session_id: String,
    /// True when an existing session was taken over.
    pub resumed: bool,
    /// Pushes replayed after LOGIN_OK.
    pub replayed: usize,
}

/// One session in a `gateway.sessions` listing.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// The player.
    pub player_id: String,
    /// The session.
    pub session_id: String,
    /// Connected now.
    pub online: bool,
    /// Pushes kept.
    pub queued: usize,
    /// Milliseconds since the last request (online) or since the disconnect (offline).
    pub idle_ms: u64,
    /// Attributes.
    pub attrs: HashMap<String, String>,
}

/// The players this gateway holds (see the module docs).
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    players: Mutex<HashMap<String, Arc<Player>>>,
    online: AtomicUsize,
    queued: AtomicI64,
    next_conn: AtomicU64,
    draining: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn push_frame(p: &Pushed) -> Frame {
    frame::message(FrameType::Push, p.msg_id, p.seq, p.flags, p.payload.clone())
}

impl Hub {
    /// An empty hub.
    pub fn new(cfg: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            cfg,
            players: Mutex::default(),
            online: AtomicUsize::new(0),
            queued: AtomicI64::new(0),
            next_conn: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Connected sessions.
    pub fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    /// Sessions held, online or not.
    pub fn sessions(&self) -> usize {
        lock(&self.players).len()
    }

    /// Pushes kept in all mailboxes.
    pub fn queued(&self) -> i64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Starts the drain: new logins and pushes are refused.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// True while draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn new_mailbox(&self) -> Mailbox {
        Mailbox::new(self.cfg.max_messages, self.cfg.max_age.as_millis() as u64)
    }

    /// The player, if held.
    pub fn player(&self, id: &str) -> Option<Arc<Player>> {
        lock(&self.players).get(id).cloned()
    }

    /// True when the player's session is here (online or offline).
    pub fn holds(&self, id: &str) -> bool {
        lock(&self.players).contains_key(id)
    }

    /// Logs `who` in on `link`: takes over the player's session here (or `handed`, the one
    /// another gateway gave up), closes the previous connection (REPLACED), queues LOGIN_OK and
    /// the replay of every kept push above `ack_seq` (when `session_id` names the session).
    /// `None` when the gateway is full.
    pub fn login(
        &self,
        who: PlayerIdentity,
        session_id: &str,
        ack_seq: u64,
        link: ConnLink,
        handed: Option<SessionRecord>,
    ) -> Option<LoggedIn> {
        if self.online() >= self.cfg.max_sessions {
            return None;
        }
        let (player, existed) = {
            let mut map = lock(&self.players);
            match map.get(&who.player_id) {
                Some(p) => (p.clone(), true),
                None => {
                    let (sid, mailbox) = match &handed {
                        Some(h) => {
                            let mut mb = h.mailbox.clone();
                            mb.set_bounds(
                                self.cfg.max_messages,
                                self.cfg.max_age.as_millis() as u64,
                            );
                            self.queued.fetch_add(mb.len() as i64, Ordering::Relaxed);
                            (h.session_id.clone(), mb)
                        }
                        None => (uuid::Uuid::new_v4().to_string(), self.new_mailbox()),
                    };
                    let p = Arc::new(Player {
                        id: who.player_id.clone(),
                        state: Mutex::new(Session {
                            session_id: sid,
                            attrs: HashMap::new(),
                            conn: None,
                            mailbox,
                            last_request: Instant::now(),
                            offline_since: Instant::now(),
                            removed: false,
                        }),
                    });
                    map.insert(who.player_id.clone(), p.clone());
                    (p, handed.is_some())
                }
            }
        };
        let mut s = lock(&player.state);
        if s.removed {
            // Taken out (handed off, kicked) between the map and the lock: start over.
            drop(s);
            return self.login(who, session_id, ack_seq, link, handed);
        }
        if let Some(old) = s.conn.take() {
            old.close(CloseReason::Replaced, "the player logged in again");
            self.online.fetch_sub(1, Ordering::Relaxed);
        }
        if !who.attrs.is_empty() || !existed {
            s.attrs = who.attrs;
        }
        if s.session_id == session_id {
            let before = s.mailbox.len();
            let upto = ack_seq.min(s.mailbox.last_seq());
            let _ = s.mailbox.ack(upto);
            self.queued
                .fetch_sub((before - s.mailbox.len()) as i64, Ordering::Relaxed);
        }
        let ok = frame::login_ok(LoginOk {
            player_id: player.id.clone(),
            session_id: s.session_id.clone(),
            resumed: existed,
            dropped: s.mailbox.take_dropped(),
            heartbeat_ms: self.cfg.heartbeat.as_millis() as u32,
            max_frame_bytes: self.cfg.max_frame_bytes as u32,
            gateway_id: self.cfg.gateway_id.clone(),
        });
        let mut replayed = 0;
        let mut fits = link.send(ok);
        for p in s.mailbox.pending() {
            fits = fits && link.send(push_frame(p));
            replayed += 1;
        }
        if !fits {
            link.close(
                CloseReason::SlowConsumer,
                "the replay did not fit the write queue",
            );
        }
        s.conn = Some(link);
        s.last_request = Instant::now();
        self.online.fetch_add(1, Ordering::Relaxed);
        let session_id = s.session_id.clone();
        drop(s);
        Some(LoggedIn {
            player,
            session_id,
            resumed: existed,
            replayed,
        })
    }

    /// The connection `conn_id` of `player` ended: the session goes offline (unless a newer
    /// connection already replaced it).
    pub fn disconnected(&self, player: &Player, conn_id: u64) {
        let mut s = lock(&player.state);
        if s.conn.as_ref().is_some_and(|c| c.id == conn_id) {
            s.conn = None;
            s.offline_since = Instant::now();
            self.online.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A request arrived on `conn_id`: the session is active. False when the connection was
    /// replaced (its requests are no longer served).
    pub fn touch(&self, player: &Player, conn_id: u64) -> bool {
        let mut s = lock(&player.state);
        if s.conn.as_ref().is_some_and(|c| c.id == conn_id) {
            s.last_request = Instant::now();
            true
        } else {
            false
        }
    }

    /// The client of `conn_id` acknowledged every push up to `seq`. `Err(last)` when it
    /// acknowledged a seq never sent (`last` is the highest sent).
    pub fn ack(&self, player: &Player, conn_id: u64, seq: u64) -> Result<(), u64> {
        let mut s = lock(&player.state);
        if s.conn.as_ref().is_none_or(|c| c.id != conn_id) {
            return Ok(());
        }
        let n = s.mailbox.ack(seq)?;
        self.queued.fetch_sub(n as i64, Ordering::Relaxed);
        Ok(())
    }

    fn deliver_locked(
        &self,
        s: &mut Session,
        msg_id: u32,
        flags: u32,
        payload: Bytes,
        source: &'static str,
    ) -> Delivery {
        let (pushed, dropped) = s.mailbox.push(msg_id, flags, payload, now_ms());
        let kept = if s
            .mailbox
            .pending()
            .last()
            .is_some_and(|p| p.seq == pushed.seq)
        {
            1
        } else {
            0
        };
        self.queued
            .fetch_add(kept - dropped as i64, Ordering::Relaxed);
        if dropped > 0 {
            metrics::counter!(m::DROPPED, "reason" => "overflow").increment(dropped);
        }
        let delivery = match &s.conn {
            Some(link) if link.send(push_frame(&pushed)) => Delivery::Sent,
            Some(link) => {
                // The client does not read: close it; the push waits for its next login.
                link.close(
                    CloseReason::SlowConsumer,
                    "the client does not read its pushes",
                );
                s.conn = None;
                s.offline_since = Instant::now();
                self.online.fetch_sub(1, Ordering::Relaxed);
                Delivery::Queued
            }
            None => Delivery::Queued,
        };
        let label = if delivery == Delivery::Sent {
            "sent"
        } else {
            "queued"
        };
        metrics::counter!(m::PUSHES, "source" => source, "delivery" => label).increment(1);
        delivery
    }

    /// Pushes to a player held here; [`Delivery::NotHeld`] otherwise. With `create`, a player
    /// not held gets a new offline session for the push (this gateway is the player's home).
    pub fn push(
        &self,
        player_id: &str,
        msg_id: u32,
        flags: u32,
        payload: Bytes,
        create: bool,
    ) -> Delivery {
        let player = if create {
            let mut map = lock(&self.players);
            map.entry(player_id.to_string())
                .or_insert_with(|| {
                    Arc::new(Player {
                        id: player_id.to_string(),
                        state: Mutex::new(Session {
                            session_id: uuid::Uuid::new_v4().to_string(),
                            attrs: HashMap::new(),
                            conn: None,
                            mailbox: self.new_mailbox(),
                            last_request: Instant::now(),
                            offline_since: Instant::now(),
                            removed: false,
                        }),
                    })
                })
                .clone()
        } else {
            match self.player(player_id) {
                Some(p) => p,
                None => return Delivery::NotHeld,
            }
        };
        let mut s = lock(&player.state);
        if s.removed {
            return Delivery::NotHeld;
        }
        self.deliver_locked(&mut s, msg_id, flags, payload, "push")
    }

    /// Pushes to every connected player whose attributes contain all of `filter` (and, with
    /// `include_offline`, to offline sessions too). Returns (sent, queued).
    pub fn broadcast(
        &self,
        msg_id: u32,
        flags: u32,
        payload: Bytes,
        filter: &HashMap<String, String>,
        include_offline: bool,
    ) -> (usize, usize) {
        let players: Vec<Arc<Player>> = lock(&self.players).values().cloned().collect();
        let (mut sent, mut queued) = (0, 0);
        for p in players {
            let mut s = lock(&p.state);
            if s.removed
                || (s.conn.is_none() && !include_offline)
                || !filter.iter().all(|(k, v)| s.attrs.get(k) == Some(v))
            {
                continue;
            }
            match self.deliver_locked(&mut s, msg_id, flags, payload.clone(), "broadcast") {
                Delivery::Sent => sent += 1,
                _ => queued += 1,
            }
        }
        (sent, queued)
    }

    /// Takes the player's session out of the hub: closes its connection with `reason` and
    /// returns the session (for a hand-off or a kick).
    pub fn take(
        &self,
        player_id: &str,
        reason: CloseReason,
        message: &str,
    ) -> Option<SessionRecord> {
        let player = lock(&self.players).remove(player_id)?;
        let mut s = lock(&player.state);
        s.removed = true;
        if let Some(link) = s.conn.take() {
            link.close(reason, message);
            self.online.fetch_sub(1, Ordering::Relaxed);
        }
        self.queued
            .fetch_sub(s.mailbox.len() as i64, Ordering::Relaxed);
        Some(SessionRecord {
            player_id: player.id.clone(),
            session_id: s.session_id.clone(),
            attrs: s.attrs.clone(),
            mailbox: s.mailbox.clone(),
        })
    }

    /// Adds sessions (loaded from disk) as offline sessions; a player already held keeps the
    /// session it has.
    pub fn restore(&self, records: Vec<SessionRecord>) -> usize {
        let mut map = lock(&self.players);
        let mut n = 0;
        for r in records {
            if map.contains_key(&r.player_id) {
                continue;
            }
            let mut mailbox = r.mailbox;
            mailbox.set_bounds(self.cfg.max_messages, self.cfg.max_age.as_millis() as u64);
            self.queued
                .fetch_add(mailbox.len() as i64, Ordering::Relaxed);
            map.insert(
                r.player_id.clone(),
                Arc::new(Player {
                    id: r.player_id,
                    state: Mutex::new(Session {
                        session_id: r.session_id,
                        attrs: r.attrs,
                        conn: None,
                        mailbox,
                        last_request: Instant::now(),
                        offline_since: Instant::now(),
                        removed: false,
                    }),
                }),
            );
            n += 1;
        }
        n
    }

    /// Every session with something kept (for persisting at shutdown).
    pub fn records(&self) -> Vec<SessionRecord> {
        let players: Vec<Arc<Player>> = lock(&self.players).values().cloned().collect();
        players
            .iter()
            .filter_map(|p| {
                let s = lock(&p.state);
                (!s.removed && !s.mailbox.is_empty()).then(|| SessionRecord {
                    player_id: p.id.clone(),
                    session_id: s.session_id.clone(),
                    attrs: s.attrs.clone(),
                    mailbox: s.mailbox.clone(),
                })
            })
            .collect()
    }

    /// Sessions, online first, then by player id; at most `limit`.
    pub fn list(&self, limit: usize) -> Vec<SessionInfo> {
        let players: Vec<Arc<Player>> = lock(&self.players).values().cloned().collect();
        let now = Instant::now();
        let mut out: Vec<SessionInfo> = players
            .iter()
            .map(|p| {
                let s = lock(&p.state);
                let since = if s.conn.is_some() {
                    s.last_request
                } else {
                    s.offline_since
                };
                SessionInfo {
                    player_id: p.id.clone(),
                    session_id: s.session_id.clone(),
                    online: s.conn.is_some(),
                    queued: s.mailbox.len(),
                    idle_ms: now.saturating_duration_since(since).as_millis() as u64,
                    attrs: s.attrs.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| (!a.online, &a.player_id).cmp(&(!b.online, &b.player_id)));
        out.truncate(limit);
        out
    }

    /// Closes every connection with `reason` (shutdown); sessions stay, offline.
    pub fn close_all(&self, reason: CloseReason, message: &str) {
        let players: Vec<Arc<Player>> = lock(&self.players).values().cloned().collect();
        for p in players {
            let mut s = lock(&p.state);
            if let Some(link) = s.conn.take() {
                link.close(reason, message);
                s.offline_since = Instant::now();
                self.online.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends `f` to every connection (GOAWAY).
    pub fn tell_all(&self, f: &Frame) {
        let players: Vec<Arc<Player>> = lock(&self.players).values().cloned().collect();
        for p in players {
            if let Some(link) = &lock(&p.state).conn {
                let _ = link.send(f.clone());
            }
        }
    }

    /// One sweep (see the module docs); returns (idle connections closed, sessions expired).
    pub fn sweep(&self) -> (usize, usize) {
        let now = Instant::now();
        let now_wall = now_ms();
        let players: Vec<Arc<Player>> = lock(&self.players).values().cloned().collect();
        let (mut idle, mut expired) = (0, 0);
        for p in players {
            let mut s = lock(&p.state);
            let aged = s.mailbox.expire(now_wall);
            if aged > 0 {
                self.queued.fetch_sub(aged as i64, Ordering::Relaxed);
                metrics::counter!(m::DROPPED, "reason" => "age").increment(aged);
            }
            if s.conn.is_some()
                && now.saturating_duration_since(s.last_request) > self.cfg.idle_timeout
            {
                if let Some(link) = s.conn.take() {
                    tracing::info!(player_id = %p.id, session_id = %s.session_id, "idle session closed");
                    link.close(CloseReason::Idle, "no request within the idle timeout");
                }
                s.offline_since = now;
                self.online.fetch_sub(1, Ordering::Relaxed);
                idle += 1;
            } else if s.conn.is_none()
                && now.saturating_duration_since(s.offline_since) > self.cfg.retention
            {
                drop(s);
                let mut map = lock(&self.players);
                // Only if it is still this player object and still offline.
                if map.get(&p.id).is_some_and(|q| Arc::ptr_eq(q, &p)) {
                    let mut s = lock(&p.state);
                    if s.conn.is_none() {
                        map.remove(&p.id);
                        s.removed = true;
                        let left = s.mailbox.len() as u64;
                        self.queued.fetch_sub(left as i64, Ordering::Relaxed);
                        if left > 0 {
                            metrics::counter!(m::DROPPED, "reason" => "expired_session")
                                .increment(left);
                        }
                        expired += 1;
                    }
                }
            }
        }
        let total = self.sessions();
        metrics::gauge!(m::SESSIONS_ONLINE).set(self.online() as f64);
        metrics::gauge!(m::SESSIONS_OFFLINE).set(total.saturating_sub(self.online()) as f64);
        metrics::gauge!(m::QUEUED).set(self.queued() as f64);
        (idle, expired)
    }
}
