//! An agent that speaks the tunnel protocol frame by frame, for tests that need an agent doing
//! what the SDK never would: answering late, ignoring a cancel, sending malformed or forged
//! frames. It connects with a real certificate over mTLS like any agent.

use std::time::Duration;

use croupier_proto::common::v1::FunctionDescriptor;
use croupier_proto::control::v1::{
    AgentFrame, AgentJobEvent, HeartbeatRequest, Hello, Invoke, InvokeResult, RegisterAgentRequest,
    ServerFrame, agent_frame, control_service_client::ControlServiceClient, server_frame,
};
use croupier_proto::function::v1::JobEvent;
use croupier_sdk::TlsFiles;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::Mesh;

/// A connected raw agent (game "g", env "e").
pub struct RawAgent {
    /// The agent id.
    pub id: String,
    /// Frames to the server.
    pub tx: mpsc::Sender<AgentFrame>,
    /// Frames from the server.
    pub rx: Streaming<ServerFrame>,
    /// The session.
    pub session_id: String,
    /// The control client (heartbeats).
    pub control: ControlServiceClient<Channel>,
}

impl RawAgent {
    /// Registers `id` with `descriptors` and opens its tunnel.
    pub async fn connect(mesh: &Mesh, id: &str, descriptors: Vec<FunctionDescriptor>) -> RawAgent {
        Self::try_connect(mesh, id, descriptors)
            .await
            .expect("raw agent registers")
    }

    /// Like [`RawAgent::connect`]; a refused registration is the error.
    pub async fn try_connect(
        mesh: &Mesh,
        id: &str,
        descriptors: Vec<FunctionDescriptor>,
    ) -> Result<RawAgent, tonic::Status> {
        let pem = TlsFiles::from_dir(&mesh.certs(), &format!("agent-{id}"))
            .load()
            .expect("agent certificate");
        let channel = croupier_sdk::tls::connect(&mesh.url, &pem)
            .await
            .expect("raw agent connects");
        let mut control = ControlServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let reg = control
            .register_agent(RegisterAgentRequest {
                agent_id: id.into(),
                game_id: "g".into(),
                env: "e".into(),
                version: "raw".into(),
                functions: descriptors.iter().map(|d| d.id.clone()).collect(),
                descriptors,
                ..Default::default()
            })
            .await?
            .into_inner();
        let (tx, out) = mpsc::channel(64);
        tx.send(AgentFrame {
            frame: Some(agent_frame::Frame::Hello(Hello {
                agent_id: id.into(),
                session_id: reg.session_id.clone(),
            })),
        })
        .await
        .unwrap();
        let mut rx = control
            .connect(ReceiverStream::new(out))
            .await
            .expect("raw agent's tunnel opens")
            .into_inner();
        match rx.message().await {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Welcome(_)),
            })) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        tx.send(AgentFrame {
            frame: Some(agent_frame::Frame::JobsReport(Default::default())),
        })
        .await
        .unwrap();
        // Heartbeats, once a second, while the tunnel's sender lives.
        let mut beats = control.clone();
        let (agent_id, session_id, alive) =
            (id.to_string(), reg.session_id.clone(), tx.downgrade());
        croupier_proto::task::spawn("try_connect", async move {
            while alive.upgrade().is_some_and(|tx| !tx.is_closed()) {
                let _ = beats
                    .heartbeat(HeartbeatRequest {
                        agent_id: agent_id.clone(),
                        session_id: session_id.clone(),
                        ..Default::default()
                    })
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(RawAgent {
            id: id.into(),
            tx,
            rx,
            session_id: reg.session_id,
            control,
        })
    }

    /// The next frame from the server, within `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<server_frame::Frame> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(Some(f))) => f.frame,
            _ => None,
        }
    }

    /// The next `Invoke`, skipping other frames.
    pub async fn next_invoke(&mut self, timeout: Duration) -> Invoke {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(server_frame::Frame::Invoke(i)) => return i,
                Some(_) => {}
                None => panic!("raw agent {}: no Invoke within {timeout:?}", self.id),
            }
        }
    }

    /// Sends a frame.
    pub async fn send(&self, frame: agent_frame::Frame) {
        self.tx
            .send(AgentFrame { frame: Some(frame) })
            .await
            .expect("raw agent's tunnel is open");
    }

    /// Answers `request_id` with `result`.
    pub async fn answer(&self, request_id: &str, result: serde_json::Value) {
        self.send(agent_frame::Frame::Result(InvokeResult {
            request_id: request_id.into(),
            success: true,
            result: Some(croupier_proto::json::json_to_struct(&result)),
            ..Default::default()
        }))
        .await;
    }

    /// Sends a job event.
    pub async fn event(&self, ev: JobEvent) {
        self.send(agent_frame::Frame::JobEvent(AgentJobEvent {
            event: Some(ev),
        }))
        .await;
    }
}

/// A descriptor with an id and a description.
pub fn descriptor(id: &str) -> FunctionDescriptor {
    FunctionDescriptor {
        id: id.into(),
        description: format!("{id} (raw agent)"),
        ..Default::default()
    }
}
