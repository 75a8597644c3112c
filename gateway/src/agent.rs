//! The gateway as a mesh agent: the functions it registers, and [`Ops`], the operations behind
//! them that the HTTP push endpoint shares. Payloads (JSON objects):
//!
//! | function | payload | answer |
//! |---|---|---|
//! | `gateway.push` | `{"player_id": P}` or `{"players": [P…]}`, plus `msg_id` and `data` (JSON) or `data_b64` | `{"sent", "queued", "failed", "deliveries": {P: {"delivery", "gateway"}}}` |
//! | `gateway.broadcast` | `msg_id`, `data`/`data_b64`, optional `filter` (attributes that must match) and `include_offline` | `{"gateway", "sent", "queued", "elapsed_ms"}` for this gateway; invoke with `--route broadcast` to reach every gateway |
//! | `gateway.kick` | `{"player_id", "reason"}` | `{"kicked", "gateway"}` |
//! | `gateway.sessions` | `{"list": bool, "limit": n}` | `{"gateway", "online", "offline", "total", "queued", "peers", "sessions": […]}` |
//! | `gateway.forward` | internal, between gateways (see [`crate::cluster`]) | |
//!
//! `gateway.push` and `gateway.kick` find the player on any gateway, whichever gateway the call
//! lands on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use croupier_proto::common::v1::{FunctionDescriptor, Semantics};
use croupier_sdk::{HandlerError, Provider, ProviderConfig};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster::{Cluster, FORWARD, Message};
use crate::error::GatewayError;
use crate::hub::Hub;

/// The operations behind `gateway.*` and the HTTP endpoint.
pub struct Ops {
    /// The players.
    pub hub: Arc<Hub>,
    /// The other gateways.
    pub cluster: Arc<Cluster>,
}

#[derive(Deserialize)]
struct PushReq {
    #[serde(default)]
    player_id: Option<String>,
    #[serde(default)]
    players: Vec<String>,
    #[serde(flatten)]
    message: Message,
}

#[derive(Deserialize)]
struct BroadcastReq {
    #[serde(flatten)]
    message: Message,
    #[serde(default)]
    filter: HashMap<String, String>,
    #[serde(default)]
    include_offline: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KickReq {
    player_id: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionsReq {
    #[serde(default)]
    list: bool,
    #[serde(default)]
    limit: Option<usize>,
}

/// Most players in one push.
const MAX_PLAYERS_PER_PUSH: usize = 10_000;

fn parse<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, GatewayError> {
    serde_json::from_value(v).map_err(|e| GatewayError::InvalidRequest(e.to_string()))
}

impl Ops {
    /// `gateway.push`.
    pub async fn push(&self, v: Value) -> Result<Value, GatewayError> {
        let req: PushReq = parse(v)?;
        let mut players = req.players;
        players.extend(req.player_id);
        if players.is_empty() {
            return Err(GatewayError::InvalidRequest(
                "give player_id or players".into(),
            ));
        }
        if players.len() > MAX_PLAYERS_PER_PUSH {
            return Err(GatewayError::InvalidRequest(format!(
                "at most {MAX_PLAYERS_PER_PUSH} players per push (use gateway.broadcast)"
            )));
        }
        if let Some(bad) = players.iter().find(|p| !crate::auth::valid_player_id(p)) {
            return Err(GatewayError::InvalidRequest(format!(
                "player id {bad:?} is not valid"
            )));
        }
        let out = self.cluster.push(&players, &req.message).await?;
        Ok(serde_json::to_value(out).unwrap_or_default())
    }

    /// `gateway.broadcast`, on this gateway.
    pub fn broadcast(&self, v: Value) -> Result<Value, GatewayError> {
        if self.hub.draining() {
            return Err(GatewayError::Draining);
        }
        let req: BroadcastReq = parse(v)?;
        let (flags, payload) = req.message.encode()?;
        let started = Instant::now();
        let (sent, queued) = self.hub.broadcast(
            req.message.msg_id,
            flags,
            payload,
            &req.filter,
            req.include_offline,
        );
        Ok(json!({
            "gateway": self.hub.config().gateway_id,
            "sent": sent,
            "queued": queued,
            "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        }))
    }

    /// `gateway.kick`.
    pub async fn kick(&self, v: Value) -> Result<Value, GatewayError> {
        let req: KickReq = parse(v)?;
        let reason = req.reason.unwrap_or_else(|| "kicked by the backend".into());
        let by = self.cluster.kick(&req.player_id, &reason).await?;
        Ok(json!({ "kicked": by.is_some(), "gateway": by }))
    }

    /// `gateway.sessions`.
    pub fn sessions(&self, v: Value) -> Result<Value, GatewayError> {
        let req: SessionsReq =
            if v.as_object().is_some_and(serde_json::Map::is_empty) || v.is_null() {
                SessionsReq::default()
            } else {
                parse(v)?
            };
        let total = self.hub.sessions();
        let online = self.hub.online();
        let mut out = json!({
            "gateway": self.hub.config().gateway_id,
            "online": online,
            "offline": total.saturating_sub(online),
            "total": total,
            "queued": self.hub.queued(),
            "peers": self.cluster.peers(),
        });
        if req.list {
            out["sessions"] =
                serde_json::to_value(self.hub.list(req.limit.unwrap_or(100))).unwrap_or_default();
        }
        Ok(out)
    }
}

fn descriptor(id: &str, description: &str, query: bool) -> FunctionDescriptor {
    FunctionDescriptor {
        id: id.into(),
        name: id.into(),
        category: "gateway".into(),
        description: description.into(),
        semantics: Some(Semantics {
            kind: if query { "query" } else { "command" }.into(),
            idempotent: query,
            timeout: 10,
            job: false,
        }),
        ..Default::default()
    }
}

/// The provider serving `gateway.*` with `ops`.
pub fn provider(cfg: ProviderConfig, ops: Arc<Ops>) -> Provider {
    let o = ops.clone();
    let p = Provider::new(cfg).function(
        descriptor(
            "gateway.push",
            "Pushes a message to one player or a list, on whichever gateway holds them; queued \
             while they are offline.",
            false,
        ),
        move |call| {
            let o = o.clone();
            async move { o.push(call.payload).await.map_err(HandlerError::from) }
        },
    );
    let o = ops.clone();
    let p = p.function(
        descriptor(
            "gateway.broadcast",
            "Pushes a message to every player of this gateway (or those whose attributes match \
             filter); route broadcast to reach every gateway.",
            false,
        ),
        move |call| {
            let o = o.clone();
            async move { o.broadcast(call.payload).map_err(HandlerError::from) }
        },
    );
    let o = ops.clone();
    let p = p.function(
        descriptor(
            "gateway.kick",
            "Closes a player's connection (CLOSE KICKED) and ends the session.",
            false,
        ),
        move |call| {
            let o = o.clone();
            async move { o.kick(call.payload).await.map_err(HandlerError::from) }
        },
    );
    let o = ops.clone();
    let p = p.function(
        descriptor(
            "gateway.sessions",
            "Counts this gateway's sessions (online, offline, queued pushes); with list, lists \
             them.",
            true,
        ),
        move |call| {
            let o = o.clone();
            async move { o.sessions(call.payload).map_err(HandlerError::from) }
        },
    );
    let o = ops;
    p.function(
        descriptor(
            FORWARD,
            "Internal: pushes, kicks and session hand-offs between gateways.",
            false,
        ),
        move |call| {
            let o = o.clone();
            async move {
                o.cluster
                    .serve_forward(&call.payload)
                    .map_err(HandlerError::from)
            }
        },
    )
}
