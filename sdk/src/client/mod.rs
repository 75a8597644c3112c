//! [`Client`]: what callers use to invoke functions and read the registry.
//!
//! Every call has a deadline (the call's own timeout, else the client's default of 30 s), goes
//! through the client's [circuit breaker](crate::breaker) and, when it is safe to repeat, is
//! retried by the client's [`RetryPolicy`] (the rule is in [`crate::retry`]).
//!
//! Layout:
//! - `call` — `invoke` and `CallError`.
//! - `jobs` — `start_job`, `JobHandle`, `list_jobs`.
//! - `registry` — functions, agents, watches, admin calls.
//! - `governance` — the policy, approvals and the audit log.
//! - `fleet` — node inventories and node events.

mod call;
mod fleet;
mod governance;
mod jobs;
mod registry;

pub use call::CallError;
use call::*;
pub use jobs::JobHandle;
pub use registry::FunctionInfo;
use registry::*;
#[cfg(test)]
mod tests;

use crate::breaker::{BreakerPolicy, BreakerState, CircuitBreaker, Outcome};
pub use crate::options::{CallOptions, Route};
use crate::retry::{Marked, RetryPolicy, with_retries};
use crate::tls::{TlsError, TlsFiles, TlsPem, connect};
use croupier_proto::control::v1::control_service_client::ControlServiceClient;
use croupier_proto::function::v1::function_service_client::FunctionServiceClient;
use croupier_proto::registry::v1::{
    GetRegistrationsRequest, registry_service_client::RegistryServiceClient,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

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

    /// This client compressing its requests with gzip and asking for compressed answers (the
    /// server compresses what it sends to a client that asks, job event streams included). It
    /// pays on slow links and for large payloads or log-heavy job streams; on a LAN with small
    /// payloads it costs more CPU than it saves, so it is off by default.
    pub fn with_gzip(mut self) -> Client {
        use tonic::codec::CompressionEncoding::Gzip;
        self.control = self.control.send_compressed(Gzip).accept_compressed(Gzip);
        self.function = self.function.send_compressed(Gzip).accept_compressed(Gzip);
        self.registry = self.registry.send_compressed(Gzip).accept_compressed(Gzip);
        self
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

    /// Sends a request once through the breaker, without retries: opening a stream (its owner
    /// decides how to resume) or a request whose repeat would be refused.
    async fn once<T>(
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
/// `req` carrying the current trace context (inside a handler: its span's), so the server's
/// span is a child of the current one.
fn traced<M>(mut req: Request<M>) -> Request<M> {
    if let Some(tp) = croupier_proto::trace::current()
        && let Ok(v) = tp.parse()
    {
        req.metadata_mut().insert(croupier_proto::trace::HEADER, v);
    }
    req
}

fn timed<M>(msg: M, timeout: Duration) -> Request<M> {
    let mut req = Request::new(msg);
    req.set_timeout(timeout);
    req
}
