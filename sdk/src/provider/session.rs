//! One session with a server: register (or resume), open the tunnel, report jobs, read frames
//! until the tunnel ends, say goodbye on shutdown; and the heartbeats beside it.

use super::*;
use crate::backoff::Backoff;
use crate::client::MAX_MESSAGE_BYTES;
use crate::job::Outbox;
use crate::tls::{connect, error_chain};
use croupier_proto::common::v1::NodeState;
use croupier_proto::control::v1::{
    AgentFrame, Goodbye, HeartbeatRequest, Hello, RegisterAgentRequest, ServerFrame, agent_frame,
    control_service_client::ControlServiceClient, server_frame,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

impl Provider {
    pub(super) async fn session(
        &self,
        server: &str,
        pem: &crate::tls::TlsPem,
        session_id: &mut String,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Ended {
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            c = connect(server, pem) => match c {
                Ok(c) => c,
                Err(e) => return Ended::Reconnect(e.to_string()),
            },
        };
        let mut control = ControlServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut functions: Vec<String> = self.handlers.keys().cloned().collect();
        functions.sort();
        let reg = RegisterAgentRequest {
            agent_id: self.cfg.agent_id.clone(),
            game_id: self.cfg.game_id.clone(),
            env: self.cfg.env.clone(),
            version: self.cfg.version.clone(),
            functions,
            labels: self.cfg.labels.clone(),
            descriptors: self.descriptors.clone(),
            session_id: session_id.clone(),
            max_message_bytes: MAX_MESSAGE_BYTES as i64,
            inventory: self.reporter.for_registration(),
        };
        let registered = match control.register_agent(reg).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if matches!(
                    s.code(),
                    Code::PermissionDenied | Code::FailedPrecondition | Code::InvalidArgument
                ) {
                    tracing::error!(code = ?s.code(), message = %s.message(), "registration refused");
                }
                return Ended::Reconnect(format!("RegisterAgent: {}", s.message()));
            }
        };
        *session_id = registered.session_id.clone();
        let interval = Duration::from_secs(registered.heartbeat_interval.max(1) as u64);

        let (out_tx, out_rx) = mpsc::channel::<AgentFrame>(1024);
        let hello = AgentFrame {
            frame: Some(agent_frame::Frame::Hello(Hello {
                agent_id: self.cfg.agent_id.clone(),
                session_id: session_id.clone(),
            })),
        };
        if out_tx.send(hello).await.is_err() {
            return Ended::Reconnect("tunnel closed".into());
        }
        let mut inbound = match control.connect(ReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Ended::Reconnect(format!("Connect: {}", s.message())),
        };
        let tunnel_heartbeats = match inbound.message().await {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Welcome(w)),
            })) => {
                let limit = usize::try_from(w.max_message_bytes).unwrap_or(0);
                self.outbox.set_limit(limit);
                if limit > 0 {
                    self.server_limit
                        .store(limit.min(MAX_MESSAGE_BYTES), Ordering::Relaxed);
                }
                w.tunnel_heartbeats
            }
            Ok(_) => return Ended::Reconnect("server did not welcome the tunnel".into()),
            Err(s) => return Ended::Reconnect(format!("Connect: {}", s.message())),
        };
        backoff.reset();
        let mut generation = 0;
        metrics::gauge!(crate::metrics::TUNNEL_UP).set(1.0);
        self.state.send_modify(|s| {
            s.connected = true;
            s.session_id = session_id.clone();
            s.server = server.to_string();
            s.node_state = registered.node_state;
            s.connects += 1;
            generation = s.connects;
        });
        // Report running jobs and send their unacknowledged events before anything new.
        self.outbox.attach(generation, out_tx.clone()).await;
        tracing::info!(server, agent_id = %self.cfg.agent_id, session = %session_id, resumed = registered.resumed, "tunnel open");

        // Heartbeats run beside the tunnel; a refused heartbeat (session expired) ends it.
        let session_over = CancellationToken::new();
        let heartbeat = croupier_proto::task::spawn(
            "session",
            heartbeat_loop(
                control.clone(),
                Beat {
                    agent_id: self.cfg.agent_id.clone(),
                    session_id: session_id.clone(),
                    interval,
                    status: self.status.clone(),
                    in_flight: self.in_flight.clone(),
                    outbox: self.outbox.clone(),
                    tunnel: tunnel_heartbeats.then(|| out_tx.clone()),
                },
                session_over.clone(),
            ),
        );
        croupier_proto::task::spawn("assignments", self.fetch_assignments(control.clone()));
        let reports = croupier_proto::task::spawn("node reports", {
            let (reporter, tunnel, over) =
                (self.reporter.clone(), out_tx.clone(), session_over.clone());
            async move { reporter.forward(tunnel, over).await }
        });
        let ended = loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => break Ended::Shutdown,
                _ = session_over.cancelled() => break Ended::Reconnect("session expired".into()),
                f = inbound.message() => f,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => break Ended::Reconnect("server closed the tunnel".into()),
                Err(s) => break Ended::Reconnect(error_chain(&s)),
            };
            match frame.frame {
                Some(server_frame::Frame::Invoke(inv)) => self.spawn_call(inv, &out_tx),
                Some(server_frame::Frame::Cancel(c)) => {
                    if let Some(r) = self.running.lock().get(&c.request_id) {
                        tracing::debug!(request_id = %c.request_id, reason = %c.reason, "call cancelled");
                        r.cancel(&c.reason);
                    }
                }
                Some(server_frame::Frame::Ack(a)) => self.outbox.ack(&a.job_id, a.seq).await,
                Some(server_frame::Frame::StateChange(sc)) => {
                    if let Some(r) = sc.record {
                        self.apply_state(&r, &out_tx);
                        // Whether each function is enabled here depends on the node state
                        // too: fetch the assignments as they are now.
                        croupier_proto::task::spawn(
                            "assignments",
                            self.fetch_assignments(control.clone()),
                        );
                    }
                }
                Some(server_frame::Frame::Goaway(g)) => {
                    // Keep serving: the server closes the tunnel once calls in flight are done,
                    // and the next session goes to the next server.
                    tracing::info!(reason = %g.reason, "server going away");
                }
                Some(server_frame::Frame::AssignmentsChanged(c)) => {
                    tracing::info!(version = c.version, "assignments changed; fetching them");
                    croupier_proto::task::spawn(
                        "assignments",
                        self.fetch_assignments(control.clone()),
                    );
                }
                Some(server_frame::Frame::Welcome(_)) | None => {}
            }
        };
        session_over.cancel();
        let _ = heartbeat.await;
        let _ = reports.await;
        if let Ended::Shutdown = ended {
            let bye = AgentFrame {
                frame: Some(agent_frame::Frame::Goodbye(Goodbye {
                    reason: "agent shutting down".into(),
                })),
            };
            let _ = out_tx.send(bye).await;
            let deadline = Instant::now() + self.cfg.shutdown_grace;
            while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left: Vec<Arc<Running>> = self.running.lock().values().cloned().collect();
            for r in &left {
                r.cancel("the agent shut down");
            }
            // Cancelled jobs report CANCELLED before the tunnel closes.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !left.is_empty()
                && self.in_flight.load(Ordering::Relaxed) > 0
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.outbox.detach(generation).await;
            // Close our side and wait (briefly) for the server to close its side, so the
            // goodbye and the last results are delivered before the process exits.
            drop(out_tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
            tracing::info!(agent_id = %self.cfg.agent_id, "said goodbye");
        } else {
            self.outbox.detach(generation).await;
        }
        ended
    }
}

impl Provider {
    /// Fetches this agent's assignments (GetAssignments) into the provider; a failure keeps
    /// the previous ones (the next change or registration fetches again).
    fn fetch_assignments(
        &self,
        mut control: ControlServiceClient<tonic::transport::Channel>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (agent_id, store, state) = (
            self.cfg.agent_id.clone(),
            self.assignments.clone(),
            self.state.clone(),
        );
        async move {
            let req = croupier_proto::control::v1::GetAssignmentsRequest {
                agent_id,
                ..Default::default()
            };
            match control.get_assignments(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    *store.lock() = r
                        .assignments
                        .into_iter()
                        .map(|a| (a.function_id.clone(), a))
                        .collect();
                    state.send_modify(|s| s.assignments_version = r.version);
                }
                Err(s) => {
                    tracing::warn!(code = ?s.code(), message = %s.message(), "fetching assignments failed");
                }
            }
        }
    }

    /// Applies a node state change and acknowledges it: `disabled` cancels every running call
    /// and job; `maintenance` lets them finish (the server sends no new work).
    fn apply_state(
        &self,
        r: &croupier_proto::common::v1::NodeStateRecord,
        out_tx: &mpsc::Sender<AgentFrame>,
    ) {
        let state = NodeState::try_from(r.state).unwrap_or_default();
        tracing::info!(?state, reason = %r.reason, actor = %r.actor, "node state changed");
        self.state.send_modify(|s| s.node_state = r.state);
        if state == NodeState::Disabled {
            let why = format!("node disabled by {}: {}", r.actor, r.reason);
            let running: Vec<Arc<Running>> = self.running.lock().values().cloned().collect();
            for call in running {
                call.cancel(&why);
            }
        }
        let ack = AgentFrame {
            frame: Some(agent_frame::Frame::StateApplied(
                croupier_proto::control::v1::StateApplied {
                    changed_at: r.changed_at,
                    state: r.state,
                },
            )),
        };
        if out_tx.try_send(ack).is_err() {
            tracing::warn!("node state applied, but the tunnel is full: not acknowledged");
        }
    }
}

/// What the heartbeat loop sends.
pub(super) struct Beat {
    pub(super) agent_id: String,
    pub(super) session_id: String,
    pub(super) interval: Duration,
    pub(super) status: Option<StatusFn>,
    pub(super) in_flight: Arc<AtomicI64>,
    pub(super) outbox: Arc<Outbox>,
    /// The tunnel, when the server takes heartbeats over it (its Welcome said so); otherwise
    /// the Heartbeat rpc.
    pub(super) tunnel: Option<mpsc::Sender<AgentFrame>>,
}

pub(super) async fn heartbeat_loop(
    mut control: ControlServiceClient<tonic::transport::Channel>,
    beat: Beat,
    over: CancellationToken,
) {
    let Beat {
        agent_id,
        session_id,
        interval,
        status,
        in_flight,
        outbox,
        tunnel,
    } = beat;
    let mut tick = tokio::time::interval(interval);
    tick.tick().await; // registration counts as the first heartbeat
    loop {
        tokio::select! {
            _ = over.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut s = status.as_ref().map(|f| f()).unwrap_or_default();
        s.insert(
            "in_flight".into(),
            in_flight.load(Ordering::Relaxed).to_string(),
        );
        s.insert("running_jobs".into(), outbox.running().await.to_string());
        let req = HeartbeatRequest {
            agent_id: agent_id.clone(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            status: s,
            session_id: session_id.clone(),
        };
        if let Some(tunnel) = &tunnel {
            let frame = AgentFrame {
                frame: Some(agent_frame::Frame::Heartbeat(req)),
            };
            match tokio::time::timeout(interval, tunnel.send(frame)).await {
                Ok(Ok(())) => {}
                // The tunnel is gone: the session loop sees it end and reconnects.
                Ok(Err(_)) => return,
                Err(_) => {
                    metrics::counter!(crate::metrics::HEARTBEAT_FAILURES).increment(1);
                    tracing::warn!("heartbeat timed out: the tunnel is full");
                }
            }
            continue;
        }
        let sent = tokio::time::timeout(interval, control.heartbeat(req)).await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.code() == Code::NotFound => {
                tracing::warn!(message = %s.message(), "session expired; registering again");
                over.cancel();
                return;
            }
            Ok(Err(s)) => {
                metrics::counter!(crate::metrics::HEARTBEAT_FAILURES).increment(1);
                tracing::warn!(code = ?s.code(), message = %s.message(), "heartbeat failed");
            }
            Err(_) => {
                metrics::counter!(crate::metrics::HEARTBEAT_FAILURES).increment(1);
                tracing::warn!("heartbeat timed out");
            }
        }
    }
}
