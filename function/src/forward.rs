//! Forwarding between server replicas (DESIGN §6): an agent belongs to the server whose tunnel
//! it holds (`AgentRecord.owner`); a call or job that lands on another replica is sent to the
//! owner over the same port, with the server's own certificate and the original caller named
//! in the [`ON_BEHALF_OF`] header. The owner trusts that header only from a `server` identity,
//! and runs forwarded requests on its own agents only (no second hop).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use croupier_proto::function::v1::{self as pb, function_service_client::FunctionServiceClient};
use croupier_registry::identity::{Identity, Role, caller};
use croupier_registry::view::RegistryView;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::error::FunctionError;

/// Header carrying the identity (spiffe URI) a server forwards a request for.
pub const ON_BEHALF_OF: &str = "x-croupier-on-behalf-of";

/// Who a request is for, and whether another server forwarded it.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The identity to authorise and audit.
    pub who: Identity,
    /// True when another replica forwarded the request: serve it with local agents only.
    pub forwarded: bool,
}

/// The caller of `req`: its certificate's identity, or, when a server forwarded it, the
/// identity named in [`ON_BEHALF_OF`].
#[allow(clippy::result_large_err)] // tonic handlers return `Status`.
pub fn origin<T>(req: &Request<T>) -> Result<Origin, Status> {
    let who = caller(req)?;
    let Some(on_behalf) = req.metadata().get(ON_BEHALF_OF) else {
        return Ok(Origin {
            who,
            forwarded: false,
        });
    };
    if who.role != Role::Server {
        return Err(Status::permission_denied(format!(
            "identity {who} may not send {ON_BEHALF_OF}: only servers forward requests"
        )));
    }
    let uri = on_behalf
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("{ON_BEHALF_OF} is not text")))?;
    let who = Identity::parse_uri(uri).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{ON_BEHALF_OF} {uri:?} is not a spiffe://croupier/<role>/<name> identity"
        ))
    })?;
    Ok(Origin {
        who,
        forwarded: true,
    })
}

/// The server's client side towards other replicas.
pub struct Forwarder {
    server_id: String,
    view: Arc<RegistryView>,
    tls: ClientTlsConfig,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    /// A forwarder for server `server_id`, presenting `cert_pem`/`key_pem` (a server
    /// certificate) and trusting `ca_pem`.
    pub fn new(
        server_id: &str,
        view: Arc<RegistryView>,
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Forwarder {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        Forwarder {
            server_id: server_id.to_string(),
            view,
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// This server's id.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The live replica other than this one that owns `agent_id`, if any.
    pub fn remote_owner(&self, agent_id: &str) -> Option<String> {
        let agent = self.view.agent(agent_id)?;
        (agent.owner != self.server_id && self.view.server(&agent.owner).is_some())
            .then(|| agent.owner.clone())
    }

    /// True when the agent is registered (with any server).
    pub fn agent_known(&self, agent_id: &str) -> bool {
        self.view.agent(agent_id).is_some()
    }

    /// True when `server_id` is another live replica.
    pub fn is_remote_server(&self, server_id: &str) -> bool {
        !server_id.is_empty()
            && server_id != self.server_id
            && self.view.server(server_id).is_some()
    }

    fn client(&self, server_id: &str) -> Result<FunctionServiceClient<Channel>, FunctionError> {
        let server = self.view.server(server_id).ok_or_else(|| {
            FunctionError::ReplicaUnreachable(format!(
                "server {server_id} is not registered (down?); its agents and jobs are \
                 unreachable until they move to another server"
            ))
        })?;
        let mut channels = self.channels.lock();
        let channel = match channels.get(&server.url) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(server.url.clone())
                    .and_then(|e| e.tls_config(self.tls.clone()))
                    .map_err(|e| {
                        FunctionError::ReplicaUnreachable(format!(
                            "server {server_id} advertises an unusable URL {:?}: {e}",
                            server.url
                        ))
                    })?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(5));
                let c = endpoint.connect_lazy();
                channels.insert(server.url.clone(), c.clone());
                c
            }
        };
        Ok(FunctionServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    fn request<T>(who: &Identity, msg: T, timeout: Option<Duration>) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = who.uri().parse() {
            req.metadata_mut().insert(ON_BEHALF_OF, v);
        }
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        // The owner continues the caller's trace, as a child of the current span.
        if let Some(tp) = croupier_proto::trace::current()
            && let Ok(v) = tp.parse()
        {
            req.metadata_mut().insert(croupier_proto::trace::HEADER, v);
        }
        req
    }

    /// Runs `req` on `owner` for `who`.
    pub async fn invoke(
        &self,
        owner: &str,
        who: &Identity,
        req: pb::InvokeFunctionRequest,
        timeout: Duration,
    ) -> Result<pb::InvokeFunctionResponse, Status> {
        let mut client = self.client(owner)?;
        let started = std::time::Instant::now();
        let mut span = forward_span(owner);
        // The request is made inside the span's scope, so it carries the span's context.
        let result = croupier_proto::trace::scope(span.traceparent().to_string(), async {
            client
                .invoke_function(Self::request(who, req, Some(timeout)))
                .await
        })
        .await;
        if let Err(s) = &result {
            span.set_error(format!("{:?}: {}", s.code(), s.message()));
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics::FORWARDED, "outcome" => outcome).increment(1);
        metrics::histogram!(crate::metrics::FORWARD_SECONDS, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        Ok(result?.into_inner())
    }

    /// Starts a job on `owner` for `who`.
    pub async fn invoke_job(
        &self,
        owner: &str,
        who: &Identity,
        req: pb::InvokeJobRequest,
    ) -> Result<pb::InvokeJobResponse, Status> {
        let mut client = self.client(owner)?;
        let (started, timeout) = (std::time::Instant::now(), Duration::from_secs(30));
        let call = async {
            client
                .invoke_job(Self::request(who, req, Some(timeout)))
                .await
        };
        match forward_span(owner).run(call).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(timed_out(s, started, timeout)),
        }
    }

    /// Follows a job's events on `owner`.
    pub async fn stream_job_events(
        &self,
        owner: &str,
        who: &Identity,
        req: pb::StreamJobEventsRequest,
    ) -> Result<tonic::Streaming<pb::JobEvent>, Status> {
        let mut client = self.client(owner)?;
        Ok(client
            .stream_job_events(Self::request(who, req, None))
            .await?
            .into_inner())
    }

    /// Cancels a job on `owner` for `who`.
    pub async fn cancel_job(
        &self,
        owner: &str,
        who: &Identity,
        req: pb::CancelJobRequest,
    ) -> Result<pb::CancelJobResponse, Status> {
        let mut client = self.client(owner)?;
        let (started, timeout) = (std::time::Instant::now(), Duration::from_secs(10));
        Ok(client
            .cancel_job(Self::request(who, req, Some(timeout)))
            .await
            .map_err(|s| timed_out(s, started, timeout))?
            .into_inner())
    }

    /// Reads a job on `owner`.
    pub async fn get_job(
        &self,
        owner: &str,
        who: &Identity,
        job_id: &str,
    ) -> Result<pb::JobRecord, Status> {
        let mut client = self.client(owner)?;
        let (started, timeout) = (std::time::Instant::now(), Duration::from_secs(10));
        client
            .get_job(Self::request(
                who,
                pb::GetJobRequest {
                    job_id: job_id.to_string(),
                },
                Some(timeout),
            ))
            .await
            .map_err(|s| timed_out(s, started, timeout))?
            .into_inner()
            .job
            .ok_or_else(|| {
                Status::internal(format!("server {owner} answered GetJob without a job"))
            })
    }
}

/// The status of a forwarded request the owner did not answer within `timeout`: whether it ran
/// there is unknown.
pub fn no_answer(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no answer within {timeout:?} (the server is unreachable or overloaded); whether it ran \
         the request is unknown"
    ))
}

/// tonic ends a request whose own timeout ran out with `CANCELLED` "Timeout expired"; for a
/// forward that is [`no_answer`].
fn timed_out(s: Status, started: std::time::Instant, timeout: Duration) -> Status {
    if s.code() == tonic::Code::Cancelled && started.elapsed() >= timeout {
        no_answer(timeout)
    } else {
        s
    }
}

impl From<Status> for FunctionError {
    fn from(s: Status) -> Self {
        FunctionError::Remote(s)
    }
}

/// The span of a call forwarded to the replica `owner`, child of the current one.
fn forward_span(owner: &str) -> croupier_proto::trace::Span {
    croupier_proto::trace::Span::in_current(
        "forward",
        croupier_proto::trace::SpanKind::Client,
        vec![croupier_proto::trace::KeyValue::new(
            "croupier.owner",
            owner.to_string(),
        )],
    )
}
