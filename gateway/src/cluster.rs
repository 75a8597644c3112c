//! [`Cluster`]: this gateway among the others of its game and environment, and the operations
//! behind `gateway.push`, `gateway.kick` and the HTTP push endpoint.
//!
//! **Where is player P.** No gateway publishes its players anywhere: a push looks for them.
//! 1. The gateway that receives `gateway.push` (any routing lands on some gateway) delivers to
//!    the players it holds, online or offline.
//! 2. The rest go in one broadcast of the internal `gateway.forward` (op `push`) to every
//!    gateway; each delivers to the players it holds and says so.
//! 3. Players nobody holds get an offline session at their **home** gateway: rendezvous hashing
//!    of the player id over the gateways online (the list is read from the registry every
//!    `peers.refresh`), with a targeted `gateway.forward` (op `push`, `create`).
//!
//! With one gateway, steps 2 and 3 make no call. **Login hand-off**: a player who logs in where
//! they have no session asks every other gateway (`gateway.forward` op `handoff`, broadcast)
//! for it; the holder closes its connection (CLOSE REPLACED) and hands the session over,
//! mailbox and numbering included, so there is one session per player across gateways and the
//! queue follows the player. Costs: a push to a player held elsewhere is two mesh calls (one a
//! broadcast); a login is one broadcast when there are other gateways. The alternative,
//! publishing every player's location (registration labels, or store keys with leases), would
//! cost a store write per login and logout and needs rpcs the mesh does not offer to agents.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use croupier_proto::function::v1::InvokeOptions;
use croupier_proto::gateway::v1::CloseReason;
use croupier_proto::json::opt_struct_to_json;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::GatewayError;
use crate::frame::FLAG_JSON;
use crate::hub::{Delivery, Hub, SessionRecord};
use crate::mesh::Mesh;
use crate::metrics as m;

/// The internal function every gateway serves for the others.
pub const FORWARD: &str = "gateway.forward";

/// Deadline of the calls between gateways.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// A message to push: an id and a body (JSON `data` or base64 `data_b64`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// The message id clients see in the PUSH frame.
    #[serde(default)]
    pub msg_id: u32,
    /// A JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// An opaque body, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl Message {
    /// The frame flags and payload.
    pub fn encode(&self) -> Result<(u32, Bytes), GatewayError> {
        match (&self.data, &self.data_b64) {
            (Some(_), Some(_)) => Err(GatewayError::InvalidRequest(
                "give data or data_b64, not both".into(),
            )),
            (_, Some(b)) => STANDARD
                .decode(b)
                .map(|v| (0, v.into()))
                .map_err(|e| GatewayError::InvalidRequest(format!("data_b64: {e}"))),
            (d, None) => {
                let d = d.clone().unwrap_or(Value::Null);
                Ok((FLAG_JSON, serde_json::to_vec(&d).unwrap_or_default().into()))
            }
        }
    }
}

/// Where one player's push went.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Placed {
    /// `sent`, `queued` or `failed`.
    pub delivery: String,
    /// The gateway that took it (empty when it failed).
    pub gateway: String,
}

/// The answer of a push: counts and each player's delivery.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PushOutcome {
    /// Written to a live connection.
    pub sent: usize,
    /// Queued for an offline player.
    pub queued: usize,
    /// Not delivered (the home gateway could not be reached).
    pub failed: usize,
    /// Per player.
    pub deliveries: HashMap<String, Placed>,
}

impl PushOutcome {
    fn add(&mut self, player: &str, d: &str, gateway: &str) {
        match d {
            "sent" => self.sent += 1,
            "queued" => self.queued += 1,
            _ => self.failed += 1,
        }
        self.deliveries.insert(
            player.to_string(),
            Placed {
                delivery: d.to_string(),
                gateway: gateway.to_string(),
            },
        );
    }
}

/// The gateways and the operations that span them (see the module docs).
pub struct Cluster {
    hub: Arc<Hub>,
    mesh: Mesh,
    registry: Option<croupier_sdk::Client>,
    game_id: String,
    env: String,
    handoff: bool,
    peers: RwLock<Vec<String>>,
}

/// Rendezvous score of (agent, key): FNV-1a over both, mixed with splitmix64.
fn score(agent: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in agent.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h = h.wrapping_add(0x9e3779b97f4a7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// The player's home among `peers` (rendezvous hashing); `None` without peers.
pub fn home_of<'a>(peers: &'a [String], player_id: &str) -> Option<&'a str> {
    peers
        .iter()
        .max_by_key(|p| score(p, player_id))
        .map(String::as_str)
}

impl Cluster {
    /// A cluster view for this gateway; `registry` reads the peer list (None: alone).
    pub fn new(
        hub: Arc<Hub>,
        mesh: Mesh,
        registry: Option<croupier_sdk::Client>,
        game_id: &str,
        env: &str,
        handoff: bool,
    ) -> Arc<Cluster> {
        let me = hub.config().gateway_id.clone();
        Arc::new(Cluster {
            hub,
            mesh,
            registry,
            game_id: game_id.into(),
            env: env.into(),
            handoff,
            peers: RwLock::new(vec![me]),
        })
    }

    fn me(&self) -> &str {
        &self.hub.config().gateway_id
    }

    /// The gateways online (this one included), sorted.
    pub fn peers(&self) -> Vec<String> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn has_others(&self) -> bool {
        let me = self.me();
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|p| p != me)
    }

    /// Reads the gateways online from the registry (the agents serving [`FORWARD`]).
    pub async fn refresh(&self) {
        let Some(reg) = &self.registry else { return };
        match reg.registrations(&self.game_id, &self.env, FORWARD).await {
            Ok(r) => {
                let mut ids: Vec<String> = r
                    .registrations
                    .iter()
                    .filter(|r| r.function_id == FORWARD)
                    .flat_map(|r| r.agents.iter().filter(|a| a.online))
                    .map(|a| a.agent_id.clone())
                    .collect();
                let me = self.me().to_string();
                if !ids.contains(&me) {
                    ids.push(me);
                }
                ids.sort();
                ids.dedup();
                *self
                    .peers
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
            }
            Err(s) => {
                tracing::debug!(code = ?s.code(), message = %s.message(), "could not read the gateway list");
            }
        }
    }

    async fn forward(
        &self,
        body: Value,
        options: InvokeOptions,
    ) -> Result<Vec<(String, Value)>, GatewayError> {
        let resp = self
            .mesh
            .invoke(FORWARD, &body, options, PEER_TIMEOUT, None)
            .await
            .map_err(|s| {
                GatewayError::Mesh(format!("{FORWARD}: {:?}: {}", s.code(), s.message()))
            })?;
        let me = self.me();
        if resp.results.is_empty() {
            // A single-agent route.
            if !resp.success {
                return Err(GatewayError::Mesh(format!("{FORWARD}: {}", resp.error)));
            }
            return Ok(vec![(
                resp.agent_id,
                opt_struct_to_json(resp.result.as_ref()),
            )]);
        }
        Ok(resp
            .results
            .into_iter()
            .filter(|r| r.success && r.agent_id != me)
            .map(|r| (r.agent_id, opt_struct_to_json(r.result.as_ref())))
            .collect())
    }

    fn broadcast_opts() -> InvokeOptions {
        InvokeOptions {
            routing_mode: "broadcast".into(),
            ..Default::default()
        }
    }

    /// Asks the other gateways for `player_id`'s session (see the module docs).
    pub async fn handoff(&self, player_id: &str) -> Option<SessionRecord> {
        if !self.handoff || !self.has_others() {
            return None;
        }
        let body = json!({"op": "handoff", "player_id": player_id, "to": self.me()});
        match self.forward(body, Self::broadcast_opts()).await {
            Ok(answers) => answers.into_iter().find_map(|(from, v)| {
                let rec: SessionRecord = serde_json::from_value(v.get("session")?.clone()).ok()?;
                tracing::info!(%player_id, %from, session_id = %rec.session_id, queued = rec.mailbox.len(), "session handed over");
                metrics::counter!(m::HANDOFFS, "direction" => "in").increment(1);
                Some(rec)
            }),
            Err(e) => {
                tracing::warn!(%player_id, error = %e, "could not ask the other gateways for the session");
                None
            }
        }
    }

    /// Pushes `msg` to `players`, wherever they are (see the module docs).
    pub async fn push(
        &self,
        players: &[String],
        msg: &Message,
    ) -> Result<PushOutcome, GatewayError> {
        if self.hub.draining() {
            return Err(GatewayError::Draining);
        }
        let (flags, payload) = msg.encode()?;
        let me = self.me().to_string();
        let mut out = PushOutcome::default();
        let mut rest = Vec::new();
        for p in players {
            match self.hub.push(p, msg.msg_id, flags, payload.clone(), false) {
                Delivery::Sent => out.add(p, "sent", &me),
                Delivery::Queued => out.add(p, "queued", &me),
                Delivery::NotHeld => rest.push(p.clone()),
            }
        }
        if rest.is_empty() {
            return Ok(out);
        }
        let wire = json!({
            "op": "push", "players": rest, "msg_id": msg.msg_id, "flags": flags,
            "payload_b64": STANDARD.encode(&payload), "create": false,
        });
        if self.has_others() {
            match self.forward(wire.clone(), Self::broadcast_opts()).await {
                Ok(answers) => {
                    for (gw, v) in answers {
                        if let Some(d) = v["deliveries"].as_object() {
                            for (p, d) in d {
                                out.add(p, d.as_str().unwrap_or("failed"), &gw);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "forwarding a push to the other gateways"),
            }
            rest.retain(|p| !out.deliveries.contains_key(p));
        }
        // Nobody holds them: their home gateway keeps the push for their next login.
        let peers = self.peers();
        let mut by_home: HashMap<String, Vec<String>> = HashMap::new();
        for p in rest {
            let home = home_of(&peers, &p).unwrap_or(&me).to_string();
            by_home.entry(home).or_default().push(p);
        }
        for (home, ps) in by_home {
            if home == me {
                for p in &ps {
                    let d = self.hub.push(p, msg.msg_id, flags, payload.clone(), true);
                    out.add(
                        p,
                        if d == Delivery::Sent {
                            "sent"
                        } else {
                            "queued"
                        },
                        &me,
                    );
                }
                continue;
            }
            let mut body = wire.clone();
            body["players"] = json!(ps);
            body["create"] = json!(true);
            let opts = InvokeOptions {
                routing_mode: "targeted".into(),
                target_agent: home.clone(),
                ..Default::default()
            };
            match self.forward(body, opts).await {
                Ok(answers) => {
                    for (gw, v) in answers {
                        for p in &ps {
                            let d = v["deliveries"][p].as_str().unwrap_or("failed");
                            out.add(p, d, &gw);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%home, error = %e, "the home gateway did not take the push");
                    for p in &ps {
                        out.add(p, "failed", "");
                    }
                }
            }
        }
        Ok(out)
    }

    /// Closes the player's connection (CLOSE KICKED) and ends their session, wherever it is.
    /// Returns the gateway that held it.
    pub async fn kick(
        &self,
        player_id: &str,
        reason: &str,
    ) -> Result<Option<String>, GatewayError> {
        if self
            .hub
            .take(player_id, CloseReason::Kicked, reason)
            .is_some()
        {
            tracing::info!(%player_id, %reason, "kicked");
            return Ok(Some(self.me().to_string()));
        }
        if !self.has_others() {
            return Ok(None);
        }
        let body = json!({"op": "kick", "player_id": player_id, "reason": reason});
        let answers = self.forward(body, Self::broadcast_opts()).await?;
        Ok(answers
            .into_iter()
            .find(|(_, v)| v["kicked"].as_bool() == Some(true))
            .map(|(gw, _)| gw))
    }

    /// Serves a [`FORWARD`] call from another gateway.
    pub fn serve_forward(&self, v: &Value) -> Result<Value, GatewayError> {
        let bad = |m: &str| GatewayError::InvalidRequest(m.to_string());
        match v["op"].as_str() {
            Some("push") => {
                let players = v["players"]
                    .as_array()
                    .ok_or_else(|| bad("players: a list"))?;
                let flags = v["flags"].as_u64().unwrap_or(0) as u32;
                let payload: Bytes = STANDARD
                    .decode(v["payload_b64"].as_str().unwrap_or_default())
                    .map_err(|e| bad(&format!("payload_b64: {e}")))?
                    .into();
                let create = v["create"].as_bool().unwrap_or(false);
                if create && self.hub.draining() {
                    return Err(GatewayError::Draining);
                }
                let msg_id = v["msg_id"].as_u64().unwrap_or(0) as u32;
                let mut deliveries = serde_json::Map::new();
                for p in players.iter().filter_map(Value::as_str) {
                    match self.hub.push(p, msg_id, flags, payload.clone(), create) {
                        Delivery::Sent => deliveries.insert(p.into(), "sent".into()),
                        Delivery::Queued => deliveries.insert(p.into(), "queued".into()),
                        Delivery::NotHeld => None,
                    };
                }
                Ok(json!({ "deliveries": deliveries }))
            }
            Some("handoff") => {
                let player = v["player_id"].as_str().ok_or_else(|| bad("player_id"))?;
                let to = v["to"].as_str().unwrap_or_default();
                if to == self.me() {
                    return Ok(json!({ "session": null }));
                }
                let rec = self.hub.take(
                    player,
                    CloseReason::Replaced,
                    &format!("the player logged in on gateway {to}"),
                );
                if rec.is_some() {
                    tracing::info!(player_id = %player, %to, "session handed over to another gateway");
                    metrics::counter!(m::HANDOFFS, "direction" => "out").increment(1);
                }
                Ok(json!({ "session": rec }))
            }
            Some("kick") => {
                let player = v["player_id"].as_str().ok_or_else(|| bad("player_id"))?;
                let reason = v["reason"].as_str().unwrap_or("kicked");
                let kicked = self.hub.take(player, CloseReason::Kicked, reason).is_some();
                Ok(json!({ "kicked": kicked }))
            }
            other => Err(bad(&format!("unknown op {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_are_stable_and_move_only_from_a_removed_gateway() {
        let three: Vec<String> = ["gw-1", "gw-2", "gw-3"].map(String::from).to_vec();
        let two: Vec<String> = ["gw-1", "gw-2"].map(String::from).to_vec();
        let mut moved = 0;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in 0..3000 {
            let p = format!("player-{i}");
            let h3 = home_of(&three, &p).unwrap();
            *counts.entry(h3).or_default() += 1;
            assert_eq!(home_of(&three, &p), Some(h3), "stable");
            let h2 = home_of(&two, &p).unwrap();
            if h3 != "gw-3" {
                assert_eq!(h2, h3, "only gw-3's players move");
            } else {
                moved += 1;
            }
        }
        assert!(counts.values().all(|&c| c > 800), "spread: {counts:?}");
        assert_eq!(moved, counts["gw-3"]);
        assert_eq!(home_of(&[], "p"), None);
    }

    #[test]
    fn messages_encode_json_or_bytes() {
        let m = Message {
            msg_id: 1,
            data: Some(json!({"a": 1})),
            data_b64: None,
        };
        assert_eq!(m.encode().unwrap(), (FLAG_JSON, Bytes::from(r#"{"a":1}"#)));
        let m = Message {
            msg_id: 1,
            data: None,
            data_b64: Some("AQID".into()),
        };
        assert_eq!(m.encode().unwrap(), (0, Bytes::from_static(&[1, 2, 3])));
        let m = Message {
            data: Some(json!(1)),
            data_b64: Some("AQID".into()),
            ..Default::default()
        };
        assert!(m.encode().is_err());
    }
}
