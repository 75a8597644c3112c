//! The `Connect` tunnel: the Hello, the read loop that hands results and job frames on, and
//! the [`AgentLink`] through which calls and jobs go down to the agent.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::error::ControlError;
use crate::link::{AgentLink, LinkError, Load};
use async_trait::async_trait;
use croupier_proto::common::v1 as common;
use croupier_proto::control::v1::{
    self as pb, AgentFrame, InvokeResult, ServerFrame, agent_frame, server_frame,
};
use croupier_proto::limits::{check_payload, excerpt};
use croupier_registry::identity::Identity;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

impl ControlPlane {
    /// Handles `Connect`: validates the Hello, attaches the tunnel to the session and returns
    /// the stream of frames for the agent.
    pub async fn connect(
        self: &Arc<Self>,
        who: &Identity,
        mut inbound: Streaming<AgentFrame>,
    ) -> Result<Frames, ControlError> {
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| ControlError::BadRequest("no Hello frame within 10 s of Connect".into()))?
            .map_err(|e| ControlError::BadRequest(format!("reading Hello: {e}")))?;
        let Some(agent_frame::Frame::Hello(hello)) = first.and_then(|f| f.frame) else {
            return Err(ControlError::BadRequest(
                "the first frame on Connect must be Hello{agent_id, session_id}".into(),
            ));
        };
        Self::require_agent(who, &hello.agent_id, "connect")?;
        let session = self
            .session(&hello.agent_id)
            .filter(|s| s.session_id == hello.session_id)
            .ok_or_else(|| expired(&hello.agent_id))?;
        // The session was registered under some certificate of this agent; this one must be
        // scoped for the same game and env too.
        if let Some(agent) = self.view.agent(&hello.agent_id)
            && let Some(refusal) = who.out_of_scope("connect", &agent.game_id, &agent.env)
        {
            return Err(ControlError::NotAllowed(refusal));
        }
        let (tx, rx) = mpsc::channel(self.cfg.tunnel_queue);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let welcome = ServerFrame {
            frame: Some(server_frame::Frame::Welcome(pb::Welcome {
                session_id: session.session_id.clone(),
                node_state: common::NodeState::from(self.view.node(&hello.agent_id).state) as i32,
                max_message_bytes: self.cfg.max_message_bytes as i64,
                tunnel_heartbeats: true,
            })),
        };
        tx.send(out(welcome))
            .await
            .map_err(|_| ControlError::TunnelClosed("tunnel closed during setup".into()))?;
        let previous = session.tunnel.lock().replace(Tunnel {
            generation,
            tx: tx.clone(),
        });
        if let Some(prev) = previous {
            session.fail_pending(Some(prev.generation));
        }
        tracing::info!(agent_id = %hello.agent_id, generation, "tunnel open");
        self.node_event(
            &hello.agent_id,
            "agent.online",
            "",
            "online",
            format!("tunnel open on server {}", self.cfg.server_id),
            &[("server", self.cfg.server_id.clone())],
        );
        metrics::counter!(crate::metrics::TUNNEL_EVENTS, "event" => "open").increment(1);
        self.resend_state(&session);
        let plane = self.clone();
        croupier_proto::task::spawn("tunnel reader", async move {
            plane.read_tunnel(session, generation, inbound).await;
        });
        Ok(Frames(ReceiverStream::new(rx)))
    }

    pub(super) async fn read_tunnel(
        self: Arc<Self>,
        session: Arc<Session>,
        generation: u64,
        mut inbound: Streaming<AgentFrame>,
    ) {
        let mut said_goodbye = false;
        loop {
            let frame = match inbound.message().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(agent_id = %session.agent_id, error = %e, "tunnel read failed");
                    break;
                }
            };
            match frame.frame {
                Some(agent_frame::Frame::Result(r)) => {
                    let pending = session.pending.lock().remove(&r.request_id);
                    if let Some(p) = pending {
                        let _ = p.tx.send(Ok(self.checked_result(&session.agent_id, r)));
                    }
                }
                Some(agent_frame::Frame::Goodbye(g)) => {
                    // The agent takes no new work; keep reading so the answers of calls already
                    // running still arrive, until the agent closes the stream.
                    let reason = excerpt(&g.reason, self.cfg.max_text_chars);
                    tracing::info!(agent_id = %session.agent_id, reason = %reason, "agent said goodbye");
                    said_goodbye = true;
                    self.forget(&session, "agent said goodbye").await;
                    self.node_event(
                        &session.agent_id,
                        "agent.offline",
                        "",
                        "offline",
                        format!("agent said goodbye: {reason}"),
                        &[("reason", "goodbye".into())],
                    );
                }
                Some(agent_frame::Frame::JobEvent(e)) => match (self.jobs.get(), e.event) {
                    (Some(sink), Some(ev)) => {
                        session.running.event(&ev);
                        sink.event(&session.agent_id, generation, ev).await;
                    }
                    _ => {
                        tracing::debug!(agent_id = %session.agent_id, "job event dropped: jobs are not served");
                    }
                },
                Some(agent_frame::Frame::JobsReport(r)) => {
                    session.running.reported(&r.jobs);
                    if let Some(sink) = self.jobs.get() {
                        sink.report(&session.agent_id, generation, r.jobs).await;
                    }
                }
                Some(agent_frame::Frame::Heartbeat(h)) => {
                    let beat = if h.agent_id.is_empty() || h.agent_id == session.agent_id {
                        self.beat(&session, h.status)
                    } else {
                        Err(ControlError::BadRequest(format!(
                            "a heartbeat for agent {:?} on the tunnel of agent {}",
                            excerpt(&h.agent_id, 64),
                            session.agent_id
                        )))
                    };
                    if let Err(e) = beat {
                        // As the rpc would answer it; the agent reconnects and sees why.
                        tracing::warn!(agent_id = %session.agent_id, error = %e, "heartbeat over the tunnel refused; closing the tunnel");
                        if let Some(t) = session.tunnel().filter(|t| t.generation == generation) {
                            let _ = t.tx.try_send(Err(Box::new(e.into())));
                        }
                        break;
                    }
                }
                Some(agent_frame::Frame::NodeEvent(e)) => self.agent_event(&session, e),
                Some(agent_frame::Frame::Inventory(inv)) => {
                    self.inventory_frame(&session, *inv).await;
                }
                Some(agent_frame::Frame::Metrics(m)) => self.metrics_frame(&session, m),
                Some(agent_frame::Frame::StateApplied(a)) => self.state_applied(&session, a).await,
                Some(agent_frame::Frame::Hello(_)) | None => {}
            }
        }
        let mut tunnel = session.tunnel.lock();
        if tunnel.as_ref().is_some_and(|t| t.generation == generation) {
            *tunnel = None;
            drop(tunnel);
            tracing::info!(agent_id = %session.agent_id, generation, "tunnel closed");
            metrics::counter!(crate::metrics::TUNNEL_EVENTS, "event" => "close").increment(1);
        } else {
            drop(tunnel);
        }
        session.fail_pending(Some(generation));
        if said_goodbye && let Some(sink) = self.jobs.get() {
            // Jobs the agent did not finish before it left are lost.
            sink.agent_gone(&session.agent_id, "the agent shut down");
        }
    }

    /// A result as it may reach the caller: one past the payload limits (which the caller's
    /// decoder shares) becomes a failure that says so, and the error text is bounded.
    pub(super) fn checked_result(&self, agent_id: &str, mut r: InvokeResult) -> InvokeResult {
        if let Err(e) = check_payload(r.result.as_ref(), self.cfg.max_message_bytes) {
            tracing::warn!(agent_id, request_id = %r.request_id, error = %e, "agent result refused");
            r.result = None;
            r.success = false;
            r.error = format!("the result of agent {agent_id} {e}");
            r.error_code = "RESULT_REFUSED".into();
        }
        if r.error.len() > 16 * 1024 {
            r.error = excerpt(&r.error, 4096);
        }
        r
    }
}

/// Removes a pending invocation when its future is dropped before completion, and tells the
/// agent to cancel it.
pub(super) struct InFlight<'a> {
    pub(super) session: &'a Session,
    pub(super) request_id: String,
    pub(super) tx: FrameTx,
    pub(super) done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.session.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            return;
        }
        if self
            .session
            .pending
            .lock()
            .remove(&self.request_id)
            .is_some()
        {
            let _ = self.tx.try_send(out(ServerFrame {
                frame: Some(server_frame::Frame::Cancel(pb::Cancel {
                    request_id: std::mem::take(&mut self.request_id),
                    reason: "caller gave up (deadline passed or call cancelled)".into(),
                })),
            }));
        }
    }
}

#[async_trait]
impl AgentLink for ControlPlane {
    fn is_connected(&self, agent_id: &str) -> bool {
        self.session(agent_id).is_some_and(|s| s.tunnel().is_some())
    }

    fn load(&self, agent_id: &str) -> Load {
        self.session(agent_id).map(|s| s.load()).unwrap_or_default()
    }

    async fn invoke(&self, agent_id: &str, invoke: pb::Invoke) -> Result<InvokeResult, LinkError> {
        let not_connected = || LinkError::NotConnected(agent_id.to_string());
        let session = self.session(agent_id).ok_or_else(not_connected)?;
        let tunnel = session.tunnel().ok_or_else(not_connected)?;
        let request_id = invoke.request_id.clone();
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Invoke(invoke)),
        };
        session.check_frame(&frame)?;
        let (tx, rx) = oneshot::channel();
        session.pending.lock().insert(
            request_id.clone(),
            Pending {
                generation: tunnel.generation,
                tx,
            },
        );
        session.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut guard = InFlight {
            session: &session,
            request_id,
            tx: tunnel.tx.clone(),
            done: false,
        };
        if tunnel.tx.send(out(frame)).await.is_err() {
            session.pending.lock().remove(&guard.request_id);
            guard.done = true;
            return Err(not_connected());
        }
        let outcome = rx.await;
        guard.done = true;
        outcome.unwrap_or_else(|_| Err(LinkError::Lost(agent_id.to_string())))
    }

    async fn start_job(&self, agent_id: &str, invoke: pb::Invoke) -> Result<u64, LinkError> {
        let not_connected = || LinkError::NotConnected(agent_id.to_string());
        let session = self.session(agent_id).ok_or_else(not_connected)?;
        let tunnel = session.tunnel().ok_or_else(not_connected)?;
        let job_id = invoke.job_id.clone();
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Invoke(invoke)),
        };
        session.check_frame(&frame)?;
        // Counted before it is sent, so that its terminal event cannot arrive first.
        session.running.started(&job_id);
        if tunnel.tx.send(out(frame)).await.is_err() {
            session.running.ended(&job_id);
            return Err(not_connected());
        }
        Ok(tunnel.generation)
    }

    fn send_frame(&self, agent_id: &str, frame: ServerFrame) -> bool {
        self.session(agent_id)
            .and_then(|s| s.tunnel())
            .is_some_and(|t| t.tx.try_send(out(frame)).is_ok())
    }

    fn has_session(&self, agent_id: &str) -> bool {
        self.session(agent_id).is_some()
    }
}
