//! What the registry holds: functions ([`FunctionInfo`]), agents, watches, and the admin calls
//! that change descriptors and node states.

use super::*;
use croupier_proto::common::v1::{FunctionDescriptor, NodeState};
use croupier_proto::control::v1::{SetNodeStateRequest, SetNodeStateResponse};
use croupier_proto::function::v1::{DeleteFunctionRequest, RegisterFunctionRequest};
use croupier_proto::json::opt_struct_to_json;
use croupier_proto::registry::v1::{
    AgentDetail, AgentInfo, FunctionRegistration, GetRegistrationsRequest,
    GetRegistrationsResponse, ListAgentsRequest, RegistrationEvent, WatchRegistrationsRequest,
};
use tokio::time::Instant;
use tonic::{Response, Status, Streaming};

/// A function as `GetRegistrations` lists it: its descriptor and the agents providing it.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionInfo {
    /// Function id.
    pub id: String,
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// The descriptor (a default one when the server has none).
    pub descriptor: FunctionDescriptor,
    /// The agents providing it, online or not.
    pub agents: Vec<AgentInfo>,
}

impl FunctionInfo {
    pub(super) fn from_registration(r: FunctionRegistration) -> Self {
        FunctionInfo {
            descriptor: r.function_descriptor.unwrap_or_else(|| FunctionDescriptor {
                id: r.function_id.clone(),
                ..Default::default()
            }),
            id: r.function_id,
            game_id: r.game_id,
            env: r.env,
            agents: r.agents,
        }
    }

    /// The one-paragraph description.
    pub fn description(&self) -> &str {
        &self.descriptor.description
    }

    /// True for a query (reads only).
    pub fn is_query(&self) -> bool {
        self.descriptor
            .semantics
            .as_ref()
            .is_some_and(|s| s.kind == "query")
    }

    /// True when the descriptor says executing twice has the effect of executing once.
    pub fn is_idempotent(&self) -> bool {
        self.descriptor
            .semantics
            .as_ref()
            .is_some_and(|s| s.idempotent)
    }

    /// True when the function is meant to run as a job.
    pub fn is_job(&self) -> bool {
        self.descriptor.semantics.as_ref().is_some_and(|s| s.job)
    }

    /// True when the client retries calls to it without an idempotency key (a query or an
    /// idempotent function).
    pub fn safe_to_retry(&self) -> bool {
        descriptor_is_safe(&self.descriptor)
    }

    /// Agents whose tunnel is up.
    pub fn online_agents(&self) -> impl Iterator<Item = &AgentInfo> {
        self.agents.iter().filter(|a| a.online)
    }

    /// The JSON Schema payloads must satisfy (`{}` when there is none).
    pub fn params_schema(&self) -> serde_json::Value {
        opt_struct_to_json(self.descriptor.params_schema.as_ref())
    }

    /// The JSON Schema of results (`{}` when there is none).
    pub fn result_schema(&self) -> serde_json::Value {
        opt_struct_to_json(self.descriptor.result_schema.as_ref())
    }
}

pub(super) fn descriptor_is_safe(d: &FunctionDescriptor) -> bool {
    d.semantics
        .as_ref()
        .is_some_and(|s| s.kind == "query" || s.idempotent)
}

impl Client {
    /// Function registrations; empty arguments match everything. Pages through the server's
    /// answers and returns them all (the revision is that of the last page).
    pub async fn registrations(
        &self,
        game_id: &str,
        env: &str,
        function_id: &str,
    ) -> Result<GetRegistrationsResponse, Status> {
        let mut all = GetRegistrationsResponse::default();
        loop {
            let token = std::mem::take(&mut all.next_page_token);
            let page = self
                .read("GetRegistrations", |left| {
                    let req = timed(
                        GetRegistrationsRequest {
                            game_id: game_id.into(),
                            env: env.into(),
                            function_id: function_id.into(),
                            page_size: 0,
                            page_token: token.clone(),
                        },
                        left,
                    );
                    let mut svc = self.registry.clone();
                    async move { svc.get_registrations(req).await.map(Response::into_inner) }
                })
                .await?;
            all.registrations.extend(page.registrations);
            all.revision = page.revision;
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            all.next_page_token = page.next_page_token;
        }
    }

    /// The functions of a game and environment (empty arguments match everything), sorted by
    /// game, env and id, with their descriptors and agents. Also teaches the client which of
    /// them are safe to retry.
    pub async fn functions(&self, game_id: &str, env: &str) -> Result<Vec<FunctionInfo>, Status> {
        let regs = self.registrations(game_id, env, "").await?;
        let mut out: Vec<FunctionInfo> = regs
            .registrations
            .into_iter()
            .map(FunctionInfo::from_registration)
            .collect();
        out.sort_by(|a, b| (&a.game_id, &a.env, &a.id).cmp(&(&b.game_id, &b.env, &b.id)));
        let now = Instant::now();
        let mut cache = self.semantics.lock();
        for f in &out {
            let key = (f.game_id.clone(), f.env.clone(), f.id.clone());
            cache.insert(key, (f.safe_to_retry(), now));
        }
        Ok(out)
    }

    /// Agents, sorted by id; empty arguments match everything. Pages through the server's
    /// answers and returns them all.
    pub async fn agents(&self, game_id: &str, env: &str) -> Result<Vec<AgentDetail>, Status> {
        let mut agents = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .read("ListAgents", |left| {
                    let req = timed(
                        ListAgentsRequest {
                            game_id: game_id.into(),
                            env: env.into(),
                            page_size: 0,
                            page_token: token.clone(),
                        },
                        left,
                    );
                    let mut svc = self.registry.clone();
                    async move { svc.list_agents(req).await.map(Response::into_inner) }
                })
                .await?;
            agents.extend(page.agents);
            if page.next_page_token.is_empty() {
                return Ok(agents);
            }
            token = page.next_page_token;
        }
    }

    /// Which server answers and what it runs: version, commit, server id, store.
    pub async fn server_info(
        &self,
    ) -> Result<croupier_proto::registry::v1::GetServerInfoResponse, Status> {
        self.read("GetServerInfo", |left| {
            let req = timed(croupier_proto::registry::v1::GetServerInfoRequest {}, left);
            let mut svc = self.registry.clone();
            async move { svc.get_server_info(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// Watches registrations: the current state (ADDED…, SYNCED), then changes. Empty filter
    /// fields match everything; `start_revision` resumes after a broken stream.
    pub async fn watch_registrations(
        &self,
        req: WatchRegistrationsRequest,
    ) -> Result<Streaming<RegistrationEvent>, Status> {
        let mut svc = self.registry.clone();
        self.once(async move { svc.watch_registrations(req).await })
            .await
    }

    /// Watches registrations; the same as [`Client::watch_registrations`].
    pub async fn watch(
        &self,
        req: WatchRegistrationsRequest,
    ) -> Result<Streaming<RegistrationEvent>, Status> {
        self.watch_registrations(req).await
    }

    /// This server's call statistics per function ("" filters match everything), for the
    /// functions in the caller's scopes.
    pub async fn function_stats(
        &self,
        game_id: &str,
        env: &str,
        function_id: &str,
    ) -> Result<croupier_proto::function::v1::GetFunctionStatsResponse, Status> {
        self.read("GetFunctionStats", |left| {
            let req = timed(
                croupier_proto::function::v1::GetFunctionStatsRequest {
                    game_id: game_id.into(),
                    env: env.into(),
                    function_id: function_id.into(),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move { svc.get_function_stats(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// Sets a node's state (needs an admin certificate).
    pub async fn set_node_state(
        &self,
        agent_id: &str,
        state: NodeState,
        reason: &str,
    ) -> Result<SetNodeStateResponse, Status> {
        self.read("SetNodeState", |left| {
            let req = timed(
                SetNodeStateRequest {
                    agent_id: agent_id.into(),
                    state: state as i32,
                    reason: reason.into(),
                },
                left,
            );
            let mut svc = self.control.clone();
            async move { svc.set_node_state(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// Registers (or, with an admin certificate, overrides) a function's descriptor; returns
    /// the store revision of the write.
    pub async fn register_function(
        &self,
        game_id: &str,
        env: &str,
        descriptor: FunctionDescriptor,
    ) -> Result<i64, Status> {
        self.read("RegisterFunction", |left| {
            let req = timed(
                RegisterFunctionRequest {
                    game_id: game_id.into(),
                    env: env.into(),
                    function_descriptor: Some(descriptor.clone()),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move {
                svc.register_function(req)
                    .await
                    .map(|r| r.into_inner().revision)
            }
        })
        .await
    }

    /// Deletes a function's descriptor (admin certificate). True when one was deleted.
    pub async fn delete_function(
        &self,
        game_id: &str,
        env: &str,
        function_id: &str,
    ) -> Result<bool, Status> {
        self.read("DeleteFunction", |left| {
            let req = timed(
                DeleteFunctionRequest {
                    game_id: game_id.into(),
                    env: env.into(),
                    function_id: function_id.into(),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move {
                svc.delete_function(req)
                    .await
                    .map(|r| r.into_inner().deleted)
            }
        })
        .await
    }
}
