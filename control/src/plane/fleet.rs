//! The fleet through the control plane: node events (recorded, read, followed), node
//! inventories (stored as versions, read, compared) and node metrics (kept, queried).

use std::collections::VecDeque;
use std::sync::Arc;

use super::*;
use crate::fleet::inventory::{self, InventoryRecord};
use crate::fleet::{EventFilter, EventLog, check_agent_event};
use croupier_proto::control::v1::{
    GetNodeResourcesRequest, GetNodeResourcesResponse, InventoryVersion, MetricsReport, NodeEvent,
    NodeInventory, QueryNodeMetricsRequest, QueryNodeMetricsResponse, StreamNodeEventsRequest,
    StreamNodeEventsResponse,
};
use croupier_registry::identity::Scopes;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Frames queued towards one event follower before the reader waits.
const FOLLOWER_QUEUE: usize = 256;

impl ControlPlane {
    /// This server's node event log.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Records an event the server saw happen to node `node_id` (its game and env from the
    /// registry view).
    pub fn node_event(
        &self,
        node_id: &str,
        kind: &str,
        entity_id: &str,
        status: &str,
        message: String,
        data: &[(&str, String)],
    ) {
        let (game_id, env) = self
            .view
            .agent(node_id)
            .map(|a| (a.game_id.clone(), a.env.clone()))
            .unwrap_or_default();
        self.events.record(NodeEvent {
            r#type: kind.into(),
            node_id: node_id.into(),
            entity_id: entity_id.into(),
            status: status.into(),
            message,
            data: data.iter().map(|(k, v)| ((*k).into(), v.clone())).collect(),
            game_id,
            env,
            ..Default::default()
        });
    }

    /// An event the agent of `session` reported on its tunnel: checked, then recorded as its
    /// node's. One that fails the checks is recorded as `event.refused`, saying why.
    pub(super) fn agent_event(&self, session: &Session, event: NodeEvent) {
        match check_agent_event(event, self.cfg.max_text_chars) {
            Ok(mut e) => {
                e.node_id = session.agent_id.clone();
                if let Some(a) = self.view.agent(&session.agent_id) {
                    e.game_id = a.game_id.clone();
                    e.env = a.env.clone();
                }
                self.events.record(e);
            }
            Err(why) => {
                tracing::warn!(agent_id = %session.agent_id, reason = %why, "agent event refused");
                metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "node_event").increment(1);
                self.node_event(&session.agent_id, "event.refused", "", "refused", why, &[]);
            }
        }
    }

    /// An inventory an agent reported (registering or on its tunnel), already checked: stored
    /// as a new version when it differs from the node's latest, the oldest versions beyond
    /// `inventory_versions` deleted. Records `inventory.changed` with what changed. Returns the
    /// new version, or None when nothing changed.
    pub(super) async fn take_inventory(
        &self,
        agent_id: &str,
        game_id: &str,
        env: &str,
        inventory: NodeInventory,
    ) -> Result<Option<i64>, ControlError> {
        let mut stored = self.inventory_versions(agent_id).await?;
        let previous = stored.last().map(|r| r.inventory.clone());
        if previous.as_ref().is_some_and(|p| p.same_as(&inventory)) {
            return Ok(None);
        }
        let version = stored.last().map_or(1, |r| r.version + 1);
        let record = InventoryRecord {
            version,
            recorded_at: now_ms(),
            game_id: game_id.into(),
            env: env.into(),
            inventory,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| ControlError::Internal(format!("encoding the inventory: {e}")))?;
        self.store
            .put(&keys::inventory(agent_id, version), value, None)
            .await
            .map_err(ControlError::store("storing the inventory"))?;
        stored.push(record);
        let excess = stored
            .len()
            .saturating_sub(self.cfg.inventory_versions.max(1));
        for old in &stored[..excess] {
            self.store
                .delete(&keys::inventory(agent_id, old.version))
                .await
                .map_err(ControlError::store("deleting an old inventory version"))?;
        }
        let (message, changes) = match &previous {
            None => ("first inventory".to_string(), 0),
            Some(p) => {
                let changes = inventory::diff(p, &stored[stored.len() - 1].inventory);
                let paths: Vec<&str> = changes.iter().take(5).map(|c| c.path.as_str()).collect();
                let more = changes.len().saturating_sub(paths.len());
                let tail = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                (
                    format!("changed: {}{tail}", paths.join(", ")),
                    changes.len(),
                )
            }
        };
        self.node_event(
            agent_id,
            "inventory.changed",
            "",
            "",
            message,
            &[
                ("version", version.to_string()),
                ("changes", changes.to_string()),
            ],
        );
        Ok(Some(version))
    }

    /// Checks and takes an inventory frame from the agent of `session`. An invalid one, or one
    /// the store would not take, becomes an event saying why.
    pub(super) async fn inventory_frame(&self, session: &Session, inv: NodeInventory) {
        let agent = self.view.agent(&session.agent_id);
        let (game, env) = agent
            .as_deref()
            .map_or(("", ""), |a| (a.game_id.as_str(), a.env.as_str()));
        let outcome = match inventory::validate(&inv) {
            Ok(()) => self
                .take_inventory(&session.agent_id, game, env, inv)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        if let Err(why) = outcome {
            tracing::warn!(agent_id = %session.agent_id, reason = %why, "inventory refused");
            self.node_event(
                &session.agent_id,
                "inventory.invalid",
                "",
                "refused",
                why,
                &[],
            );
        }
    }

    /// A metrics report from the agent of `session`: checked, then added to its history. One
    /// that fails the checks becomes an `event.refused` event saying why.
    pub(super) fn metrics_frame(&self, session: &Session, report: MetricsReport) {
        if let Err(why) = crate::fleet::metrics::check_report(&report.samples) {
            tracing::warn!(agent_id = %session.agent_id, reason = %why, "metrics report refused");
            self.node_event(&session.agent_id, "event.refused", "", "refused", why, &[]);
            return;
        }
        let agent = self.view.agent(&session.agent_id);
        let scope = agent
            .as_deref()
            .map_or(("", ""), |a| (a.game_id.as_str(), a.env.as_str()));
        self.metrics
            .record(&session.agent_id, scope, &report.samples, now_ms());
    }

    /// The latest value of every node metric this server keeps: (node, metric, value).
    pub fn latest_node_metrics(&self) -> Vec<(String, String, f64)> {
        self.metrics.latest()
    }

    /// Handles `QueryNodeMetrics`: clients and admins, inside their scopes.
    pub fn node_metrics(
        &self,
        who: &Identity,
        req: QueryNodeMetricsRequest,
    ) -> Result<QueryNodeMetricsResponse, ControlError> {
        check_id("agent_id", &req.agent_id).map_err(ControlError::BadRequest)?;
        Self::require_reader(who, "read node metrics")?;
        let none = || {
            ControlError::NotFound(format!(
                "this server ({}) has no metrics of node {:?}: the node reports them to the \
                 server holding its tunnel, when it carries the node pack",
                self.cfg.server_id, req.agent_id
            ))
        };
        let (game, env) = self.metrics.scope(&req.agent_id).ok_or_else(none)?;
        if !who.scopes.allows(&game, &env) {
            return Err(none());
        }
        let now = now_ms();
        let since = if req.since > 0 {
            req.since
        } else {
            now - 3_600_000
        };
        let (series, raw_since) = self
            .metrics
            .query(&req.agent_id, since, &req.metrics, now)
            .ok_or_else(none)?;
        Ok(QueryNodeMetricsResponse {
            series,
            raw_since,
            step_ms: self.metrics.step().as_millis() as i64,
        })
    }

    /// The stored inventory versions of a node, oldest first.
    async fn inventory_versions(
        &self,
        agent_id: &str,
    ) -> Result<Vec<InventoryRecord>, ControlError> {
        let range = self
            .store
            .range(&keys::inventories(agent_id))
            .await
            .map_err(ControlError::store("reading the inventory"))?;
        let mut out = Vec::with_capacity(range.kvs.len());
        for kv in range.kvs {
            let r: InventoryRecord = serde_json::from_slice(&kv.value).map_err(|e| {
                ControlError::Internal(format!("stored inventory {} is unreadable: {e}", kv.key))
            })?;
            out.push(r);
        }
        out.sort_by_key(|r| r.version);
        Ok(out)
    }

    /// Handles `GetNodeResources`: clients and admins, inside their scopes.
    pub async fn node_resources(
        &self,
        who: &Identity,
        req: GetNodeResourcesRequest,
    ) -> Result<GetNodeResourcesResponse, ControlError> {
        check_id("agent_id", &req.agent_id).map_err(ControlError::BadRequest)?;
        Self::require_reader(who, "read node inventories")?;
        let mut versions = self.inventory_versions(&req.agent_id).await?;
        let none = || {
            ControlError::NotFound(format!(
                "node {:?} has reported no inventory (it never registered with one, or it \
                 is outside your scopes)",
                req.agent_id
            ))
        };
        let latest = versions.last().ok_or_else(none)?;
        if !who.scopes.allows(&latest.game_id, &latest.env) {
            return Err(none());
        }
        let as_pb = |r: &InventoryRecord| InventoryVersion {
            version: r.version,
            recorded_at: r.recorded_at,
            inventory: Some(r.inventory.clone()),
        };
        let mut changes = Vec::new();
        if req.diff_from != 0 || req.diff_to != 0 {
            let find = |v: i64| {
                versions.iter().find(|r| r.version == v).ok_or_else(|| {
                    let kept: Vec<String> =
                        versions.iter().map(|r| r.version.to_string()).collect();
                    ControlError::NotFound(format!(
                        "node {:?} has no inventory version {v}; the versions kept are {}",
                        req.agent_id,
                        kept.join(", ")
                    ))
                })
            };
            let (a, b) = (find(req.diff_from)?, find(req.diff_to)?);
            changes = inventory::diff(&a.inventory, &b.inventory);
        }
        if !req.history {
            versions = versions.split_off(versions.len() - 1);
        }
        Ok(GetNodeResourcesResponse {
            versions: versions.iter().map(as_pb).collect(),
            changes,
        })
    }

    /// Refuses agents: fleet reads are for clients and admins.
    fn require_reader(who: &Identity, action: &str) -> Result<(), ControlError> {
        if who.role == Role::Agent {
            return Err(ControlError::NotAllowed(format!(
                "identity {who} may not {action}: agents do not read the fleet; use a client \
                 or admin certificate"
            )));
        }
        Ok(())
    }

    /// Handles `StreamNodeEvents`: replays what was asked for (telling a gap), then follows
    /// when asked. Ends with `UNAVAILABLE` when the server shuts down.
    pub fn stream_node_events(
        &self,
        who: &Identity,
        req: StreamNodeEventsRequest,
    ) -> Result<ReceiverStream<Result<StreamNodeEventsResponse, Status>>, ControlError> {
        Self::require_reader(who, "read node events")?;
        if !req.node_id.is_empty() {
            check_id("node_id", &req.node_id).map_err(ControlError::BadRequest)?;
        }
        if req.from_seq < 0 || req.since < 0 {
            return Err(ControlError::BadRequest(
                "from_seq and since must not be negative".into(),
            ));
        }
        let filter = EventFilter {
            node_id: req.node_id,
            event_type: req.r#type,
        };
        let scopes = who.scopes.clone();
        let rx = self.events.subscribe();
        let replay = self.events.replay(req.from_seq, req.since);
        let mut follower = Follower {
            log: self.events.clone(),
            filter,
            scopes,
            queue: VecDeque::new(),
            last: replay.next - 1,
        };
        follower.take(replay);
        let (tx, out) = mpsc::channel(FOLLOWER_QUEUE);
        let shutdown = self.shutdown.clone();
        croupier_proto::task::spawn("node events", follower.run(rx, tx, req.follow, shutdown));
        Ok(ReceiverStream::new(out))
    }
}

/// One reader of the event log: what it still has to send, and the last seq it has seen.
struct Follower {
    log: Arc<EventLog>,
    filter: EventFilter,
    scopes: Scopes,
    queue: VecDeque<StreamNodeEventsResponse>,
    last: i64,
}

impl Follower {
    /// Queues a replay's gap and the events that pass the filter and the scopes.
    fn take(&mut self, replay: crate::fleet::Replay) {
        if let Some((from, next)) = replay.gap {
            self.queue.push_back(StreamNodeEventsResponse {
                event: None,
                gap_from: from,
                gap_next: next,
            });
        }
        for e in replay.events {
            self.offer(&e);
        }
        self.last = self.last.max(replay.next - 1);
    }

    fn offer(&mut self, e: &NodeEvent) {
        self.last = self.last.max(e.seq);
        if self.filter.matches(e) && self.scopes.allows(&e.game_id, &e.env) {
            self.queue.push_back(StreamNodeEventsResponse {
                event: Some(e.clone()),
                ..Default::default()
            });
        }
    }

    async fn run(
        mut self,
        mut rx: broadcast::Receiver<Arc<NodeEvent>>,
        tx: mpsc::Sender<Result<StreamNodeEventsResponse, Status>>,
        follow: bool,
        shutdown: CancellationToken,
    ) {
        loop {
            while let Some(item) = self.queue.pop_front() {
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            let next = tokio::select! {
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "server shutting down; follow again with from_seq",
                        )))
                        .await;
                    return;
                }
                n = rx.recv() => n,
            };
            match next {
                Ok(e) if e.seq <= self.last => {}
                Ok(e) => self.offer(&e),
                // Fell behind the broadcast: catch up from the log, which keeps more.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let replay = self.log.replay(self.last + 1, 0);
                    self.take(replay);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
