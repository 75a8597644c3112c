//! The `container` pack: the Docker containers of the agent's host, through bollard.
//!
//! - `container.list`, `container.inspect` — queries; `list` filters on labels.
//! - `container.create`, `container.start`, `container.stop`, `container.restart`,
//!   `container.remove`, `container.exec` — commands answered synchronously (`exec` returns
//!   the exit code, stdout and stderr).
//! - `container.logs` — a job: streams a container's output as `LOG` events (data
//!   `{"stream": "stdout" | "stderr"}`) until it is cancelled or the container ends.
//! - `container.run` — a job: create, start, stream the output as `LOG` events, wait; the result
//!   has the exit code. Cancelling it (or its deadline) stops and removes the container.
//!
//! **Labels.** Every container created through Croupier carries `croupier.agent=<agent id>`, and
//! one made by a job also `croupier.job=<job id>`, so it can be found again with
//! `container.list`. Callers may not set `croupier.*` labels themselves.
//!
//! **Images are never pulled.** Agents may have no registry access; an image missing from the
//! host is a `NOT_FOUND` that says so.
//!
//! **One Docker client, injected.** The pack talks to Docker through [`DockerApi`], a small trait
//! over the operations it uses. The agent builds one [`LocalDocker`] (the bollard client of the
//! local daemon) and hands it to [`register`]; unit tests hand in a fake. [`LocalDocker`]
//! connects on first use and again after a failed attempt, negotiating the API version down to
//! what the daemon speaks, so a Docker started after the agent is picked up.
//!
//! **Docker missing.** The pack registers even when Docker does not answer at startup
//! ([`probe`]): the descriptions then say Docker is unavailable, and calls answer
//! `UNAVAILABLE` "Docker is not running (…)" until it runs. Other failures are handler errors
//! with codes: `NOT_FOUND` (image, container), `ALREADY_EXISTS` (name in use),
//! `FAILED_PRECONDITION` (other conflicts, e.g. removing a running container without `force`),
//! `INVALID_ARGUMENT` (Docker rejected the configuration), `PERMISSION_DENIED` (the Docker
//! socket or an authorization plugin refused).
//!
//! **Routing.** A container lives on one agent: calls that name a container should be sent
//! with `targeted` routing to the agent that holds it.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, ContainerCreateResponse, ContainerInspectResponse, ContainerSummary,
    ExecConfig, HostConfig, SystemVersion,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptions, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use croupier_proto::common::v1::{FunctionDescriptor, Semantics};
use croupier_proto::json::json_to_struct;
use croupier_sdk::tls::error_chain;
use croupier_sdk::{HandlerError, Invocation, JobContext, Provider};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::procs;

/// Label naming the agent that created a container.
pub(crate) const AGENT_LABEL: &str = "croupier.agent";
/// Label naming the job that created a container.
pub(crate) const JOB_LABEL: &str = "croupier.job";
/// Labels under this prefix are Croupier's; callers may not set them.
const RESERVED_PREFIX: &str = "croupier.";
/// Where the Docker socket is when `DOCKER_HOST` does not name a `unix://` one.
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// bollard's per-request timeout (until the response headers). Above the longest `stop`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(330);
/// How long the startup probe waits for Docker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest `timeout` of `container.stop` and `container.restart`, in seconds.
const MAX_STOP_SECS: i64 = 300;
/// Seconds a cancelled `container.run` gives its container to stop before it is killed.
const CANCEL_STOP_SECS: i32 = 2;
/// Most bytes of stdout (and of stderr) `container.exec` returns.
const MAX_EXEC_OUTPUT: usize = 1 << 20;
/// Longest log line sent as one event; longer lines are split.
const MAX_LINE: usize = 16 * 1024;
/// How long `container.exec` waits for Docker to record the exit code after the output ends.
const EXEC_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Default timeouts (seconds) of the pack's functions.
const QUERY_TIMEOUT: i32 = 30;
const COMMAND_TIMEOUT: i32 = 60;
const STOP_TIMEOUT: i32 = MAX_STOP_SECS as i32 + 30;
const EXEC_TIMEOUT: i32 = 300;
const JOB_TIMEOUT: i32 = 3600;

// ---------------------------------------------------------------------------------------------
// The Docker operations

/// A container's output: frames of stdout / stderr, ending when the output does.
pub(crate) type LogStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// The Docker operations the pack uses. Implemented for the local daemon by [`LocalDocker`];
/// unit tests use a fake. Errors are bollard's, so the mapping to handler errors is the same
/// for both.
#[async_trait]
pub(crate) trait DockerApi: Send + Sync {
    /// Containers, all of them or only running ones, matching Docker list `filters`.
    async fn list(
        &self,
        all: bool,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, DockerError>;
    /// One container, by id or name.
    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, DockerError>;
    /// Creates a container (never pulls its image).
    async fn create(
        &self,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, DockerError>;
    /// Starts a container; starting a running one succeeds.
    async fn start(&self, id: &str) -> Result<(), DockerError>;
    /// Stops a container: its stop signal, then SIGKILL after `timeout_secs`.
    async fn stop(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError>;
    /// Restarts a container.
    async fn restart(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError>;
    /// Removes a container (`force` kills a running one; `volumes` removes its anonymous volumes).
    async fn remove(&self, id: &str, force: bool, volumes: bool) -> Result<(), DockerError>;
    /// Waits until a container is not running; its exit code.
    async fn wait(&self, id: &str) -> Result<i64, DockerError>;
    /// A container's output.
    async fn logs(&self, id: &str, options: LogsOptions) -> Result<LogStream, DockerError>;
    /// Runs a command in a running container: the exec id and its output.
    async fn exec(&self, id: &str, config: ExecConfig) -> Result<(String, LogStream), DockerError>;
    /// Whether an exec still runs, and its exit code once it ended.
    async fn exec_status(&self, exec_id: &str) -> Result<(bool, Option<i64>), DockerError>;
    /// Kills what still runs of an exec (its process and their descendants); how many
    /// processes that was. Docker has no API for it: see [`LocalDocker`]'s implementation.
    async fn kill_exec(&self, exec_id: &str) -> Result<usize, DockerError>;
    /// The daemon's version (for `node.resources`).
    async fn version(&self) -> Result<SystemVersion, DockerError>;
}

/// The local Docker daemon (`DOCKER_HOST` when it names a `unix://` socket, else
/// `/var/run/docker.sock`), through one bollard client made on first use.
pub(crate) struct LocalDocker {
    client: tokio::sync::OnceCell<Docker>,
}

impl LocalDocker {
    /// A handle that connects on first use.
    pub(crate) fn new() -> Self {
        LocalDocker {
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// The client; connects (again) when no connection succeeded yet.
    async fn client(&self) -> Result<&Docker, DockerError> {
        self.client.get_or_try_init(connect).await
    }
}

/// The socket `Docker::connect_with_local_defaults` uses.
fn socket_addr() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string())
}

/// Connects to the local daemon and agrees on an API version. bollard speaks the newest API
/// it knows and `negotiate_version` only lowers it when `/version` answers; an older daemon
/// refuses that request with "client version X is too new. Maximum supported API version is
/// Y", so the client is made again at Y.
async fn connect() -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_local_defaults()?.with_timeout(REQUEST_TIMEOUT);
    match docker.negotiate_version().await {
        Err(DockerError::DockerResponseServerError {
            status_code: 400,
            message,
        }) => {
            let Some(version) = max_api_version(&message) else {
                return Err(DockerError::DockerResponseServerError {
                    status_code: 400,
                    message,
                });
            };
            Docker::connect_with_local(&socket_addr(), REQUEST_TIMEOUT.as_secs(), &version)?
                .with_timeout(REQUEST_TIMEOUT)
                .negotiate_version()
                .await
        }
        other => other,
    }
}

/// The version in Docker's "… Maximum supported API version is 1.41" refusal.
fn max_api_version(message: &str) -> Option<ClientVersion> {
    let (_, rest) = message.split_once("Maximum supported API version is ")?;
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let (major, minor) = version.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// Asks Docker once, at startup, whether it answers: None when it does, else why not (for the
/// descriptions). Runs on a thread of its own with its own runtime, because the pack is
/// installed from synchronous code that may itself run inside a runtime; waits at most
/// [`PROBE_TIMEOUT`].
pub(crate) fn probe() -> Option<String> {
    let thread = std::thread::Builder::new()
        .name("docker-probe".into())
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting the Docker probe: {e}"))?;
            rt.block_on(async {
                match tokio::time::timeout(PROBE_TIMEOUT, connect()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => {
                        Err(docker_error("connecting to Docker", Subject::Daemon, e).message)
                    }
                    Err(_) => Err(format!(
                        "Docker is not running (no answer from {} within {} s)",
                        socket_addr(),
                        PROBE_TIMEOUT.as_secs()
                    )),
                }
            })
        });
    let outcome = match thread {
        Ok(t) => t
            .join()
            .unwrap_or_else(|_| Err("the Docker probe panicked".into())),
        Err(e) => Err(format!("starting the Docker probe: {e}")),
    };
    outcome.err()
}

#[async_trait]
impl DockerApi for LocalDocker {
    async fn list(
        &self,
        all: bool,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let mut options = ListContainersOptionsBuilder::new().all(all);
        if !filters.is_empty() {
            options = options.filters(&filters);
        }
        self.client()
            .await?
            .list_containers(Some(options.build()))
            .await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, DockerError> {
        self.client().await?.inspect_container(id, None).await
    }

    async fn create(
        &self,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, DockerError> {
        let mut options = CreateContainerOptionsBuilder::new();
        if let Some(name) = name {
            options = options.name(name);
        }
        self.client()
            .await?
            .create_container(Some(options.build()), body)
            .await
    }

    async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.client().await?.start_container(id, None).await
    }

    async fn stop(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError> {
        let mut options = StopContainerOptionsBuilder::new();
        if let Some(t) = timeout_secs {
            options = options.t(t);
        }
        self.client()
            .await?
            .stop_container(id, Some(options.build()))
            .await
    }

    async fn restart(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError> {
        let mut options = RestartContainerOptionsBuilder::new();
        if let Some(t) = timeout_secs {
            options = options.t(t);
        }
        self.client()
            .await?
            .restart_container(id, Some(options.build()))
            .await
    }

    async fn remove(&self, id: &str, force: bool, volumes: bool) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(force)
            .v(volumes)
            .build();
        self.client()
            .await?
            .remove_container(id, Some(options))
            .await
    }

    async fn wait(&self, id: &str) -> Result<i64, DockerError> {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut waits = self.client().await?.wait_container(id, Some(options));
        match waits.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit code as an error; here it is just the answer.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e),
            None => Err(DockerError::DockerStreamError {
                error: format!("Docker ended the wait for {id} without an exit code"),
            }),
        }
    }

    async fn logs(&self, id: &str, options: LogsOptions) -> Result<LogStream, DockerError> {
        Ok(Box::pin(self.client().await?.logs(id, Some(options))))
    }

    async fn exec(&self, id: &str, config: ExecConfig) -> Result<(String, LogStream), DockerError> {
        let docker = self.client().await?;
        let exec_id = docker.create_exec(id, config).await?.id;
        match docker.start_exec(&exec_id, None).await? {
            StartExecResults::Attached { output, .. } => Ok((exec_id, output)),
            StartExecResults::Detached => Err(DockerError::DockerStreamError {
                error: format!("exec {exec_id} started detached; no output to read"),
            }),
        }
    }

    async fn exec_status(&self, exec_id: &str) -> Result<(bool, Option<i64>), DockerError> {
        let e = self.client().await?.inspect_exec(exec_id).await?;
        Ok((e.running.unwrap_or(false), e.exit_code))
    }

    /// Finds the exec's processes in `/proc` (checked to be in the container's cgroup) and sends
    /// them SIGKILL. When the agent may not signal them (it is not root), it runs `kill -9` in
    /// the container as root with their PIDs there. An agent in another PID namespace than
    /// Docker cannot see them: that is an error saying so.
    async fn kill_exec(&self, exec_id: &str) -> Result<usize, DockerError> {
        let e = self.client().await?.inspect_exec(exec_id).await?;
        let (true, Some(pid), Some(container)) =
            (e.running.unwrap_or(false), e.pid, e.container_id)
        else {
            return Ok(0);
        };
        let stream_error = |error: String| DockerError::DockerStreamError { error };
        let found = {
            let container = container.clone();
            tokio::task::spawn_blocking(move || {
                procs::tree(std::path::Path::new("/proc"), &container, pid as i32)
            })
            .await
        };
        let tree = found
            .map_err(|e| stream_error(format!("looking for the exec's processes: {e}")))?
            .map_err(stream_error)?;
        let refused = procs::kill(&tree);
        if refused.is_empty() {
            return Ok(tree.len());
        }
        // Not allowed to signal them from here: `kill` inside the container, as root there.
        let ns_pids: Vec<String> = refused
            .iter()
            .filter_map(|p| p.ns_pid)
            .map(|p| p.to_string())
            .collect();
        if ns_pids.len() != refused.len() {
            return Err(stream_error(format!(
                "not allowed to signal the exec's processes, and their PIDs in container \
                 {container} are unknown"
            )));
        }
        let mut cmd: Vec<String> = ["sh", "-c", "kill -9 \"$@\"", "kill"]
            .map(String::from)
            .into();
        cmd.extend(ns_pids);
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd),
            user: Some("0".into()),
            ..Default::default()
        };
        let (kill_id, mut output) = self.exec(&container, config).await?;
        let mut said = Vec::new();
        while let Some(frame) = output.next().await {
            said.extend_from_slice(&frame?.into_bytes());
        }
        match exec_exit_code(self, &kill_id).await? {
            Some(0) => Ok(tree.len()),
            code => Err(stream_error(format!(
                "not allowed to signal the exec's processes, and `kill` in container \
                 {container} failed ({code:?}): {}",
                String::from_utf8_lossy(&said).trim()
            ))),
        }
    }

    async fn version(&self) -> Result<SystemVersion, DockerError> {
        self.client().await?.version().await
    }
}

/// Kills an exec's processes when the `container.exec` call that started it is dropped before
/// the command ended (deadline passed, call cancelled): the work goes on in a task of its own.
struct KillOnDrop {
    docker: Arc<dyn DockerApi>,
    exec_id: Option<String>,
}

impl KillOnDrop {
    /// The exec ended: nothing to kill.
    fn disarm(mut self) {
        self.exec_id = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let (Some(exec_id), Ok(runtime)) =
            (self.exec_id.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let docker = self.docker.clone();
        runtime.spawn(async move {
            match docker.kill_exec(&exec_id).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(exec_id, processes = n, "killed a cancelled exec"),
                Err(e) => {
                    tracing::warn!(exec_id, error = %error_chain(&e), "a cancelled exec could not be killed; it goes on in its container")
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// What a failed Docker request was about, for the message of a 404.
#[derive(Clone, Copy, Debug)]
enum Subject<'a> {
    /// A container, by id or name.
    Container(&'a str),
    /// An image, when creating a container.
    Image(&'a str),
    /// The daemon itself.
    Daemon,
}

/// The handler error for a failed Docker request made while `action` ("creating the
/// container", "stopping container x"…).
fn docker_error(action: &str, subject: Subject<'_>, e: DockerError) -> HandlerError {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => server_error(action, subject, status_code, message.trim()),
        DockerError::SocketNotFoundError(path) => HandlerError::new(
            "UNAVAILABLE",
            format!("Docker is not running (no Docker socket at {path})"),
        ),
        DockerError::RequestTimeoutError => HandlerError::new(
            "UNAVAILABLE",
            format!(
                "Docker did not answer within {} s while {action}",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
        other => {
            let detail = error_chain(&other);
            match io_kind(&other) {
                Some(
                    std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable,
                ) => HandlerError::new(
                    "UNAVAILABLE",
                    format!(
                        "Docker is not running (cannot connect to {}: {detail})",
                        socket_addr()
                    ),
                ),
                Some(std::io::ErrorKind::PermissionDenied) => HandlerError::new(
                    "PERMISSION_DENIED",
                    format!(
                        "permission denied on the Docker socket {} ({detail}); the agent's user \
                         needs access to it (root, or membership of the docker group)",
                        socket_addr()
                    ),
                ),
                Some(_) => HandlerError::new(
                    "UNAVAILABLE",
                    format!("lost the connection to Docker while {action} ({detail})"),
                ),
                None if matches!(
                    other,
                    DockerError::HyperLegacyError { .. } | DockerError::HyperResponseError { .. }
                ) =>
                {
                    HandlerError::new(
                        "UNAVAILABLE",
                        format!("lost the connection to Docker while {action} ({detail})"),
                    )
                }
                None => HandlerError::internal(format!("{action}: {detail}")),
            }
        }
    }
}

/// The kind of the first I/O error in `e`'s chain.
fn io_kind(e: &DockerError) -> Option<std::io::ErrorKind> {
    if let DockerError::IOError { err } = e {
        return Some(err.kind());
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// The handler error for an error status from Docker.
fn server_error(action: &str, subject: Subject<'_>, status: u16, message: &str) -> HandlerError {
    match status {
        404 => match subject {
            Subject::Image(image) if message.to_ascii_lowercase().contains("image") => {
                HandlerError::new("NOT_FOUND", image_missing(image))
            }
            Subject::Container(id) => HandlerError::new(
                "NOT_FOUND",
                format!(
                    "no such container {id} on this agent (a container lives on the agent that \
                     created it: call that agent with targeted routing)"
                ),
            ),
            _ => HandlerError::new("NOT_FOUND", format!("{action}: {message}")),
        },
        409 if message.contains("already in use") => {
            HandlerError::new("ALREADY_EXISTS", format!("{action}: {message}"))
        }
        409 => HandlerError::new("FAILED_PRECONDITION", format!("{action}: {message}")),
        400 => HandlerError::new(
            "INVALID_ARGUMENT",
            format!("{action}: Docker rejected the request: {message}"),
        ),
        401 | 403 => HandlerError::new(
            "PERMISSION_DENIED",
            format!("{action}: Docker refused: {message}"),
        ),
        503 => HandlerError::new(
            "UNAVAILABLE",
            format!("{action}: Docker is unavailable: {message}"),
        ),
        _ => HandlerError::internal(format!("{action}: Docker answered {status}: {message}")),
    }
}

fn image_missing(image: &str) -> String {
    format!(
        "image {image} not found locally; it cannot be pulled here (the container pack never \
         pulls images): load, import or build it on this host first"
    )
}

fn invalid(message: impl Into<String>) -> HandlerError {
    HandlerError::new("INVALID_ARGUMENT", message)
}

// ---------------------------------------------------------------------------------------------
// Registration

/// What the pack's handlers share: the Docker client and the agent's id.
#[derive(Clone)]
struct Ctx {
    docker: Arc<dyn DockerApi>,
    agent_id: Arc<str>,
}

/// Registers the `container.*` functions on `provider`, served through `docker`.
/// `unavailable` is why Docker did not answer at startup (see [`probe`]), if it did not: the
/// descriptions then say so. Calls go to Docker either way.
pub(crate) fn register(
    provider: Provider,
    docker: Arc<dyn DockerApi>,
    unavailable: Option<String>,
    agent_id: &str,
) -> Provider {
    let ctx = Ctx {
        docker,
        agent_id: agent_id.into(),
    };
    let d = |descriptor: FunctionDescriptor| with_note(descriptor, unavailable.as_deref());
    provider
        .function(d(list_descriptor()), handler(&ctx, list))
        .function(d(inspect_descriptor()), handler(&ctx, inspect))
        .function(d(create_descriptor()), handler(&ctx, create))
        .function(d(start_descriptor()), handler(&ctx, start))
        .function(d(stop_descriptor()), handler(&ctx, stop))
        .function(d(restart_descriptor()), handler(&ctx, restart))
        .function(d(remove_descriptor()), handler(&ctx, remove))
        .function(d(exec_descriptor()), handler(&ctx, exec))
        .job(d(logs_descriptor()), job_handler(&ctx, logs_job))
        .job(d(run_descriptor()), job_handler(&ctx, run_job))
}

/// A descriptor whose description also says Docker was unavailable at startup.
fn with_note(mut d: FunctionDescriptor, unavailable: Option<&str>) -> FunctionDescriptor {
    if let Some(reason) = unavailable {
        d.description = format!(
            "{} [Docker is unavailable on this agent: {reason}. Calls answer UNAVAILABLE until \
             it runs.]",
            d.description
        );
    }
    d
}

fn handler<F, Fut>(ctx: &Ctx, f: F) -> impl Fn(Invocation) -> Fut + Send + Sync + 'static
where
    F: Fn(Ctx, Invocation) -> Fut + Send + Sync + 'static,
{
    let ctx = ctx.clone();
    move |call| f(ctx.clone(), call)
}

fn job_handler<F, Fut>(ctx: &Ctx, f: F) -> impl Fn(JobContext) -> Fut + Send + Sync + 'static
where
    F: Fn(Ctx, JobContext) -> Fut + Send + Sync + 'static,
{
    let ctx = ctx.clone();
    move |job| f(ctx.clone(), job)
}

// ---------------------------------------------------------------------------------------------
// Descriptors

fn descriptor(
    id: &str,
    kind: &str,
    idempotent: bool,
    timeout: i32,
    description: &str,
    params: Value,
    result: Value,
) -> FunctionDescriptor {
    FunctionDescriptor {
        id: id.into(),
        name: id.into(),
        category: "container".into(),
        description: description.into(),
        params_schema: Some(json_to_struct(&params)),
        result_schema: Some(json_to_struct(&result)),
        semantics: Some(Semantics {
            kind: kind.into(),
            idempotent,
            timeout,
            job: false,
        }),
        version: "1".into(),
        ..Default::default()
    }
}

/// JSON Schema of an object with these properties, the `required` ones, and no others.
fn params_object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// JSON Schema of an object whose listed properties are all required.
fn object(properties: Value) -> Value {
    let required: Vec<String> = properties
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "properties": properties, "required": required})
}

fn string_map(description: &str) -> Value {
    json!({
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": description,
    })
}

fn strings(description: &str) -> Value {
    json!({"type": "array", "items": {"type": "string"}, "description": description})
}

fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn container_id() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "description": "The container's id (or a unique prefix of it) or name."
    })
}

fn id_result() -> Value {
    object(json!({"id": {"type": "string"}}))
}

/// The properties of a container to create (`container.create`, `container.run`).
fn spec_properties() -> Value {
    json!({
        "image": {
            "type": "string",
            "minLength": 1,
            "description": "Image, present on the agent's host (never pulled)."
        },
        "name": {"type": "string", "minLength": 1, "description": "Container name."},
        "cmd": strings("Command and arguments (default: the image's)."),
        "entrypoint": strings("Entrypoint (default: the image's)."),
        "env": string_map("Environment variables, name → value."),
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "propertyNames": {"not": {"pattern": "^croupier\\."}},
            "description": "Labels; croupier.* are set by Croupier and may not be given."
        },
        "working_dir": {"type": "string"},
        "user": {"type": "string", "description": "User (name or uid[:gid]) the command runs as."},
        "network_mode": {
            "type": "string",
            "description": "Network mode: bridge (default), host, none or a network's name."
        },
        "memory_bytes": {"type": "integer", "minimum": 0, "description": "Memory limit."},
        "cpus": {"type": "number", "exclusiveMinimum": 0, "description": "CPU limit, in CPUs."},
        "binds": strings("Bind mounts, host-path:container-path[:ro]."),
    })
}

fn list_descriptor() -> FunctionDescriptor {
    let summary = object(json!({
        "id": {"type": "string"},
        "name": {"type": "string"},
        "image": {"type": "string"},
        "command": {"type": "string"},
        "created": {"type": "integer", "description": "Unix seconds."},
        "state": {"type": "string", "description": "created, running, exited…"},
        "status": {"type": "string", "description": "Docker's status text, e.g. \"Up 3 minutes\"."},
        "labels": string_map("The container's labels."),
    }));
    descriptor(
        "container.list",
        "query",
        true,
        QUERY_TIMEOUT,
        "Lists the containers of the agent's host, newest first: running ones, or all with \
         `all`; `labels` keeps those carrying every given label (e.g. {\"croupier.job\": id}); \
         `mine` keeps those this agent created.",
        params_object(
            json!({
                "all": {"type": "boolean", "description": "Include stopped containers."},
                "labels": string_map("Labels every listed container carries, name → value."),
                "mine": {"type": "boolean", "description": "Only containers this agent created."},
            }),
            &[],
        ),
        object(json!({"containers": {"type": "array", "items": summary}})),
    )
}

fn inspect_descriptor() -> FunctionDescriptor {
    let state = object(json!({
        "status": {"type": "string"},
        "running": {"type": "boolean"},
        "paused": {"type": "boolean"},
        "restarting": {"type": "boolean"},
        "oom_killed": {"type": "boolean"},
        "dead": {"type": "boolean"},
        "pid": {"type": "integer"},
        "exit_code": {"type": "integer"},
        "error": {"type": "string"},
        "started_at": {"type": "string"},
        "finished_at": {"type": "string"},
    }));
    descriptor(
        "container.inspect",
        "query",
        true,
        QUERY_TIMEOUT,
        "Describes one container: id, name, image, state (status, exit code, pid, times), \
         labels, command, entrypoint, working directory, user and restart count.",
        params_object(json!({"id": container_id()}), &["id"]),
        object(json!({
            "id": {"type": "string"},
            "name": {"type": "string"},
            "image": {"type": "string", "description": "The image as given at creation."},
            "image_id": {"type": "string"},
            "created": nullable(json!({"type": "string"})),
            "state": state,
            "labels": string_map("The container's labels."),
            "cmd": nullable(json!({"type": "array", "items": {"type": "string"}})),
            "entrypoint": nullable(json!({"type": "array", "items": {"type": "string"}})),
            "working_dir": {"type": "string"},
            "user": {"type": "string"},
            "restart_count": {"type": "integer"},
        })),
    )
}

fn create_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.create",
        "command",
        false,
        COMMAND_TIMEOUT,
        "Creates a container (not started) from an image present on the host, labelled \
         croupier.agent=<agent id>. Images are never pulled.",
        params_object(spec_properties(), &["image"]),
        object(json!({
            "id": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        })),
    )
}

fn start_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.start",
        "command",
        true,
        COMMAND_TIMEOUT,
        "Starts a container; a running one is left as it is.",
        params_object(json!({"id": container_id()}), &["id"]),
        id_result(),
    )
}

fn stop_params() -> Value {
    params_object(
        json!({
            "id": container_id(),
            "timeout": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_STOP_SECS,
                "description": "Seconds to wait after the stop signal before killing \
                                (default: the container's, usually 10)."
            },
        }),
        &["id"],
    )
}

fn stop_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.stop",
        "command",
        true,
        STOP_TIMEOUT,
        "Stops a container: its stop signal, then SIGKILL after `timeout` seconds; a stopped \
         one is left as it is.",
        stop_params(),
        id_result(),
    )
}

fn restart_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.restart",
        "command",
        false,
        STOP_TIMEOUT,
        "Restarts a container (stopping it first, killing it after `timeout` seconds).",
        stop_params(),
        id_result(),
    )
}

fn remove_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.remove",
        "command",
        false,
        COMMAND_TIMEOUT,
        "Removes a container; a running one only with `force` (which kills it). `volumes` \
         also removes its anonymous volumes.",
        params_object(
            json!({
                "id": container_id(),
                "force": {"type": "boolean", "description": "Kill and remove a running container."},
                "volumes": {"type": "boolean", "description": "Remove its anonymous volumes."},
            }),
            &["id"],
        ),
        id_result(),
    )
}

fn exec_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.exec",
        "command",
        false,
        EXEC_TIMEOUT,
        "Runs a command in a running container and answers when it ends: exit code, stdout and \
         stderr (each cut at 1 MiB, `truncated` says so). A call cancelled or past its deadline \
         kills the command.",
        params_object(
            json!({
                "id": container_id(),
                "cmd": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "Command and arguments."
                },
                "env": string_map("Extra environment variables, name → value."),
                "working_dir": {"type": "string"},
                "user": {"type": "string"},
            }),
            &["id", "cmd"],
        ),
        object(json!({
            "id": {"type": "string"},
            "exit_code": nullable(json!({
                "type": "integer",
                "description": "null when the command closed its output but still runs."
            })),
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "truncated": {"type": "boolean"},
        })),
    )
}

fn logs_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.logs",
        "query",
        true,
        JOB_TIMEOUT,
        "A job: streams a container's output as LOG events, one per line, with data \
         {\"stream\": \"stdout\"|\"stderr\"}; with `follow` (default) until the container ends \
         or the job is cancelled.",
        params_object(
            json!({
                "id": container_id(),
                "follow": {"type": "boolean", "description": "Keep streaming new output (default true)."},
                "tail": {"type": "integer", "minimum": 0, "description": "Start with the last N lines (default: all)."},
                "since": {"type": "integer", "minimum": 0, "description": "Only output since this Unix time (seconds)."},
                "timestamps": {"type": "boolean", "description": "Prefix lines with Docker's timestamps."},
            }),
            &["id"],
        ),
        object(json!({
            "id": {"type": "string"},
            "lines": {"type": "integer", "minimum": 0, "description": "Lines streamed."},
        })),
    )
}

fn run_descriptor() -> FunctionDescriptor {
    let mut params = spec_properties();
    params["remove"] = json!({
        "type": "boolean",
        "description": "Remove the container once it ended (default true)."
    });
    descriptor(
        "container.run",
        "command",
        false,
        JOB_TIMEOUT,
        "A job: creates a container (labelled croupier.agent and croupier.job), starts it, \
         streams its output as LOG events (data {\"stream\": \"stdout\"|\"stderr\"}), waits for \
         it to end and removes it (unless `remove` is false). The result has the exit code. \
         Cancelling the job stops and removes the container. Images are never pulled.",
        params_object(params, &["image"]),
        object(json!({
            "id": {"type": "string"},
            "exit_code": {"type": "integer"},
            "lines": {"type": "integer", "minimum": 0, "description": "Lines streamed."},
            "removed": {"type": "boolean"},
        })),
    )
}

// ---------------------------------------------------------------------------------------------
// Parameters

/// Decodes a payload (null counts as `{}`), naming the function in the error.
fn params<T: DeserializeOwned>(function: &str, payload: &Value) -> Result<T, HandlerError> {
    let payload = if payload.is_null() {
        json!({})
    } else {
        payload.clone()
    };
    serde_json::from_value(payload).map_err(|e| invalid(format!("{function}: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    mine: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopParams {
    id: String,
    timeout: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveParams {
    id: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    volumes: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecParams {
    id: String,
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    user: Option<String>,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsParams {
    id: String,
    #[serde(default = "default_true")]
    follow: bool,
    tail: Option<u64>,
    since: Option<i64>,
    #[serde(default)]
    timestamps: bool,
}

/// A container to create.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    image: String,
    name: Option<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    working_dir: Option<String>,
    user: Option<String>,
    network_mode: Option<String>,
    memory_bytes: Option<i64>,
    cpus: Option<f64>,
    #[serde(default)]
    binds: Vec<String>,
}

fn non_empty(field: &str, value: &str) -> Result<(), HandlerError> {
    if value.trim().is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    Ok(())
}

/// `NAME=value` entries; names must be non-empty and free of `=`.
fn env_list(env: BTreeMap<String, String>) -> Result<Vec<String>, HandlerError> {
    env.into_iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                Err(invalid(format!(
                    "environment variable name {k:?} must be non-empty and free of '='"
                )))
            } else {
                Ok(format!("{k}={v}"))
            }
        })
        .collect()
}

/// The labels of a container Croupier creates: the caller's (none under `croupier.`), the
/// agent's id and, for a job, the job's id.
fn croupier_labels(
    user: BTreeMap<String, String>,
    agent_id: &str,
    job_id: &str,
) -> Result<HashMap<String, String>, HandlerError> {
    if let Some(k) = user.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
        return Err(invalid(format!(
            "label {k:?} is reserved: Croupier sets the {RESERVED_PREFIX}* labels itself"
        )));
    }
    let mut labels: HashMap<String, String> = user.into_iter().collect();
    labels.insert(AGENT_LABEL.into(), agent_id.into());
    if !job_id.is_empty() {
        labels.insert(JOB_LABEL.into(), job_id.into());
    }
    Ok(labels)
}

impl Spec {
    /// The container name and Docker's create body.
    fn into_body(
        self,
        agent_id: &str,
        job_id: &str,
    ) -> Result<(Option<String>, ContainerCreateBody), HandlerError> {
        non_empty("image", &self.image)?;
        if let Some(name) = &self.name {
            non_empty("name", name)?;
        }
        let labels = croupier_labels(self.labels, agent_id, job_id)?;
        let nano_cpus = match self.cpus {
            Some(c) if !(c > 0.0 && c.is_finite()) => {
                return Err(invalid(format!("cpus must be a positive number, not {c}")));
            }
            Some(c) => Some((c * 1e9).round() as i64),
            None => None,
        };
        if let Some(m) = self.memory_bytes
            && m < 0
        {
            return Err(invalid(format!(
                "memory_bytes must not be negative, not {m}"
            )));
        }
        let host_config = HostConfig {
            network_mode: self.network_mode,
            memory: self.memory_bytes,
            nano_cpus,
            binds: (!self.binds.is_empty()).then_some(self.binds),
            ..Default::default()
        };
        let env = env_list(self.env)?;
        let body = ContainerCreateBody {
            image: Some(self.image),
            cmd: self.cmd,
            entrypoint: self.entrypoint,
            env: (!env.is_empty()).then_some(env),
            labels: Some(labels),
            working_dir: self.working_dir,
            user: self.user,
            host_config: Some(host_config),
            ..Default::default()
        };
        Ok((self.name, body))
    }
}

/// `container.run`'s parameters: a [`Spec`] plus `remove`.
fn run_params(payload: &Value) -> Result<(Spec, bool), HandlerError> {
    let mut payload = if payload.is_null() {
        json!({})
    } else {
        payload.clone()
    };
    let remove = match payload.as_object_mut().and_then(|o| o.remove("remove")) {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(invalid(format!(
                "container.run: remove must be a boolean, not {other}"
            )));
        }
    };
    Ok((params("container.run", &payload)?, remove))
}

fn stop_timeout(function: &str, timeout: Option<i64>) -> Result<Option<i32>, HandlerError> {
    match timeout {
        Some(t) if !(0..=MAX_STOP_SECS).contains(&t) => Err(invalid(format!(
            "{function}: timeout must be 0 to {MAX_STOP_SECS} seconds, not {t}"
        ))),
        Some(t) => Ok(Some(t as i32)),
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Synchronous functions

fn sorted(labels: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    labels.unwrap_or_default().into_iter().collect()
}

fn summary(c: ContainerSummary) -> Value {
    let name = c
        .names
        .and_then(|n| n.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    json!({
        "id": c.id.unwrap_or_default(),
        "name": name,
        "image": c.image.unwrap_or_default(),
        "command": c.command.unwrap_or_default(),
        "created": c.created.unwrap_or_default(),
        "state": c.state.map(|s| s.to_string()).unwrap_or_default(),
        "status": c.status.unwrap_or_default(),
        "labels": sorted(c.labels),
    })
}

async fn list(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let p: ListParams = params("container.list", &call.payload)?;
    let mut labels = p.labels;
    if p.mine {
        if let Some(other) = labels.get(AGENT_LABEL).filter(|v| **v != *ctx.agent_id) {
            return Err(invalid(format!(
                "container.list: mine contradicts {AGENT_LABEL}={other}"
            )));
        }
        labels.insert(AGENT_LABEL.into(), ctx.agent_id.to_string());
    }
    let mut filters = HashMap::new();
    if !labels.is_empty() {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        filters.insert("label".to_string(), wanted);
    }
    let containers = ctx
        .docker
        .list(p.all, filters)
        .await
        .map_err(|e| docker_error("listing containers", Subject::Daemon, e))?;
    let containers: Vec<Value> = containers.into_iter().map(summary).collect();
    Ok(json!({ "containers": containers }))
}

fn inspection(c: ContainerInspectResponse) -> Value {
    let state = c.state.unwrap_or_default();
    let config = c.config.unwrap_or_default();
    json!({
        "id": c.id.unwrap_or_default(),
        "name": c.name.unwrap_or_default().trim_start_matches('/'),
        "image": config.image.unwrap_or_default(),
        "image_id": c.image.unwrap_or_default(),
        "created": serde_json::to_value(&c.created).unwrap_or(Value::Null),
        "state": {
            "status": state.status.map(|s| s.to_string()).unwrap_or_default(),
            "running": state.running.unwrap_or(false),
            "paused": state.paused.unwrap_or(false),
            "restarting": state.restarting.unwrap_or(false),
            "oom_killed": state.oom_killed.unwrap_or(false),
            "dead": state.dead.unwrap_or(false),
            "pid": state.pid.unwrap_or(0),
            "exit_code": state.exit_code.unwrap_or(0),
            "error": state.error.unwrap_or_default(),
            "started_at": state.started_at.unwrap_or_default(),
            "finished_at": state.finished_at.unwrap_or_default(),
        },
        "labels": sorted(config.labels),
        "cmd": config.cmd,
        "entrypoint": config.entrypoint,
        "working_dir": config.working_dir.unwrap_or_default(),
        "user": config.user.unwrap_or_default(),
        "restart_count": c.restart_count.unwrap_or(0),
    })
}

async fn inspect(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let p: Target = params("container.inspect", &call.payload)?;
    non_empty("id", &p.id)?;
    let c = ctx.docker.inspect(&p.id).await.map_err(|e| {
        docker_error(
            &format!("inspecting container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(inspection(c))
}

async fn create(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let spec: Spec = params("container.create", &call.payload)?;
    let image = spec.image.clone();
    let (name, body) = spec.into_body(&ctx.agent_id, "")?;
    let created = ctx
        .docker
        .create(name.as_deref(), body)
        .await
        .map_err(|e| docker_error("creating the container", Subject::Image(&image), e))?;
    Ok(json!({"id": created.id, "warnings": created.warnings}))
}

async fn start(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let p: Target = params("container.start", &call.payload)?;
    non_empty("id", &p.id)?;
    ctx.docker.start(&p.id).await.map_err(|e| {
        docker_error(
            &format!("starting container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(json!({"id": p.id}))
}

async fn stop(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let p: StopParams = params("container.stop", &call.payload)?;
    non_empty("id", &p.id)?;
    let timeout = stop_timeout("container.stop", p.timeout)?;
    ctx.docker.stop(&p.id, timeout).await.map_err(|e| {
        docker_error(
            &format!("stopping container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(json!({"id": p.id}))
}

async fn restart(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let p: StopParams = params("container.restart", &call.payload)?;
    non_empty("id", &p.id)?;
    let timeout = stop_timeout("container.restart", p.timeout)?;
    ctx.docker.restart(&p.id, timeout).await.map_err(|e| {
        docker_error(
            &format!("restarting container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(json!({"id": p.id}))
}

async fn remove(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let p: RemoveParams = params("container.remove", &call.payload)?;
    non_empty("id", &p.id)?;
    ctx.docker
        .remove(&p.id, p.force, p.volumes)
        .await
        .map_err(|e| {
            docker_error(
                &format!("removing container {}", p.id),
                Subject::Container(&p.id),
                e,
            )
        })?;
    Ok(json!({"id": p.id}))
}

/// Output kept up to a limit.
struct Capped {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capped {
    fn new() -> Self {
        Capped {
            bytes: Vec::new(),
            truncated: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let room = MAX_EXEC_OUTPUT.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

async fn exec(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
    let p: ExecParams = params("container.exec", &call.payload)?;
    non_empty("id", &p.id)?;
    if p.cmd.is_empty() {
        return Err(invalid("container.exec: cmd must name a command"));
    }
    let env = env_list(p.env)?;
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(p.cmd),
        env: (!env.is_empty()).then_some(env),
        working_dir: p.working_dir,
        user: p.user,
        ..Default::default()
    };
    let action = format!("running a command in container {}", p.id);
    let fail = |e| docker_error(&action, Subject::Container(&p.id), e);
    let (exec_id, mut output) = ctx.docker.exec(&p.id, config).await.map_err(fail)?;
    let guard = KillOnDrop {
        docker: ctx.docker.clone(),
        exec_id: Some(exec_id.clone()),
    };
    let (mut stdout, mut stderr) = (Capped::new(), Capped::new());
    let read = async {
        while let Some(frame) = output.next().await {
            match frame.map_err(fail)? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.push(&message)
                }
                LogOutput::StdErr { message } => stderr.push(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        Ok::<(), HandlerError>(())
    };
    // Cancelled (e.g. as the step of a cancelled pipeline): the guard kills the command.
    tokio::select! {
        r = read => r?,
        _ = call.cancel.cancelled() => {
            return Err(HandlerError::new(
                "CANCELLED",
                format!("container.exec in {} was cancelled; its command is killed", p.id),
            ));
        }
    }
    let exit_code = exec_exit_code(ctx.docker.as_ref(), &exec_id)
        .await
        .map_err(fail)?;
    guard.disarm();
    Ok(json!({
        "id": p.id,
        "exit_code": exit_code,
        "stdout": stdout.text(),
        "stderr": stderr.text(),
        "truncated": stdout.truncated || stderr.truncated,
    }))
}

/// The exit code of an exec whose output ended. Docker records it a moment after the output
/// ends, so this asks for up to [`EXEC_EXIT_WAIT`]; None when the command still runs then.
async fn exec_exit_code(docker: &dyn DockerApi, exec_id: &str) -> Result<Option<i64>, DockerError> {
    let deadline = tokio::time::Instant::now() + EXEC_EXIT_WAIT;
    loop {
        let (running, code) = docker.exec_status(exec_id).await?;
        if !running || tokio::time::Instant::now() >= deadline {
            return Ok(if running { None } else { code });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Where a job's output goes: a [`JobContext`] in the agent, a recorder in tests.
#[async_trait]
trait Report: Send + Sync {
    /// Reports a `LOG` event with data.
    async fn emit(&self, message: String, data: Value);
}

#[async_trait]
impl Report for JobContext {
    async fn emit(&self, message: String, data: Value) {
        self.data(message, data).await;
    }
}

/// Splits a container's output frames into lines, per stream.
#[derive(Default)]
struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    /// The complete lines (stream, text) that `frame` ends; longer than [`MAX_LINE`] lines are
    /// cut into pieces.
    fn push(&mut self, frame: LogOutput) -> Vec<(&'static str, String)> {
        let (stream, buf, bytes) = match frame {
            LogOutput::StdErr { message } => ("stderr", &mut self.stderr, message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                ("stdout", &mut self.stdout, message)
            }
            LogOutput::StdIn { .. } => return Vec::new(),
        };
        buf.extend_from_slice(&bytes);
        let mut out = Vec::new();
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            out.push((stream, text(&line[..end])));
        }
        while buf.len() >= MAX_LINE {
            let piece: Vec<u8> = buf.drain(..MAX_LINE).collect();
            out.push((stream, text(&piece)));
        }
        out
    }

    /// What is left without a final newline.
    fn finish(&mut self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (stream, buf) in [("stdout", &mut self.stdout), ("stderr", &mut self.stderr)] {
            if !buf.is_empty() {
                out.push((stream, text(buf)));
                buf.clear();
            }
        }
        out
    }
}

fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.strip_suffix('\r').unwrap_or(&s).to_string()
}

/// How streaming a container's output ended.
enum Pumped {
    /// The output ended, after this many lines.
    Ended(u64),
    /// The job was cancelled.
    Cancelled,
}

/// Streams `output` to `out` as one event per line until it ends or `cancel` fires.
async fn pump(
    mut output: LogStream,
    id: &str,
    cancel: &CancellationToken,
    out: &dyn Report,
) -> Result<Pumped, HandlerError> {
    let mut lines = Lines::default();
    let mut count = 0u64;
    loop {
        let frame = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(Pumped::Cancelled),
            frame = output.next() => frame,
        };
        let frame = match frame {
            None => break,
            Some(f) => f.map_err(|e| {
                docker_error(
                    &format!("reading the output of container {id}"),
                    Subject::Container(id),
                    e,
                )
            })?,
        };
        for (stream, line) in lines.push(frame) {
            out.emit(line, json!({"stream": stream})).await;
            count += 1;
        }
    }
    for (stream, line) in lines.finish() {
        out.emit(line, json!({"stream": stream})).await;
        count += 1;
    }
    Ok(Pumped::Ended(count))
}

fn logs_options(follow: bool) -> LogsOptionsBuilder {
    LogsOptionsBuilder::new()
        .follow(follow)
        .stdout(true)
        .stderr(true)
}

async fn logs_job(ctx: Ctx, job: JobContext) -> Result<Value, HandlerError> {
    follow_logs(&ctx, job.payload(), job.cancel(), &job).await
}

/// `container.logs`: the container's output until it ends or the job is cancelled.
async fn follow_logs(
    ctx: &Ctx,
    payload: &Value,
    cancel: &CancellationToken,
    out: &dyn Report,
) -> Result<Value, HandlerError> {
    let p: LogsParams = params("container.logs", payload)?;
    non_empty("id", &p.id)?;
    let mut options = logs_options(p.follow).timestamps(p.timestamps);
    if let Some(tail) = p.tail {
        options = options.tail(&tail.to_string());
    }
    if let Some(since) = p.since {
        let since = i32::try_from(since)
            .map_err(|_| invalid(format!("container.logs: since {since} is out of range")))?;
        options = options.since(since);
    }
    let output = ctx.docker.logs(&p.id, options.build()).await.map_err(|e| {
        docker_error(
            &format!("reading the logs of container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    match pump(output, &p.id, cancel, out).await? {
        Pumped::Ended(lines) => Ok(json!({"id": p.id, "lines": lines})),
        Pumped::Cancelled => Err(HandlerError::new(
            "CANCELLED",
            format!("following the logs of container {} cancelled", p.id),
        )),
    }
}

/// Removes a container `container.run` created unless disarmed: on a failure after creation,
/// on cancel, and, when the handler is dropped before it could clean up (a synchronous call
/// whose caller gave up, or a cancelled job past its grace), from a task spawned on drop.
struct Cleanup {
    docker: Arc<dyn DockerApi>,
    id: String,
    armed: bool,
}

impl Cleanup {
    /// Stops the container (killing it after [`CANCEL_STOP_SECS`]) and removes it.
    async fn stop_and_remove(mut self) -> Result<(), HandlerError> {
        // Removing with force kills it anyway; the stop only gives it a chance to exit cleanly.
        let _ = self.docker.stop(&self.id, Some(CANCEL_STOP_SECS)).await;
        let removed = self.remove_now().await;
        // Disarmed only now: dropped half-way, the guard still removes the container.
        self.armed = false;
        removed
    }

    /// Removes the container (killing it if it runs); one already gone counts as removed.
    async fn remove(mut self) -> Result<(), HandlerError> {
        let removed = self.remove_now().await;
        self.armed = false;
        removed
    }

    async fn remove_now(&self) -> Result<(), HandlerError> {
        match self.docker.remove(&self.id, true, true).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(docker_error(
                &format!("removing container {}", self.id),
                Subject::Container(&self.id),
                e,
            )),
        }
    }

    /// Keeps the container.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(container = %self.id, "cannot remove the container: no runtime");
            return;
        };
        let docker = self.docker.clone();
        let id = std::mem::take(&mut self.id);
        rt.spawn(async move {
            if let Err(e) = docker.remove(&id, true, true).await {
                tracing::warn!(container = %id, error = %e, "removing an abandoned container failed");
            }
        });
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

async fn run_job(ctx: Ctx, job: JobContext) -> Result<Value, HandlerError> {
    run_container(&ctx, job.payload(), job.job_id(), job.cancel(), &job).await
}

/// `container.run`: create, start, stream the output, wait, remove. Cancelled, it stops and
/// removes the container before answering `CANCELLED`.
async fn run_container(
    ctx: &Ctx,
    payload: &Value,
    job_id: &str,
    cancel: &CancellationToken,
    out: &dyn Report,
) -> Result<Value, HandlerError> {
    let (spec, remove) = run_params(payload)?;
    let image = spec.image.clone();
    let (name, body) = spec.into_body(&ctx.agent_id, job_id)?;
    // Not raced against cancel: dropping the request would not stop Docker from creating the
    // container, which would then be left behind.
    let created = ctx
        .docker
        .create(name.as_deref(), body)
        .await
        .map_err(|e| docker_error("creating the container", Subject::Image(&image), e))?;
    let id = created.id;
    let guard = Cleanup {
        docker: ctx.docker.clone(),
        id: id.clone(),
        armed: true,
    };
    out.emit(
        format!("created container {}", short(&id)),
        json!({"container_id": id}),
    )
    .await;
    if cancel.is_cancelled() {
        return cancelled(guard, out).await;
    }
    if let Err(e) = ctx.docker.start(&id).await {
        let e = docker_error(
            &format!("starting container {}", short(&id)),
            Subject::Container(&id),
            e,
        );
        let _ = guard.remove().await;
        return Err(e);
    }
    let output = match ctx.docker.logs(&id, logs_options(true).build()).await {
        Ok(output) => output,
        Err(e) => {
            let e = docker_error(
                &format!("reading the output of container {}", short(&id)),
                Subject::Container(&id),
                e,
            );
            let _ = guard.stop_and_remove().await;
            return Err(e);
        }
    };
    let lines = match pump(output, &id, cancel, out).await {
        Ok(Pumped::Ended(lines)) => lines,
        Ok(Pumped::Cancelled) => return cancelled(guard, out).await,
        Err(e) => {
            let _ = guard.stop_and_remove().await;
            return Err(e);
        }
    };
    let exit_code = tokio::select! {
        biased;
        _ = cancel.cancelled() => return cancelled(guard, out).await,
        r = ctx.docker.wait(&id) => match r {
            Ok(code) => code,
            Err(e) => {
                let e = docker_error(
                    &format!("waiting for container {}", short(&id)),
                    Subject::Container(&id),
                    e,
                );
                let _ = guard.stop_and_remove().await;
                return Err(e);
            }
        },
    };
    if remove {
        guard.remove().await?;
    } else {
        guard.disarm();
    }
    Ok(json!({"id": id, "exit_code": exit_code, "lines": lines, "removed": remove}))
}

/// The cancel path of `container.run`: stop and remove the container, say so, answer CANCELLED.
async fn cancelled(guard: Cleanup, out: &dyn Report) -> Result<Value, HandlerError> {
    let id = guard.id.clone();
    let message = match guard.stop_and_remove().await {
        Ok(()) => format!("cancelled: container {} stopped and removed", short(&id)),
        Err(e) => format!(
            "cancelled: removing container {} failed: {}",
            short(&id),
            e.message
        ),
    };
    out.emit(message.clone(), json!({"container_id": id})).await;
    Err(HandlerError::new("CANCELLED", message))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Mutex, MutexGuard};

    use bollard::models::{ContainerConfig, ContainerState, ContainerStateStatusEnum};

    use super::*;

    fn server(status: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code: status,
            message: message.into(),
        }
    }

    fn refused() -> DockerError {
        DockerError::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }
    }

    struct FakeContainer {
        name: String,
        image: String,
        labels: HashMap<String, String>,
        running: bool,
    }

    #[derive(Default)]
    struct State {
        images: BTreeSet<String>,
        containers: BTreeMap<String, FakeContainer>,
        calls: Vec<String>,
        filters: Vec<(bool, HashMap<String, Vec<String>>)>,
        /// What `logs` and `exec` stream.
        output: Vec<LogOutput>,
        /// `logs` and `exec` output never ends and `wait` never answers.
        hang: bool,
        exit_code: i64,
        /// Every call fails as when the daemon is not running.
        down: bool,
        next: u32,
    }

    /// A Docker daemon in memory: containers with names, labels and a running flag.
    #[derive(Default)]
    struct Fake {
        st: Mutex<State>,
    }

    impl Fake {
        fn with_image(image: &str) -> Arc<Fake> {
            let fake = Fake::default();
            fake.st().images.insert(image.into());
            Arc::new(fake)
        }

        fn st(&self) -> MutexGuard<'_, State> {
            self.st.lock().unwrap()
        }

        fn calls(&self) -> Vec<String> {
            self.st().calls.clone()
        }

        /// Records a call; fails when the daemon is "down".
        fn enter(&self, call: String) -> Result<MutexGuard<'_, State>, DockerError> {
            let mut st = self.st();
            st.calls.push(call);
            if st.down { Err(refused()) } else { Ok(st) }
        }
    }

    /// The id of a container given by id or name.
    fn find(st: &State, id: &str) -> Result<String, DockerError> {
        st.containers
            .iter()
            .find(|(k, c)| *k == id || c.name == id)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| server(404, &format!("No such container: {id}")))
    }

    fn stream(output: Vec<LogOutput>, hang: bool) -> LogStream {
        let items = futures::stream::iter(output.into_iter().map(Ok));
        if hang {
            Box::pin(items.chain(futures::stream::pending()))
        } else {
            Box::pin(items)
        }
    }

    #[async_trait]
    impl DockerApi for Fake {
        async fn list(
            &self,
            all: bool,
            filters: HashMap<String, Vec<String>>,
        ) -> Result<Vec<ContainerSummary>, DockerError> {
            let mut st = self.enter("list".into())?;
            st.filters.push((all, filters.clone()));
            let wanted = filters.get("label").cloned().unwrap_or_default();
            Ok(st
                .containers
                .iter()
                .filter(|(_, c)| all || c.running)
                .filter(|(_, c)| {
                    wanted.iter().all(|w| {
                        let (k, v) = w.split_once('=').unwrap();
                        c.labels.get(k).map(String::as_str) == Some(v)
                    })
                })
                .map(|(id, c)| ContainerSummary {
                    id: Some(id.clone()),
                    names: Some(vec![format!("/{}", c.name)]),
                    image: Some(c.image.clone()),
                    labels: Some(c.labels.clone()),
                    ..Default::default()
                })
                .collect())
        }

        async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, DockerError> {
            let st = self.enter(format!("inspect {id}"))?;
            let id = find(&st, id)?;
            let c = &st.containers[&id];
            Ok(ContainerInspectResponse {
                id: Some(id.clone()),
                name: Some(format!("/{}", c.name)),
                image: Some("sha256:fake".into()),
                state: Some(ContainerState {
                    status: Some(if c.running {
                        ContainerStateStatusEnum::RUNNING
                    } else {
                        ContainerStateStatusEnum::CREATED
                    }),
                    running: Some(c.running),
                    ..Default::default()
                }),
                config: Some(ContainerConfig {
                    image: Some(c.image.clone()),
                    labels: Some(c.labels.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }

        async fn create(
            &self,
            name: Option<&str>,
            body: ContainerCreateBody,
        ) -> Result<ContainerCreateResponse, DockerError> {
            let mut st = self.enter(format!("create {}", name.unwrap_or("-")))?;
            let image = body.image.unwrap_or_default();
            if !st.images.contains(&image) {
                return Err(server(404, &format!("No such image: {image}")));
            }
            st.next += 1;
            let id = format!("{:064x}", st.next);
            let name = name
                .map(str::to_string)
                .unwrap_or_else(|| format!("c{}", st.next));
            if let Some((other, _)) = st.containers.iter().find(|(_, c)| c.name == name) {
                return Err(server(
                    409,
                    &format!(
                        "Conflict. The container name \"/{name}\" is already in use by \
                         container \"{other}\". You have to remove (or rename) that container \
                         to be able to reuse that name."
                    ),
                ));
            }
            st.containers.insert(
                id.clone(),
                FakeContainer {
                    name,
                    image,
                    labels: body.labels.unwrap_or_default(),
                    running: false,
                },
            );
            Ok(ContainerCreateResponse {
                id,
                warnings: Vec::new(),
            })
        }

        async fn start(&self, id: &str) -> Result<(), DockerError> {
            let mut st = self.enter(format!("start {}", short(id)))?;
            let id = find(&st, id)?;
            st.containers.get_mut(&id).unwrap().running = true;
            Ok(())
        }

        async fn stop(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError> {
            let mut st = self.enter(format!("stop {} {timeout_secs:?}", short(id)))?;
            let id = find(&st, id)?;
            st.containers.get_mut(&id).unwrap().running = false;
            Ok(())
        }

        async fn restart(&self, id: &str, timeout_secs: Option<i32>) -> Result<(), DockerError> {
            let mut st = self.enter(format!("restart {} {timeout_secs:?}", short(id)))?;
            let id = find(&st, id)?;
            st.containers.get_mut(&id).unwrap().running = true;
            Ok(())
        }

        async fn remove(&self, id: &str, force: bool, volumes: bool) -> Result<(), DockerError> {
            let mut st = self.enter(format!("remove {} force={force} v={volumes}", short(id)))?;
            let id = find(&st, id)?;
            if st.containers[&id].running && !force {
                return Err(server(
                    409,
                    &format!(
                        "You cannot remove a running container {id}. Stop the container before \
                         attempting removal or force remove"
                    ),
                ));
            }
            st.containers.remove(&id);
            Ok(())
        }

        async fn wait(&self, id: &str) -> Result<i64, DockerError> {
            let hang = {
                let mut st = self.enter(format!("wait {}", short(id)))?;
                let id = find(&st, id)?;
                if !st.hang {
                    st.containers.get_mut(&id).unwrap().running = false;
                }
                st.hang
            };
            if hang {
                futures::future::pending::<()>().await;
            }
            Ok(self.st().exit_code)
        }

        async fn logs(&self, id: &str, options: LogsOptions) -> Result<LogStream, DockerError> {
            let st = self.enter(format!("logs {} follow={}", short(id), options.follow))?;
            find(&st, id)?;
            Ok(stream(st.output.clone(), st.hang))
        }

        async fn exec(
            &self,
            id: &str,
            config: ExecConfig,
        ) -> Result<(String, LogStream), DockerError> {
            let cmd = config.cmd.unwrap_or_default().join(" ");
            let st = self.enter(format!("exec {} {cmd}", short(id)))?;
            let id = find(&st, id)?;
            if !st.containers[&id].running {
                return Err(server(409, &format!("Container {id} is not running")));
            }
            Ok(("exec1".into(), stream(st.output.clone(), st.hang)))
        }

        async fn exec_status(&self, _exec_id: &str) -> Result<(bool, Option<i64>), DockerError> {
            let st = self.enter("exec_status".into())?;
            Ok((false, Some(st.exit_code)))
        }

        async fn kill_exec(&self, exec_id: &str) -> Result<usize, DockerError> {
            drop(self.enter(format!("kill_exec {exec_id}"))?);
            Ok(1)
        }

        async fn version(&self) -> Result<SystemVersion, DockerError> {
            drop(self.enter("version".into())?);
            Ok(SystemVersion {
                version: Some("99.0.0-fake".into()),
                api_version: Some("1.41".into()),
                ..Default::default()
            })
        }
    }

    /// Job events recorded in memory.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Value)>>);

    #[async_trait]
    impl Report for Recorder {
        async fn emit(&self, message: String, data: Value) {
            self.0.lock().unwrap().push((message, data));
        }
    }

    impl Recorder {
        /// The output lines reported, as (stream, line).
        fn lines(&self) -> Vec<(String, String)> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(m, d)| Some((d["stream"].as_str()?.to_string(), m.clone())))
                .collect()
        }
    }

    const IMAGE: &str = "croupier-test/busybox:latest";

    fn ctx(fake: &Arc<Fake>) -> Ctx {
        Ctx {
            docker: fake.clone(),
            agent_id: "a1".into(),
        }
    }

    fn call(payload: Value) -> Invocation {
        Invocation {
            request_id: "r1".into(),
            function_id: String::new(),
            payload,
            caller: "spiffe://croupier/client/c1".into(),
            game_id: "g".into(),
            env: "e".into(),
            idempotency_key: String::new(),
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
            cancel: CancellationToken::new(),
        }
    }

    fn out(bytes: &str) -> LogOutput {
        LogOutput::StdOut {
            message: bytes.to_string().into(),
        }
    }

    fn err(bytes: &str) -> LogOutput {
        LogOutput::StdErr {
            message: bytes.to_string().into(),
        }
    }

    fn descriptors() -> Vec<FunctionDescriptor> {
        vec![
            list_descriptor(),
            inspect_descriptor(),
            create_descriptor(),
            start_descriptor(),
            stop_descriptor(),
            restart_descriptor(),
            remove_descriptor(),
            exec_descriptor(),
            logs_descriptor(),
            run_descriptor(),
        ]
    }

    fn schema(d: &FunctionDescriptor, result: bool) -> Value {
        let s = if result {
            &d.result_schema
        } else {
            &d.params_schema
        };
        croupier_proto::json::opt_struct_to_json(s.as_ref())
    }

    #[test]
    fn descriptors_are_container_functions_with_valid_schemas() {
        let all = descriptors();
        let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "container.list",
                "container.inspect",
                "container.create",
                "container.start",
                "container.stop",
                "container.restart",
                "container.remove",
                "container.exec",
                "container.logs",
                "container.run"
            ]
        );
        for d in &all {
            assert_eq!(d.category, "container", "{}", d.id);
            let sem = d.semantics.clone().unwrap();
            assert!(sem.timeout > 0, "{}", d.id);
            let query = ["container.list", "container.inspect", "container.logs"];
            assert_eq!(
                sem.kind == "query",
                query.contains(&d.id.as_str()),
                "{}",
                d.id
            );
            if sem.kind == "query" {
                assert!(sem.idempotent, "{}", d.id);
            }
            for result in [false, true] {
                jsonschema::validator_for(&schema(d, result))
                    .unwrap_or_else(|e| panic!("{} schema invalid: {e}", d.id));
            }
        }
        let create = jsonschema::validator_for(&schema(&create_descriptor(), false)).unwrap();
        assert!(create.is_valid(&json!({"image": IMAGE, "labels": {"team": "x"}})));
        assert!(!create.is_valid(&json!({"name": "x"})), "image is required");
        assert!(!create.is_valid(&json!({"image": IMAGE, "labels": {"croupier.job": "x"}})));
        assert!(!create.is_valid(&json!({"image": IMAGE, "bogus": 1})));
        let run = jsonschema::validator_for(&schema(&run_descriptor(), false)).unwrap();
        assert!(run.is_valid(&json!({"image": IMAGE, "cmd": ["true"], "remove": false})));
    }

    #[test]
    fn descriptions_say_when_docker_is_unavailable() {
        let d = with_note(
            list_descriptor(),
            Some("Docker is not running (no Docker socket at /x)"),
        );
        assert!(
            d.description
                .contains("Docker is unavailable on this agent: Docker is not running (no Docker socket at /x)"),
            "{}",
            d.description
        );
        assert_eq!(with_note(list_descriptor(), None), list_descriptor());
    }

    #[test]
    fn docker_errors_map_to_clear_codes() {
        let e = docker_error(
            "creating the container",
            Subject::Image("nope:1"),
            server(404, "No such image: nope:1"),
        );
        assert_eq!(e.code, "NOT_FOUND");
        assert!(
            e.message
                .starts_with("image nope:1 not found locally; it cannot be pulled here"),
            "{}",
            e.message
        );
        let e = docker_error(
            "inspecting container x",
            Subject::Container("x"),
            server(404, "No such container: x"),
        );
        assert_eq!(e.code, "NOT_FOUND");
        assert!(
            e.message.starts_with("no such container x on this agent"),
            "{}",
            e.message
        );
        let e = docker_error(
            "creating the container",
            Subject::Image("img"),
            server(
                409,
                "Conflict. The container name \"/web\" is already in use by container \"abc\".",
            ),
        );
        assert_eq!(e.code, "ALREADY_EXISTS");
        assert!(
            e.message.contains("\"/web\" is already in use"),
            "{}",
            e.message
        );
        let e = docker_error(
            "removing container x",
            Subject::Container("x"),
            server(409, "You cannot remove a running container x."),
        );
        assert_eq!(e.code, "FAILED_PRECONDITION");
        assert_eq!(
            e.message,
            "removing container x: You cannot remove a running container x."
        );
        let e = docker_error(
            "creating the container",
            Subject::Image("i"),
            server(400, "invalid mount"),
        );
        assert_eq!(e.code, "INVALID_ARGUMENT");
        let e = docker_error(
            "listing containers",
            Subject::Daemon,
            server(403, "authz denied"),
        );
        assert_eq!(e.code, "PERMISSION_DENIED");
        let e = docker_error("listing containers", Subject::Daemon, server(500, "boom"));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("INTERNAL", "listing containers: Docker answered 500: boom")
        );

        // Docker not running: no socket, or nobody listening on it.
        let e = docker_error(
            "listing containers",
            Subject::Daemon,
            DockerError::SocketNotFoundError("/var/run/docker.sock".into()),
        );
        assert_eq!(e.code, "UNAVAILABLE");
        assert_eq!(
            e.message,
            "Docker is not running (no Docker socket at /var/run/docker.sock)"
        );
        let e = docker_error("listing containers", Subject::Daemon, refused());
        assert_eq!(e.code, "UNAVAILABLE");
        assert!(
            e.message
                .starts_with("Docker is not running (cannot connect to "),
            "{}",
            e.message
        );
        let e = docker_error(
            "listing containers",
            Subject::Daemon,
            DockerError::IOError {
                err: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
        );
        assert_eq!(e.code, "PERMISSION_DENIED");
        assert!(e.message.contains("docker group"), "{}", e.message);
        let e = docker_error(
            "stopping container x",
            Subject::Container("x"),
            DockerError::RequestTimeoutError,
        );
        assert_eq!(e.code, "UNAVAILABLE");
        assert!(
            e.message.contains("while stopping container x"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_maximum_api_version_is_read_from_dockers_refusal() {
        let v = max_api_version(
            "client version 1.53 is too new. Maximum supported API version is 1.41",
        )
        .unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(max_api_version("page not found").is_none());
    }

    #[tokio::test]
    async fn created_containers_carry_the_agent_label_and_reserved_labels_are_refused() {
        let fake = Fake::with_image(IMAGE);
        let r = create(
            ctx(&fake),
            call(
                json!({"image": IMAGE, "name": "web", "labels": {"team": "x"}, "env": {"A": "1"}}),
            ),
        )
        .await
        .unwrap();
        let id = r["id"].as_str().unwrap().to_string();
        {
            let st = fake.st();
            let labels = &st.containers[&id].labels;
            assert_eq!(labels.get(AGENT_LABEL).map(String::as_str), Some("a1"));
            assert_eq!(labels.get("team").map(String::as_str), Some("x"));
            assert!(!labels.contains_key(JOB_LABEL), "not made by a job");
        }
        let e = create(
            ctx(&fake),
            call(json!({"image": IMAGE, "labels": {"croupier.agent": "someone-else"}})),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "INVALID_ARGUMENT");
        assert!(
            e.message.contains("\"croupier.agent\" is reserved"),
            "{}",
            e.message
        );
        // Same name again: ALREADY_EXISTS.
        let e = create(ctx(&fake), call(json!({"image": IMAGE, "name": "web"})))
            .await
            .unwrap_err();
        assert_eq!(e.code, "ALREADY_EXISTS", "{e:?}");
        // Unknown image.
        let e = create(ctx(&fake), call(json!({"image": "nope/nope:1"})))
            .await
            .unwrap_err();
        assert_eq!(e.code, "NOT_FOUND");
        assert!(
            e.message.starts_with("image nope/nope:1 not found locally"),
            "{}",
            e.message
        );
        // Unknown fields and bad values are refused before Docker is asked.
        let calls = fake.calls().len();
        for bad in [
            json!({"image": IMAGE, "bogus": 1}),
            json!({"image": ""}),
            json!({"image": IMAGE, "cpus": 0}),
            json!({"image": IMAGE, "env": {"A=B": "1"}}),
        ] {
            let e = create(ctx(&fake), call(bad.clone())).await.unwrap_err();
            assert_eq!(e.code, "INVALID_ARGUMENT", "{bad}: {e:?}");
        }
        assert_eq!(fake.calls().len(), calls);
    }

    #[tokio::test]
    async fn list_filters_on_labels_and_mine() {
        let fake = Fake::with_image(IMAGE);
        let mine = create(
            ctx(&fake),
            call(json!({"image": IMAGE, "labels": {"team": "x"}})),
        )
        .await
        .unwrap();
        let theirs = Ctx {
            docker: fake.clone(),
            agent_id: "a2".into(),
        };
        create(
            theirs,
            call(json!({"image": IMAGE, "labels": {"team": "x"}})),
        )
        .await
        .unwrap();

        let r = list(
            ctx(&fake),
            call(json!({"all": true, "labels": {"team": "x"}, "mine": true})),
        )
        .await
        .unwrap();
        let found: Vec<&str> = r["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(found, [mine["id"].as_str().unwrap()]);
        assert_eq!(r["containers"][0]["labels"]["croupier.agent"], "a1");
        let (all, filters) = fake.st().filters.last().cloned().unwrap();
        assert!(all);
        assert_eq!(filters["label"], ["croupier.agent=a1", "team=x"]);

        // Without `all`, only running ones; without filters, no filter is sent.
        let r = list(ctx(&fake), call(json!({}))).await.unwrap();
        assert_eq!(r["containers"], json!([]));
        let (all, filters) = fake.st().filters.last().cloned().unwrap();
        assert!(!all);
        assert!(filters.is_empty());
        let r = list(ctx(&fake), call(Value::Null)).await.unwrap();
        assert_eq!(r["containers"], json!([]));
        let e = list(
            ctx(&fake),
            call(json!({"mine": true, "labels": {"croupier.agent": "a2"}})),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "INVALID_ARGUMENT");
    }

    /// Waits up to a second for `call` to be made (by a task spawned on drop).
    async fn assert_called_soon(fake: &Fake, call: &str) {
        for _ in 0..100 {
            if fake.calls().iter().any(|c| c == call) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{call} was not called: {:?}", fake.calls());
    }

    #[tokio::test]
    async fn lifecycle_and_exec_through_the_fake() {
        let fake = Fake::with_image(IMAGE);
        let id = create(ctx(&fake), call(json!({"image": IMAGE, "name": "box"})))
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        // exec in a container that does not run: FAILED_PRECONDITION.
        let e = exec(ctx(&fake), call(json!({"id": "box", "cmd": ["true"]})))
            .await
            .unwrap_err();
        assert_eq!(e.code, "FAILED_PRECONDITION", "{e:?}");
        start(ctx(&fake), call(json!({"id": "box"}))).await.unwrap();
        let i = inspect(ctx(&fake), call(json!({"id": "box"})))
            .await
            .unwrap();
        assert_eq!(i["id"], id);
        assert_eq!(i["name"], "box");
        assert_eq!(i["state"]["running"], true);
        assert_eq!(i["state"]["status"], "running");
        assert_eq!(i["labels"]["croupier.agent"], "a1");

        {
            let mut st = fake.st();
            st.output = vec![out("hi\n"), err("oops\n")];
            st.exit_code = 3;
        }
        let r = exec(
            ctx(&fake),
            call(json!({"id": "box", "cmd": ["sh", "-c", "x"]})),
        )
        .await
        .unwrap();
        assert_eq!(
            r,
            json!({"id": "box", "exit_code": 3, "stdout": "hi\n", "stderr": "oops\n", "truncated": false})
        );

        // An exec whose call is dropped before the command ends (deadline, cancel) is killed;
        // one that ended is not.
        assert!(!fake.calls().iter().any(|c| c.starts_with("kill_exec")));
        fake.st().hang = true;
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            exec(
                ctx(&fake),
                call(json!({"id": "box", "cmd": ["sleep", "300"]})),
            ),
        )
        .await;
        assert!(dropped.is_err(), "the exec hangs until dropped");
        assert_called_soon(&fake, "kill_exec exec1").await;
        // Cancelling the call (a pipeline step) ends it CANCELLED and kills the command too.
        fake.st().calls.clear();
        let cancelled = call(json!({"id": "box", "cmd": ["sleep", "300"]}));
        let token = cancelled.cancel.clone();
        let running = tokio::spawn(exec(ctx(&fake), cancelled));
        tokio::time::sleep(Duration::from_millis(20)).await;
        token.cancel();
        let e = running.await.unwrap().unwrap_err();
        assert_eq!(e.code, "CANCELLED", "{e:?}");
        assert_called_soon(&fake, "kill_exec exec1").await;
        fake.st().hang = false;

        // Removing a running container needs force.
        let e = remove(ctx(&fake), call(json!({"id": "box"})))
            .await
            .unwrap_err();
        assert_eq!(e.code, "FAILED_PRECONDITION");
        let e = stop(ctx(&fake), call(json!({"id": "box", "timeout": 301})))
            .await
            .unwrap_err();
        assert_eq!(e.code, "INVALID_ARGUMENT");
        stop(ctx(&fake), call(json!({"id": "box", "timeout": 1})))
            .await
            .unwrap();
        restart(ctx(&fake), call(json!({"id": "box"})))
            .await
            .unwrap();
        remove(ctx(&fake), call(json!({"id": "box", "force": true})))
            .await
            .unwrap();
        assert!(fake.st().containers.is_empty());
        assert!(fake.calls().contains(&"stop box Some(1)".to_string()));
        let e = inspect(ctx(&fake), call(json!({"id": "box"})))
            .await
            .unwrap_err();
        assert_eq!(e.code, "NOT_FOUND");
        assert!(
            e.message.starts_with("no such container box"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn docker_down_answers_unavailable() {
        let fake = Fake::with_image(IMAGE);
        fake.st().down = true;
        let e = list(ctx(&fake), call(json!({}))).await.unwrap_err();
        assert_eq!(e.code, "UNAVAILABLE");
        assert!(
            e.message.starts_with("Docker is not running ("),
            "{}",
            e.message
        );
        let rec = Recorder::default();
        let e = run_container(
            &ctx(&fake),
            &json!({"image": IMAGE}),
            "j1",
            &CancellationToken::new(),
            &rec,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "UNAVAILABLE");
    }

    #[test]
    fn output_is_split_into_lines_per_stream() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(out("a\nb")), [("stdout", "a".to_string())]);
        assert_eq!(lines.push(err("e1\r\n")), [("stderr", "e1".to_string())]);
        assert_eq!(
            lines.push(out("c\nd\n")),
            [("stdout", "bc".to_string()), ("stdout", "d".to_string())]
        );
        assert!(lines.push(out("tail")).is_empty());
        assert_eq!(lines.finish(), [("stdout", "tail".to_string())]);
        assert!(lines.finish().is_empty());
        let long = "x".repeat(MAX_LINE + 5);
        let pieces = lines.push(out(&long));
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].1.len(), MAX_LINE);
        assert_eq!(lines.finish(), [("stdout", "xxxxx".to_string())]);
    }

    #[tokio::test]
    async fn run_streams_lines_labels_the_job_and_reports_the_exit_code() {
        let fake = Fake::with_image(IMAGE);
        {
            let mut st = fake.st();
            st.output = vec![out("hello\n"), err("err\n"), out("bye")];
            st.exit_code = 3;
        }
        let rec = Recorder::default();
        let r = run_container(
            &ctx(&fake),
            &json!({"image": IMAGE, "cmd": ["sh", "-c", "exit 3"], "remove": false}),
            "job-1",
            &CancellationToken::new(),
            &rec,
        )
        .await
        .unwrap();
        assert_eq!(r["exit_code"], 3);
        assert_eq!(r["lines"], 3);
        assert_eq!(r["removed"], false);
        assert_eq!(
            rec.lines(),
            [
                ("stdout".to_string(), "hello".to_string()),
                ("stderr".to_string(), "err".to_string()),
                ("stdout".to_string(), "bye".to_string()),
            ]
        );
        let id = r["id"].as_str().unwrap();
        {
            let st = fake.st();
            let labels = &st.containers[id].labels;
            assert_eq!(labels[AGENT_LABEL], "a1");
            assert_eq!(labels[JOB_LABEL], "job-1");
        }
        // By default the container is removed once it ended.
        let r = run_container(
            &ctx(&fake),
            &json!({"image": IMAGE}),
            "job-2",
            &CancellationToken::new(),
            &rec,
        )
        .await
        .unwrap();
        assert_eq!(r["removed"], true);
        assert!(!fake.st().containers.contains_key(r["id"].as_str().unwrap()));
        // An unknown image: NOT_FOUND, and nothing was created.
        let e = run_container(
            &ctx(&fake),
            &json!({"image": "nope:1"}),
            "job-3",
            &CancellationToken::new(),
            &rec,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "NOT_FOUND");
        assert_eq!(fake.st().containers.len(), 1);
    }

    #[tokio::test]
    async fn cancelling_run_stops_and_removes_the_container() {
        let fake = Fake::with_image(IMAGE);
        {
            let mut st = fake.st();
            st.output = vec![out("started\n")];
            st.hang = true;
        }
        let cancel = CancellationToken::new();
        let rec = Arc::new(Recorder::default());
        let task = {
            let (fake, cancel, rec) = (fake.clone(), cancel.clone(), rec.clone());
            tokio::spawn(async move {
                run_container(
                    &ctx(&fake),
                    &json!({"image": IMAGE, "cmd": ["sleep", "300"]}),
                    "job-9",
                    &cancel,
                    rec.as_ref(),
                )
                .await
            })
        };
        // Wait until it streams, then cancel.
        let t = tokio::time::Instant::now();
        while rec.lines().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5), "no output streamed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(fake.st().containers.len(), 1);
        cancel.cancel();
        let e = task.await.unwrap().unwrap_err();
        assert_eq!(e.code, "CANCELLED");
        assert!(e.message.contains("stopped and removed"), "{}", e.message);
        assert!(fake.st().containers.is_empty(), "container left behind");
        let calls = fake.calls();
        let stop_at = calls.iter().position(|c| c.starts_with("stop ")).unwrap();
        assert!(
            calls[stop_at].ends_with(&format!("Some({CANCEL_STOP_SECS})")),
            "{calls:?}"
        );
        assert!(
            calls[stop_at + 1].starts_with("remove ") && calls[stop_at + 1].contains("force=true"),
            "{calls:?}"
        );
        // The last event says what happened.
        let last = rec.0.lock().unwrap().last().cloned().unwrap();
        assert!(last.0.starts_with("cancelled: container"), "{last:?}");

        // Cancelled before it started: removed as well, never started.
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = run_container(
            &ctx(&fake),
            &json!({"image": IMAGE}),
            "job-10",
            &cancel,
            rec.as_ref(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "CANCELLED");
        assert!(fake.st().containers.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_run_still_removes_its_container() {
        let fake = Fake::with_image(IMAGE);
        fake.st().hang = true;
        let rec = Recorder::default();
        let cancel = CancellationToken::new();
        // A synchronous caller that gives up drops the handler.
        let dropped = tokio::time::timeout(
            Duration::from_millis(100),
            run_container(&ctx(&fake), &json!({"image": IMAGE}), "", &cancel, &rec),
        )
        .await;
        assert!(dropped.is_err());
        let t = tokio::time::Instant::now();
        while !fake.st().containers.is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "container left behind"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn logs_stream_until_the_output_ends_or_the_job_is_cancelled() {
        let fake = Fake::with_image(IMAGE);
        let id = create(ctx(&fake), call(json!({"image": IMAGE})))
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        fake.st().output = vec![out("one\ntwo\n")];
        let rec = Recorder::default();
        let r = follow_logs(
            &ctx(&fake),
            &json!({"id": id}),
            &CancellationToken::new(),
            &rec,
        )
        .await
        .unwrap();
        assert_eq!(r["lines"], 2);
        assert_eq!(rec.lines().len(), 2);
        assert!(
            fake.calls()
                .contains(&format!("logs {} follow=true", short(&id)))
        );

        fake.st().hang = true;
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        });
        let e = follow_logs(
            &ctx(&fake),
            &json!({"id": id, "follow": true}),
            &cancel,
            &rec,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "CANCELLED");

        let e = follow_logs(
            &ctx(&fake),
            &json!({"id": "nope"}),
            &CancellationToken::new(),
            &rec,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, "NOT_FOUND");
    }

    fn require_docker() -> bool {
        std::env::var("CROUPIER_REQUIRE_DOCKER").as_deref() == Ok("1")
    }

    /// The real client against this host's daemon, whatever its API version (skipped without
    /// Docker unless CROUPIER_REQUIRE_DOCKER=1).
    #[tokio::test]
    async fn local_docker_negotiates_with_this_daemon() {
        let docker = LocalDocker::new();
        if let Err(e) = docker.list(true, HashMap::new()).await {
            let e = docker_error("listing containers", Subject::Daemon, e);
            assert!(
                !require_docker(),
                "Docker is required (CROUPIER_REQUIRE_DOCKER=1): {e}"
            );
            eprintln!("skipping: {e}");
            assert!(probe().is_some());
            return;
        }
        assert_eq!(probe(), None);
        let e = docker
            .inspect("croupier-no-such-container")
            .await
            .unwrap_err();
        let e = docker_error(
            "inspecting",
            Subject::Container("croupier-no-such-container"),
            e,
        );
        assert_eq!(e.code, "NOT_FOUND", "{e:?}");
    }
}
