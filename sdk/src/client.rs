//! [`Client`]: what callers use to invoke functions and read the registry.
//!
//! Every call has a deadline (the call's own timeout, else the client's default of 30 s), goes
//! through the client's [circuit breaker](crate::breaker) and, when it is safe to repeat, is
//! retried by the client's [`RetryPolicy`] (the rule is in [`crate::retry`]).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use croupier_proto::common::v1::{FunctionDescriptor, NodeState};
use croupier_proto::control::v1::{
    SetNodeStateRequest, SetNodeStateResponse, control_service_client::ControlServiceClient,
};
use croupier_proto::function::v1::{
    CancelJobRequest, CancelJobResponse, DeleteFunctionRequest, EventType, GetJobRequest,
    InvokeFunctionRequest, InvokeFunctionResponse, InvokeJobRequest, JobEvent, JobRecord,
    ListJobsRequest, ListJobsResponse, RegisterFunctionRequest, StreamJobEventsRequest,
    function_service_client::FunctionServiceClient,
};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use croupier_proto::registry::v1::{
    AgentDetail, AgentInfo, FunctionRegistration, GetRegistrationsRequest,
    GetRegistrationsResponse, ListAgentsRequest, RegistrationEvent, WatchRegistrationsRequest,
    registry_service_client::RegistryServiceClient,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::breaker::{BreakerPolicy, BreakerState, CircuitBreaker, Outcome};
pub use crate::options::{CallOptions, Route};
use crate::retry::{Marked, RetryPolicy, with_retries};
use crate::tls::{TlsError, TlsFiles, TlsPem, connect};

/// Largest message the client sends or accepts (the server default).
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// The deadline of a call that sets none, and of the client's other requests: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much later than the server-side timeout the client's gRPC deadline falls, so that the
/// server's own `DEADLINE_EXCEEDED` (which names the agent) arrives first.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// How long a function's "safe to repeat", learned from its descriptor, is trusted.
const SEMANTICS_TTL: Duration = Duration::from_secs(60);

/// Longest wait for the descriptor lookup that decides whether a call may be repeated.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

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
    fn from_registration(r: FunctionRegistration) -> Self {
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

fn descriptor_is_safe(d: &FunctionDescriptor) -> bool {
    d.semantics
        .as_ref()
        .is_some_and(|s| s.kind == "query" || s.idempotent)
}

/// Why a typed call ([`Client::invoke_typed`], [`JobHandle::wait_typed`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The handler ran and failed (`success=false`), or the job failed or was cancelled.
    #[error("{function} failed: {code}: {message}")]
    Handler {
        /// The function.
        function: String,
        /// The agent that ran it (empty when unknown, e.g. for broadcast).
        agent_id: String,
        /// The handler's error code, e.g. "INVALID_ARGUMENT", "INSUFFICIENT_FUNDS".
        code: String,
        /// The handler's message.
        message: String,
    },
    /// The call failed at the gRPC level: bad payload, no agent, deadline, permission…
    #[error("calling {function}: {:?}: {}", .status.code(), .status.message())]
    Rpc {
        /// The function.
        function: String,
        /// The status.
        #[source]
        status: Status,
    },
    /// The payload could not be turned into a JSON object.
    #[error("encoding the payload of {function}: {reason}")]
    Encode {
        /// The function.
        function: String,
        /// What went wrong.
        reason: String,
    },
    /// The result does not have the expected type.
    #[error("decoding the result of {function}: {reason}")]
    Decode {
        /// The function.
        function: String,
        /// What went wrong, with the path of the offending field.
        reason: String,
    },
}

impl CallError {
    /// The gRPC status, for [`CallError::Rpc`].
    pub fn status(&self) -> Option<&Status> {
        match self {
            CallError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The gRPC code, for [`CallError::Rpc`].
    pub fn grpc_code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }

    /// The handler's error code, for [`CallError::Handler`].
    pub fn handler_code(&self) -> Option<&str> {
        match self {
            CallError::Handler { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Serializes a typed payload; it must be a JSON object (a struct or a map).
fn encode_payload<P: Serialize + ?Sized>(
    function: &str,
    payload: &P,
) -> Result<serde_json::Value, CallError> {
    let encode = |reason: String| CallError::Encode {
        function: function.to_string(),
        reason,
    };
    let value = serde_json::to_value(payload).map_err(|e| encode(e.to_string()))?;
    if !value.is_object() {
        return Err(encode(format!(
            "a payload must be a JSON object (a struct or a map), not {value}"
        )));
    }
    Ok(value)
}

/// Deserializes a result (a handler's non-object result arrives wrapped as `{"value": v}`).
pub(crate) fn decode_result<R: DeserializeOwned>(
    function: &str,
    result: Option<&prost_types::Struct>,
) -> Result<R, CallError> {
    let value = opt_struct_to_json(result);
    match crate::typed::from_json::<R>(&value) {
        Ok(r) => Ok(r),
        Err(first) => {
            if let Some(inner) = value
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.get("value"))
                && let Ok(r) = crate::typed::from_json::<R>(inner)
            {
                return Ok(r);
            }
            Err(CallError::Decode {
                function: function.to_string(),
                reason: first,
            })
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

    /// Waits for the job to end and returns its result as `R`. A failed job is
    /// [`CallError::Handler`] with its error code (e.g. `AGENT_LOST`); a cancelled one has code
    /// `CANCELLED` and the reason.
    pub async fn wait_typed<R: DeserializeOwned>(&self) -> Result<R, CallError> {
        let rec = self.wait().await.map_err(|status| CallError::Rpc {
            function: format!("job {}", self.job_id),
            status,
        })?;
        let handler = |code: &str, message: &str| CallError::Handler {
            function: rec.function_id.clone(),
            agent_id: rec.agent_id.clone(),
            code: code.to_string(),
            message: message.to_string(),
        };
        match rec.status.as_str() {
            "completed" => decode_result(&rec.function_id, rec.result.as_ref()),
            "cancelled" => Err(handler(
                "CANCELLED",
                if rec.cancel_reason.is_empty() {
                    &rec.error
                } else {
                    &rec.cancel_reason
                },
            )),
            other => Err(handler(
                if rec.error_code.is_empty() {
                    "FAILED"
                } else {
                    &rec.error_code
                },
                if rec.error.is_empty() {
                    other
                } else {
                    &rec.error
                },
            )),
        }
    }
}

/// Which (game, env, function) a learned "safe to repeat" belongs to.
type FnKey = (String, String, String);

/// A connection to a Croupier server. Cheap to clone; clones share the circuit breaker and what
/// the client learned about functions.
#[derive(Clone)]
pub struct Client {
    control: ControlServiceClient<Marked>,
    function: FunctionServiceClient<Marked>,
    registry: RegistryServiceClient<Marked>,
    channel: Channel,
    server: Arc<str>,
    retry: Arc<RetryPolicy>,
    breaker: Arc<CircuitBreaker>,
    default_timeout: Duration,
    semantics: Arc<Mutex<HashMap<FnKey, (bool, Instant)>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker.state())
            .field("default_timeout", &self.default_timeout)
            .finish()
    }
}

impl Client {
    /// Connects to `server` ("https://host:port") with the given mTLS files.
    pub async fn connect(server: &str, tls: &TlsFiles) -> Result<Client, TlsError> {
        Client::connect_pem(server, &tls.load()?).await
    }

    /// Connects to `server` ("https://host:port") with mTLS material held in memory (e.g. from a
    /// secret store).
    pub async fn connect_pem(server: &str, tls: &TlsPem) -> Result<Client, TlsError> {
        let channel = connect(server, tls).await?;
        Ok(Client::build(channel, server))
    }

    /// Wraps an existing channel.
    pub fn from_channel(channel: Channel) -> Client {
        Client::build(channel, "the server")
    }

    fn build(channel: Channel, server: &str) -> Client {
        let server: Arc<str> = server.into();
        let marked = Marked::new(channel.clone(), server.clone());
        Client {
            control: ControlServiceClient::new(marked.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            function: FunctionServiceClient::new(marked.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            registry: RegistryServiceClient::new(marked)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            channel,
            breaker: CircuitBreaker::new(&server, BreakerPolicy::default()),
            server,
            retry: Arc::new(RetryPolicy::default()),
            default_timeout: DEFAULT_TIMEOUT,
            semantics: Arc::default(),
        }
    }

    /// This client with another retry policy.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Client {
        self.retry = Arc::new(policy);
        self
    }

    /// This client with another circuit breaker policy (and a fresh, closed breaker, shared with
    /// the clones made from the result).
    pub fn with_breaker_policy(mut self, policy: BreakerPolicy) -> Client {
        self.breaker = CircuitBreaker::new(&self.server, policy);
        self
    }

    /// This client with another default deadline: for calls that set no timeout (the gRPC
    /// deadline is this plus one second, so the server's own answer arrives first; it also caps
    /// a longer descriptor timeout) and for the client's other requests.
    pub fn with_default_timeout(mut self, timeout: Duration) -> Client {
        self.default_timeout = timeout;
        self
    }

    /// The server this client talks to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Invokes `function` with a JSON payload. `UNAVAILABLE` is retried when the call is safe to
    /// repeat (an idempotency key, a query or idempotent function, or one listed in the retry
    /// policy), within the call's deadline.
    pub async fn invoke(
        &self,
        function: &str,
        payload: serde_json::Value,
        opts: &CallOptions,
    ) -> Result<InvokeFunctionResponse, Status> {
        let (game_id, env) = (opts.game_or_default(), opts.env_or_default());
        let payload = json_to_struct(&payload);
        let budget = opts.timeout.unwrap_or(self.default_timeout);
        let deadline = Instant::now() + budget + DEADLINE_GRACE;
        let safe = self.repeatable(&game_id, &env, function, opts);
        with_retries(
            &self.retry,
            &self.breaker,
            deadline,
            function,
            safe,
            |left| {
                // A retry gets what is left of the call's timeout.
                let server_timeout = opts.timeout.map(|_| left.saturating_sub(DEADLINE_GRACE));
                let mut req = Request::new(InvokeFunctionRequest {
                    game_id: game_id.clone(),
                    env: env.clone(),
                    function_id: function.to_string(),
                    payload: Some(payload.clone()),
                    options: Some(opts.to_proto_with(server_timeout)),
                });
                // A little over the server-side deadline, so the server's answer arrives first.
                req.set_timeout(left);
                let mut svc = self.function.clone();
                async move { svc.invoke_function(req).await.map(Response::into_inner) }
            },
        )
        .await
    }

    /// Invokes `function` with a typed payload and returns its typed result. A handler failure
    /// is [`CallError::Handler`] with its code and message; a gRPC failure (bad payload, no
    /// agent, deadline…) is [`CallError::Rpc`]. For a single-agent route: a broadcast has no
    /// single result (use [`Client::invoke`]).
    pub async fn invoke_typed<P, R>(
        &self,
        function: &str,
        payload: &P,
        opts: &CallOptions,
    ) -> Result<R, CallError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = encode_payload(function, payload)?;
        let resp = self
            .invoke(function, payload, opts)
            .await
            .map_err(|status| CallError::Rpc {
                function: function.to_string(),
                status,
            })?;
        if !resp.success {
            return Err(CallError::Handler {
                function: function.to_string(),
                agent_id: resp.agent_id,
                code: resp.error_code,
                message: resp.error,
            });
        }
        decode_result(function, resp.result.as_ref())
    }

    /// Starts `function` as a job; `opts.timeout` is the job's deadline. Retried like
    /// [`Client::invoke`] (with a key, a repeat returns the same job).
    pub async fn start_job(
        &self,
        function: &str,
        payload: serde_json::Value,
        opts: &CallOptions,
    ) -> Result<JobHandle, Status> {
        let (game_id, env) = (opts.game_or_default(), opts.env_or_default());
        let payload = json_to_struct(&payload);
        let deadline = Instant::now() + self.default_timeout;
        let safe = self.repeatable(&game_id, &env, function, opts);
        let resp = with_retries(
            &self.retry,
            &self.breaker,
            deadline,
            function,
            safe,
            |left| {
                let req = timed(
                    InvokeJobRequest {
                        game_id: game_id.clone(),
                        env: env.clone(),
                        function_id: function.to_string(),
                        payload: Some(payload.clone()),
                        options: Some(opts.to_proto()),
                    },
                    left,
                );
                let mut svc = self.function.clone();
                async move { svc.invoke_job(req).await.map(Response::into_inner) }
            },
        )
        .await?;
        Ok(self.job(&resp.job_id))
    }

    /// Starts `function` as a job with a typed payload; see [`JobHandle::wait_typed`] for its
    /// typed result.
    pub async fn start_job_typed<P: Serialize + ?Sized>(
        &self,
        function: &str,
        payload: &P,
        opts: &CallOptions,
    ) -> Result<JobHandle, CallError> {
        let payload = encode_payload(function, payload)?;
        self.start_job(function, payload, opts)
            .await
            .map_err(|status| CallError::Rpc {
                function: function.to_string(),
                status,
            })
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
        let req = StreamJobEventsRequest {
            job_id: job_id.to_string(),
            from_seq,
        };
        let mut svc = self.function.clone();
        self.open_stream(async move { svc.stream_job_events(req).await })
            .await
    }

    /// Asks for a job to be cancelled.
    pub async fn cancel_job(
        &self,
        job_id: &str,
        reason: &str,
    ) -> Result<CancelJobResponse, Status> {
        self.read("CancelJob", |left| {
            let req = timed(
                CancelJobRequest {
                    job_id: job_id.to_string(),
                    reason: reason.to_string(),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move { svc.cancel_job(req).await.map(Response::into_inner) }
        })
        .await
    }

    /// One job's record.
    pub async fn get_job(&self, job_id: &str) -> Result<JobRecord, Status> {
        self.read("GetJob", |left| {
            let req = timed(
                GetJobRequest {
                    job_id: job_id.to_string(),
                },
                left,
            );
            let mut svc = self.function.clone();
            async move { svc.get_job(req).await.map(Response::into_inner) }
        })
        .await?
        .job
        .ok_or_else(|| Status::internal("GetJob answered without a job"))
    }

    /// A page of job records, newest first.
    pub async fn list_jobs(&self, req: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        self.read("ListJobs", |left| {
            let req = timed(req.clone(), left);
            let mut svc = self.function.clone();
            async move { svc.list_jobs(req).await.map(Response::into_inner) }
        })
        .await
    }

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

    /// Watches registrations: the current state (ADDED…, SYNCED), then changes. Empty filter
    /// fields match everything; `start_revision` resumes after a broken stream.
    pub async fn watch_registrations(
        &self,
        req: WatchRegistrationsRequest,
    ) -> Result<Streaming<RegistrationEvent>, Status> {
        let mut svc = self.registry.clone();
        self.open_stream(async move { svc.watch_registrations(req).await })
            .await
    }

    /// Watches registrations; the same as [`Client::watch_registrations`].
    pub async fn watch(
        &self,
        req: WatchRegistrationsRequest,
    ) -> Result<Streaming<RegistrationEvent>, Status> {
        self.watch_registrations(req).await
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

    /// The raw generated `FunctionService` client (no retries, breaker or default deadline).
    pub fn function_service(&self) -> FunctionServiceClient<Channel> {
        FunctionServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The raw generated `ControlService` client (no retries, breaker or default deadline).
    pub fn control_service(&self) -> ControlServiceClient<Channel> {
        ControlServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The raw generated `RegistryService` client (no retries, breaker or default deadline).
    pub fn registry_service(&self) -> RegistryServiceClient<Channel> {
        RegistryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// A request that is always safe to repeat (a read, a cancel, setting a state), with the
    /// default deadline, through the breaker and the retry policy.
    async fn read<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, Status>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.default_timeout;
        with_retries(
            &self.retry,
            &self.breaker,
            deadline,
            what,
            async { true },
            attempt,
        )
        .await
    }

    /// Opens a stream through the breaker (once: a stream's owner decides how to resume).
    async fn open_stream<T>(
        &self,
        open: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        let permit = self.breaker.acquire()?;
        let result = open.await.map(Response::into_inner);
        permit.record(Outcome::of(&result));
        result
    }

    /// Whether a call may be repeated: an idempotency key, a function listed in the retry
    /// policy, or a descriptor that says query or idempotent.
    async fn repeatable(
        &self,
        game_id: &str,
        env: &str,
        function: &str,
        opts: &CallOptions,
    ) -> bool {
        if !opts.idempotency_key.is_empty() || self.retry.safe_functions.contains(function) {
            return true;
        }
        let key = (game_id.to_string(), env.to_string(), function.to_string());
        if let Some((safe, at)) = self.semantics.lock().get(&key)
            && at.elapsed() < SEMANTICS_TTL
        {
            return *safe;
        }
        let req = timed(
            GetRegistrationsRequest {
                game_id: game_id.into(),
                env: env.into(),
                function_id: function.into(),
                ..Default::default()
            },
            LOOKUP_TIMEOUT,
        );
        let safe = match self.registry.clone().get_registrations(req).await {
            Ok(r) => r
                .into_inner()
                .registrations
                .iter()
                .find(|r| r.function_id == function)
                .and_then(|r| r.function_descriptor.as_ref())
                .is_some_and(descriptor_is_safe),
            Err(s) => {
                tracing::debug!(function, code = ?s.code(), message = %s.message(), "could not learn whether the call is safe to repeat");
                return false;
            }
        };
        self.semantics.lock().insert(key, (safe, Instant::now()));
        safe
    }
}

/// A request with a gRPC deadline.
fn timed<M>(msg: M, timeout: Duration) -> Request<M> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_proto::common::v1::Semantics;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn safe_descriptors_are_queries_or_idempotent() {
        let d = |kind: &str, idempotent| FunctionDescriptor {
            semantics: Some(Semantics {
                kind: kind.into(),
                idempotent,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(descriptor_is_safe(&d("query", false)));
        assert!(descriptor_is_safe(&d("command", true)));
        assert!(!descriptor_is_safe(&d("command", false)));
        assert!(!descriptor_is_safe(&d("", false)));
        assert!(!descriptor_is_safe(&FunctionDescriptor::default()));
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Pong {
        agent_id: String,
        calls: u64,
    }

    #[test]
    fn typed_payloads_and_results() {
        let p = encode_payload("f", &json!({"a": 1})).unwrap();
        assert_eq!(p, json!({"a": 1}));
        let e = encode_payload("f", &42).unwrap_err();
        assert!(e.to_string().contains("must be a JSON object"), "{e}");

        let ok: Pong = decode_result(
            "agent.ping",
            Some(&json_to_struct(&json!({"agent_id": "a1", "calls": 3}))),
        )
        .unwrap();
        assert_eq!(
            ok,
            Pong {
                agent_id: "a1".into(),
                calls: 3
            }
        );
        let e = decode_result::<Pong>(
            "agent.ping",
            Some(&json_to_struct(&json!({"agent_id": "a1", "calls": "x"}))),
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Decode { .. }));
        assert!(e.to_string().contains("calls"), "{e}");
        // A non-object result travels as {"value": v}.
        let n: u32 = decode_result("f", Some(&json_to_struct(&json!(7)))).unwrap();
        assert_eq!(n, 7);
    }
}
