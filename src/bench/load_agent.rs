//! The lightweight agents of `croupier bench agents`: real agent sessions without handlers or
//! packs (the load a fleet puts on a server). Each one has its own certificate and connection,
//! registers, opens its `Connect` tunnel and heartbeats like a real agent, and reconnects with
//! the SDK's backoff when the tunnel ends (a server restart), so a reconnect storm is what real
//! agents would make. Heartbeats go over the tunnel where the server takes
//! them there, as the SDK's do, or by rpc when `LoadStats::unary_heartbeats` says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use croupier_proto::control::v1::{
    AgentFrame, HeartbeatRequest, Hello, RegisterAgentRequest, ServerFrame, agent_frame,
    control_service_client::ControlServiceClient, server_frame,
};
use croupier_sdk::backoff::Backoff;
use croupier_sdk::tls::{TlsPem, endpoint, error_chain};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// What all lightweight agents did, counted together.
#[derive(Default)]
pub(super) struct LoadStats {
    /// Registrations that succeeded.
    pub(super) registrations: AtomicU64,
    /// Attempts that failed (connect, TLS, `RegisterAgent` or the tunnel's opening).
    pub(super) failures: AtomicU64,
    /// Heartbeats the server accepted.
    pub(super) heartbeats: AtomicU64,
    /// Heartbeat with the rpc even where the server takes them over the tunnel (to compare).
    pub(super) unary_heartbeats: std::sync::atomic::AtomicBool,
    /// Failed attempts by the start of their error.
    pub(super) reasons: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
}

impl LoadStats {
    /// The most frequent failure reasons, most frequent first.
    pub(super) fn top_reasons(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.reasons.lock().drain().collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.1));
        v.truncate(n);
        v
    }
}

/// The loopback source address of lightweight agent `i` (127.1.0.1 onwards; all of 127/8 is
/// loopback on Linux).
pub(super) fn source(i: usize) -> std::net::IpAddr {
    let n = i as u32;
    std::net::Ipv4Addr::new(
        127,
        1 + (n / 65_025) as u8,
        (n / 255 % 255) as u8,
        (n % 255 + 1) as u8,
    )
    .into()
}

/// One lightweight agent of `bench` / `scale`.
pub(super) struct LoadAgent {
    pub(super) url: String,
    pub(super) pem: TlsPem,
    pub(super) id: String,
    /// The loopback address it connects from (its own, as a real agent on its own node: the
    /// server's per-source handshake limit then applies per agent).
    pub(super) source: std::net::IpAddr,
    pub(super) stop: CancellationToken,
    pub(super) stats: Arc<LoadStats>,
}

impl LoadAgent {
    /// Runs until `stop`: a session, and after it ends (or fails to start) another one after
    /// the SDK's backoff. `first` is held until the first registration, so that the caller
    /// can bound how many register at once.
    pub(super) async fn run(self, mut first: Option<OwnedSemaphorePermit>) {
        let mut backoff = Backoff::default();
        while !self.stop.is_cancelled() {
            match self.session(&mut first).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let reason: String = format!("{e:#}").chars().take(400).collect();
                    *self.stats.reasons.lock().entry(reason).or_default() += 1;
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One session: registers, opens the tunnel and heartbeats until the tunnel ends.
    async fn session(&self, first: &mut Option<OwnedSemaphorePermit>) -> anyhow::Result<()> {
        let channel = endpoint(&self.url, &self.pem)?
            .local_address(Some(self.source))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("connecting: {}", error_chain(&e)))?;
        let mut control = ControlServiceClient::new(channel);
        let reg = control
            .register_agent(RegisterAgentRequest {
                agent_id: self.id.clone(),
                game_id: "bench".into(),
                env: "scale".into(),
                version: "1".into(),
                functions: vec!["bench.noop".into()],
                ..Default::default()
            })
            .await?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(AgentFrame {
            frame: Some(agent_frame::Frame::Hello(Hello {
                agent_id: self.id.clone(),
                session_id: reg.session_id.clone(),
            })),
        })
        .await?;
        let mut inbound = control
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let tunnel_heartbeats = match inbound.message().await? {
            Some(ServerFrame {
                frame: Some(server_frame::Frame::Welcome(w)),
            }) => w.tunnel_heartbeats,
            _ => anyhow::bail!("no Welcome on the tunnel"),
        };
        self.stats.registrations.fetch_add(1, Ordering::Relaxed);
        first.take();
        let interval = Duration::from_secs(reg.heartbeat_interval.max(1) as u64);
        // Spread the heartbeats over the interval.
        let offset = Duration::from_millis(rand::random::<u64>() % interval.as_millis() as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                frame = inbound.message() => match frame {
                    Ok(Some(_)) => continue,
                    // The tunnel ended: the server went away.
                    _ => return Ok(()),
                },
                _ = tick.tick() => {}
            }
            let req = HeartbeatRequest {
                agent_id: self.id.clone(),
                timestamp: croupier_registry::model::now_ms(),
                status: Default::default(),
                session_id: reg.session_id.clone(),
            };
            if tunnel_heartbeats && !self.stats.unary_heartbeats.load(Ordering::Relaxed) {
                let frame = AgentFrame {
                    frame: Some(agent_frame::Frame::Heartbeat(req)),
                };
                if tx.send(frame).await.is_err() {
                    return Ok(());
                }
                self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match control.heartbeat(req).await {
                Ok(_) => {
                    self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
                Err(_) => {}
            }
        }
    }
}
