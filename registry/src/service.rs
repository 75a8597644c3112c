//! `RegistryService`: a thin adapter over [`RegistryView`], with live presence (online, last
//! heartbeat, load) supplied by the control plane through [`PresenceSource`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use croupier_proto::common::v1::NodeStateRecord;
use croupier_proto::registry::v1::{
    self as pb, EventType, registry_service_server::RegistryService,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::identity::caller;
use crate::view::{ChangeKind, Filter, RegistryView, ViewError};

/// Live facts about an agent that only the server holding its tunnel knows.
#[derive(Clone, Debug, Default)]
pub struct Presence {
    /// Tunnel connected.
    pub online: bool,
    /// Last heartbeat, Unix milliseconds.
    pub last_heartbeat: i64,
    /// Invocations in flight.
    pub in_flight: i64,
    /// Status summary from the last heartbeat.
    pub status: HashMap<String, String>,
}

/// Where the registry service learns agents' presence (implemented by the control plane).
pub trait PresenceSource: Send + Sync + 'static {
    /// Presence of one agent; None when this server does not hold its tunnel.
    fn presence(&self, agent_id: &str) -> Option<Presence>;
}

/// The `RegistryService` implementation.
pub struct RegistryServer {
    view: Arc<RegistryView>,
    presence: Arc<dyn PresenceSource>,
    shutdown: CancellationToken,
}

impl RegistryServer {
    /// Serves registrations from `view`, with presence from `presence`. Watches end (with
    /// `UNAVAILABLE`, so watchers resume elsewhere) when `shutdown` is cancelled.
    pub fn new(
        view: Arc<RegistryView>,
        presence: Arc<dyn PresenceSource>,
        shutdown: CancellationToken,
    ) -> Self {
        RegistryServer {
            view,
            presence,
            shutdown,
        }
    }

    fn overlay(&self, reg: &mut pb::FunctionRegistration) {
        for a in &mut reg.agents {
            let p = self.presence.presence(&a.agent_id).unwrap_or_default();
            a.online = p.online;
            if p.last_heartbeat > 0 {
                a.last_heartbeat = p.last_heartbeat;
            }
        }
    }
}

impl From<ViewError> for Status {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::Compacted { .. } => Status::out_of_range(e.to_string()),
            ViewError::Closed => Status::unavailable(e.to_string()),
        }
    }
}

fn event_type(kind: ChangeKind) -> EventType {
    match kind {
        ChangeKind::Added => EventType::Added,
        ChangeKind::Updated => EventType::Updated,
        ChangeKind::Removed => EventType::Removed,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RegistrationEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RegistryService for RegistryServer {
    #[tracing::instrument(skip_all)]
    async fn get_registrations(
        &self,
        request: Request<pb::GetRegistrationsRequest>,
    ) -> Result<Response<pb::GetRegistrationsResponse>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        let filter = Filter::new(r.game_id, r.env, r.function_id);
        let (mut registrations, revision) = self.view.registrations(&filter);
        registrations.iter_mut().for_each(|reg| self.overlay(reg));
        Ok(Response::new(pb::GetRegistrationsResponse {
            registrations,
            revision,
        }))
    }

    type WatchRegistrationsStream = EventStream;

    #[tracing::instrument(skip_all)]
    async fn watch_registrations(
        &self,
        request: Request<pb::WatchRegistrationsRequest>,
    ) -> Result<Response<Self::WatchRegistrationsStream>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        let filter = Filter::new(r.game_id, r.env, r.function_id);
        let (tx, rx) = mpsc::channel(256);
        let (initial, mut cursor) = if r.start_revision > 0 {
            (Vec::new(), self.view.follow_from(r.start_revision)?)
        } else {
            let (regs, revision, cursor) = self.view.snapshot_and_follow(&filter);
            let mut initial: Vec<_> = regs
                .into_iter()
                .map(|mut registration| {
                    self.overlay(&mut registration);
                    pb::RegistrationEvent {
                        r#type: EventType::Added as i32,
                        registration: Some(registration),
                        revision,
                        agent_id: String::new(),
                    }
                })
                .collect();
            initial.push(pb::RegistrationEvent {
                r#type: EventType::Synced as i32,
                registration: None,
                revision,
                agent_id: String::new(),
            });
            (initial, cursor)
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            for ev in initial {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let changes = tokio::select! {
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "server shutting down; watch again (resume with start_revision)",
                            )))
                            .await;
                        return;
                    }
                    c = cursor.next() => c,
                };
                match changes {
                    Ok(changes) => {
                        for c in changes.iter().filter(|c| filter.matches(&c.key)) {
                            let ev = pb::RegistrationEvent {
                                r#type: event_type(c.kind) as i32,
                                registration: Some(c.registration.clone()),
                                revision: c.revision,
                                agent_id: c.agent_id.clone(),
                            };
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all)]
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        caller(&request)?;
        let r = request.into_inner();
        let filter = Filter::new(r.game_id, r.env, String::new());
        let agents = self
            .view
            .agents(&filter)
            .into_iter()
            .map(|(a, node)| {
                let p = self.presence.presence(&a.agent_id).unwrap_or_default();
                pb::AgentDetail {
                    agent_id: a.agent_id.clone(),
                    game_id: a.game_id.clone(),
                    env: a.env.clone(),
                    version: a.version.clone(),
                    functions: a.functions.iter().map(|f| f.id.clone()).collect(),
                    labels: a.labels.clone().into_iter().collect(),
                    node_state: Some(NodeStateRecord::from(&node)),
                    online: p.online,
                    last_heartbeat: if p.last_heartbeat > 0 {
                        p.last_heartbeat
                    } else {
                        a.registered_at
                    },
                    owner: a.owner.clone(),
                    status: p.status,
                    addr: a.addr.clone(),
                    in_flight: p.in_flight,
                }
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }
}
