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
use crate::view::{ChangeKind, Filter, FnKey, RegistryView, ViewError};

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
    info: pb::GetServerInfoResponse,
    view: Arc<RegistryView>,
    presence: Arc<dyn PresenceSource>,
    shutdown: CancellationToken,
    max_message_bytes: usize,
}

/// Registrations in a page when the request does not say.
pub const DEFAULT_REGISTRATIONS_PAGE: usize = 500;
/// Agents in a page when the request does not say.
pub const DEFAULT_AGENTS_PAGE: usize = 1000;
/// Most items in one page.
pub const MAX_PAGE: usize = 5000;

fn page_size(asked: i32, default: usize) -> Result<usize, Status> {
    match asked {
        0 => Ok(default),
        n if n < 0 => Err(Status::invalid_argument(format!(
            "page_size is {n}; give 1-{MAX_PAGE}, or 0 for the default ({default})"
        ))),
        n => Ok((n as usize).min(MAX_PAGE)),
    }
}

fn encode_token(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_token(token: &str) -> Result<Option<String>, Status> {
    use base64::Engine as _;
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(
                "page_token is not one this server gave; pass the next_page_token of the \
                 previous answer, or none for the first page",
            )
        })
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
            info: pb::GetServerInfoResponse::default(),
            view,
            presence,
            shutdown,
            max_message_bytes: croupier_proto::limits::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Keeps every answer under `bytes` (the server's message limit).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The answer to `GetServerInfo` (version, commit, server id, store, start time).
    pub fn with_info(mut self, info: pb::GetServerInfoResponse) -> Self {
        self.info = info;
        self
    }

    /// Bytes one page may use: the message limit less room for the envelope.
    fn page_bytes(&self) -> usize {
        croupier_proto::limits::max_payload_bytes(self.max_message_bytes)
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
        let who = caller(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size, DEFAULT_REGISTRATIONS_PAGE)?;
        let after = decode_token(&r.page_token)?
            .map(|t| {
                let mut parts = t.splitn(3, '/');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(g), Some(e), Some(f)) => Ok(FnKey::new(g, e, f)),
                    _ => Err(Status::invalid_argument(
                        "page_token is not one this server gave; start again without it",
                    )),
                }
            })
            .transpose()?;
        let filter = Filter::new(r.game_id, r.env, r.function_id);
        let (mut registrations, revision, next) =
            self.view
                .registrations_page(&filter, after.as_ref(), size, self.page_bytes());
        // A scoped caller sees only its scopes (a page may then hold fewer than asked).
        registrations.retain(|reg| who.scopes.allows(&reg.game_id, &reg.env));
        registrations.iter_mut().for_each(|reg| self.overlay(reg));
        Ok(Response::new(pb::GetRegistrationsResponse {
            registrations,
            revision,
            next_page_token: next
                .map(|k| encode_token(&format!("{}/{}/{}", k.game_id, k.env, k.function_id)))
                .unwrap_or_default(),
        }))
    }

    type WatchRegistrationsStream = EventStream;

    #[tracing::instrument(skip_all)]
    async fn watch_registrations(
        &self,
        request: Request<pb::WatchRegistrationsRequest>,
    ) -> Result<Response<Self::WatchRegistrationsStream>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let filter = Filter::new(r.game_id, r.env, r.function_id);
        let scopes = who.scopes;
        let (tx, rx) = mpsc::channel(256);
        let (initial, mut cursor) = if r.start_revision > 0 {
            (Vec::new(), self.view.follow_from(r.start_revision)?)
        } else {
            let (regs, revision, cursor) = self.view.snapshot_and_follow(&filter);
            let mut initial: Vec<_> = regs
                .into_iter()
                .filter(|reg| scopes.allows(&reg.game_id, &reg.env))
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
        croupier_proto::task::spawn("registration watch", async move {
            let _open = crate::metrics::OpenWatch::new();
            let sent = metrics::counter!(crate::metrics::WATCH_EVENTS);
            for ev in initial {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                sent.increment(1);
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
                        for c in changes.iter().filter(|c| {
                            filter.matches(&c.key) && scopes.allows(&c.key.game_id, &c.key.env)
                        }) {
                            let ev = pb::RegistrationEvent {
                                r#type: event_type(c.kind) as i32,
                                registration: Some(c.registration.clone()),
                                revision: c.revision,
                                agent_id: c.agent_id.clone(),
                            };
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                            sent.increment(1);
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
    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::GetServerInfoResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(self.info.clone()))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size, DEFAULT_AGENTS_PAGE)?;
        let after = decode_token(&r.page_token)?;
        let filter = Filter::new(r.game_id, r.env, String::new());
        let budget = self.page_bytes();
        let (mut agents, mut bytes, mut more) = (Vec::new(), 0usize, false);
        for (a, node) in self.view.agents(&filter) {
            if !who.scopes.allows(&a.game_id, &a.env) {
                continue;
            }
            if after
                .as_ref()
                .is_some_and(|t| a.agent_id.as_str() <= t.as_str())
            {
                continue;
            }
            if agents.len() >= size {
                more = true;
                break;
            }
            // An agent whose tunnel another server holds is online as far as this server can
            // tell: its owner keeps the registration only while the agent is connected or
            // within its offline timeout. One this server owns but does not hold (after a
            // restart, before the agent is back) is offline.
            let p = self.presence.presence(&a.agent_id).unwrap_or(Presence {
                online: !a.owner.is_empty() && a.owner != self.info.server_id,
                ..Presence::default()
            });
            let detail = pb::AgentDetail {
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
            };
            let len = prost::Message::encoded_len(&detail) + 8;
            if !agents.is_empty() && bytes + len > budget {
                more = true;
                break;
            }
            bytes += len;
            agents.push(detail);
        }
        let next_page_token = match (more, agents.last()) {
            (true, Some(last)) => encode_token(&last.agent_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }
}
