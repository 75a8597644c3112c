//! [`Client`]: what callers use to invoke functions and read the registry.

use std::collections::HashMap;
use std::time::Duration;

use croupier_proto::common::v1::NodeState;
use croupier_proto::control::v1::{
    SetNodeStateRequest, SetNodeStateResponse, control_service_client::ControlServiceClient,
};
use croupier_proto::function::v1::{
    CancelJobRequest, CancelJobResponse, EventType, GetJobRequest, InvokeFunctionRequest,
    InvokeFunctionResponse, InvokeJobRequest, InvokeOptions, JobEvent, JobRecord, ListJobsRequest,
    ListJobsResponse, StreamJobEventsRequest, function_service_client::FunctionServiceClient,
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

    fn to_proto(&self) -> InvokeOptions {
        InvokeOptions {
            idempotency_key: self.idempotency_key.clone(),
            timeout: self.timeout.map(|t| t.as_secs().max(1) as i32).unwrap_or(0),
            routing_mode: self.routing.clone(),
            target_agent: self.target.clone(),
            hash_key: self.hash_key.clone(),
            selector: self.selector.clone(),
            version: self.version.clone(),
        }
    }
}

/// A started job: follow its events, cancel it, or wait for its end.
#[derive(Clone)]
pub struct JobHandle {
    client: Client,
    job_id: String,
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle")
            .field("job_id", &self.job_id)
            .finish()
    }
}

impl JobHandle {
    /// The job id.
    pub fn id(&self) -> &str {
        &self.job_id
    }

    /// The job's events from `from_seq` (0: from the start), then live until the terminal one.
    pub async fn events(&self, from_seq: i64) -> Result<Streaming<JobEvent>, Status> {
        self.client.job_events(&self.job_id, from_seq).await
    }

    /// Asks for the job to be cancelled.
    pub async fn cancel(&self, reason: &str) -> Result<CancelJobResponse, Status> {
        self.client.cancel_job(&self.job_id, reason).await
    }

    /// Waits for the job to end (following its events, resuming after a broken stream) and
    /// returns its record.
    pub async fn wait(&self) -> Result<JobRecord, Status> {
        let mut next = 1;
        let mut failures = 0;
        'outer: loop {
            let mut stream = match self.events(next).await {
                Ok(s) => s,
                Err(s) if s.code() == tonic::Code::Unavailable && failures < 5 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                    continue;
                }
                Err(s) => return Err(s),
            };
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        if ev.seq > 0 {
                            next = ev.seq + 1;
                        }
                        if matches!(
                            EventType::try_from(ev.r#type),
                            Ok(EventType::Done | EventType::Error | EventType::Cancelled)
                        ) {
                            break 'outer;
                        }
                    }
                    Ok(None) => break 'outer,
                    Err(s) if s.code() == tonic::Code::Unavailable && failures < 5 => {
                        failures += 1;
                        continue 'outer;
                    }
                    Err(s) => return Err(s),
                }
            }
        }
        self.client.get_job(&self.job_id).await
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
            options: Some(opts.to_proto()),
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

    /// Starts `function` as a job; `opts.timeout` is the job's deadline.
    pub async fn start_job(
        &self,
        function: &str,
        payload: serde_json::Value,
        opts: &CallOptions,
    ) -> Result<JobHandle, Status> {
        let resp = self
            .function
            .clone()
            .invoke_job(InvokeJobRequest {
                game_id: opts.game(),
                env: opts.env_or_default(),
                function_id: function.to_string(),
                payload: Some(json_to_struct(&payload)),
                options: Some(opts.to_proto()),
            })
            .await?
            .into_inner();
        Ok(self.job(&resp.job_id))
    }

    /// A handle on an existing job.
    pub fn job(&self, job_id: &str) -> JobHandle {
        JobHandle {
            client: self.clone(),
            job_id: job_id.to_string(),
        }
    }

    /// A job's events from `from_seq` (0: from the start), then live until the terminal one.
    pub async fn job_events(
        &self,
        job_id: &str,
        from_seq: i64,
    ) -> Result<Streaming<JobEvent>, Status> {
        Ok(self
            .function
            .clone()
            .stream_job_events(StreamJobEventsRequest {
                job_id: job_id.to_string(),
                from_seq,
            })
            .await?
            .into_inner())
    }

    /// Asks for a job to be cancelled.
    pub async fn cancel_job(
        &self,
        job_id: &str,
        reason: &str,
    ) -> Result<CancelJobResponse, Status> {
        Ok(self
            .function
            .clone()
            .cancel_job(CancelJobRequest {
                job_id: job_id.to_string(),
                reason: reason.to_string(),
            })
            .await?
            .into_inner())
    }

    /// One job's record.
    pub async fn get_job(&self, job_id: &str) -> Result<JobRecord, Status> {
        self.function
            .clone()
            .get_job(GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await?
            .into_inner()
            .job
            .ok_or_else(|| Status::internal("GetJob answered without a job"))
    }

    /// A page of job records, newest first.
    pub async fn list_jobs(&self, req: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        Ok(self.function.clone().list_jobs(req).await?.into_inner())
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
