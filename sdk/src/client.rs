//! [`Client`]: what callers use to invoke functions and read the registry.

use std::collections::HashMap;
use std::time::Duration;

use croupier_proto::common::v1::NodeState;
use croupier_proto::control::v1::{
    SetNodeStateRequest, SetNodeStateResponse, control_service_client::ControlServiceClient,
};
use croupier_proto::function::v1::{
    InvokeFunctionRequest, InvokeFunctionResponse, InvokeOptions,
    function_service_client::FunctionServiceClient,
};
use croupier_proto::json::json_to_struct;
use croupier_proto::registry::v1::{
    AgentDetail, GetRegistrationsRequest, GetRegistrationsResponse, ListAgentsRequest,
    RegistrationEvent, WatchRegistrationsRequest, registry_service_client::RegistryServiceClient,
};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::tls::{TlsError, TlsFiles, connect};

/// Largest message the client sends or accepts (the server default).
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// How to run one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Game ("default" when empty).
    pub game_id: String,
    /// Environment ("dev" when empty).
    pub env: String,
    /// Routing mode: "" / "lb", "round_robin", "hash", "targeted", "broadcast".
    pub routing: String,
    /// Key for hash routing.
    pub hash_key: String,
    /// Agent for targeted routing.
    pub target: String,
    /// Label selector.
    pub selector: HashMap<String, String>,
    /// Function version to match.
    pub version: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Deadline; None uses the descriptor's or the server's default.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    fn game(&self) -> String {
        if self.game_id.is_empty() {
            "default".into()
        } else {
            self.game_id.clone()
        }
    }

    fn env_or_default(&self) -> String {
        if self.env.is_empty() {
            "dev".into()
        } else {
            self.env.clone()
        }
    }
}

/// A connection to a Croupier server. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    control: ControlServiceClient<Channel>,
    function: FunctionServiceClient<Channel>,
    registry: RegistryServiceClient<Channel>,
}

impl Client {
    /// Connects to `server` ("https://host:port") with the given mTLS files.
    pub async fn connect(server: &str, tls: &TlsFiles) -> Result<Client, TlsError> {
        let channel = connect(server, &tls.load()?).await?;
        Ok(Client::from_channel(channel))
    }

    /// Wraps an existing channel.
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            control: ControlServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            function: FunctionServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            registry: RegistryServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    /// Invokes `function` with a JSON payload.
    pub async fn invoke(
        &self,
        function: &str,
        payload: serde_json::Value,
        opts: &CallOptions,
    ) -> Result<InvokeFunctionResponse, Status> {
        let mut req = tonic::Request::new(InvokeFunctionRequest {
            game_id: opts.game(),
            env: opts.env_or_default(),
            function_id: function.to_string(),
            payload: Some(json_to_struct(&payload)),
            options: Some(InvokeOptions {
                idempotency_key: opts.idempotency_key.clone(),
                timeout: opts.timeout.map(|t| t.as_secs().max(1) as i32).unwrap_or(0),
                routing_mode: opts.routing.clone(),
                target_agent: opts.target.clone(),
                hash_key: opts.hash_key.clone(),
                selector: opts.selector.clone(),
                version: opts.version.clone(),
            }),
        });
        if let Some(t) = opts.timeout {
            // A little over the server-side deadline, so the server's answer arrives first.
            req.set_timeout(t + Duration::from_secs(1));
        }
        Ok(self
            .function
            .clone()
            .invoke_function(req)
            .await?
            .into_inner())
    }

    /// Function registrations; empty arguments match everything.
    pub async fn registrations(
        &self,
        game_id: &str,
        env: &str,
        function_id: &str,
    ) -> Result<GetRegistrationsResponse, Status> {
        let req = GetRegistrationsRequest {
            game_id: game_id.into(),
            env: env.into(),
            function_id: function_id.into(),
        };
        Ok(self
            .registry
            .clone()
            .get_registrations(req)
            .await?
            .into_inner())
    }

    /// Agents, sorted by id; empty arguments match everything.
    pub async fn agents(&self, game_id: &str, env: &str) -> Result<Vec<AgentDetail>, Status> {
        let req = ListAgentsRequest {
            game_id: game_id.into(),
            env: env.into(),
        };
        Ok(self
            .registry
            .clone()
            .list_agents(req)
            .await?
            .into_inner()
            .agents)
    }

    /// Watches registrations: the current state (ADDED…, SYNCED), then changes.
    pub async fn watch(
        &self,
        req: WatchRegistrationsRequest,
    ) -> Result<Streaming<RegistrationEvent>, Status> {
        Ok(self
            .registry
            .clone()
            .watch_registrations(req)
            .await?
            .into_inner())
    }

    /// Sets a node's state (needs an admin certificate).
    pub async fn set_node_state(
        &self,
        agent_id: &str,
        state: NodeState,
        reason: &str,
    ) -> Result<SetNodeStateResponse, Status> {
        let req = SetNodeStateRequest {
            agent_id: agent_id.into(),
            state: state as i32,
            reason: reason.into(),
        };
        Ok(self.control.clone().set_node_state(req).await?.into_inner())
    }

    /// The raw generated `FunctionService` client.
    pub fn function_service(&self) -> FunctionServiceClient<Channel> {
        self.function.clone()
    }

    /// The raw generated `ControlService` client.
    pub fn control_service(&self) -> ControlServiceClient<Channel> {
        self.control.clone()
    }

    /// The raw generated `RegistryService` client.
    pub fn registry_service(&self) -> RegistryServiceClient<Channel> {
        self.registry.clone()
    }
}
