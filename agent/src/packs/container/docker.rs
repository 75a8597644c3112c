//! The Docker operations the pack uses, behind a small trait so that unit tests can fake the
//! daemon: [`DockerApi`], and [`LocalDocker`], its implementation for the local daemon through
//! one bollard client, which connects on first use and again after a failed attempt,
//! negotiating the API version down to what the daemon speaks. [`probe`] asks the daemon once,
//! at startup, whether it answers.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, ContainerCreateResponse, ContainerInspectResponse, ContainerSummary,
    EventMessage, ExecConfig, SystemVersion,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder, LogsOptions,
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures::{Stream, StreamExt};

use super::error::{Subject, docker_error};
use super::procs;

/// Where the Docker socket is when `DOCKER_HOST` does not name a `unix://` one.
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// bollard's per-request timeout (until the response headers). Above the longest `stop`.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(330);
/// How long the startup probe waits for Docker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `container.exec` waits for Docker to record the exit code after the output ends.
const EXEC_EXIT_WAIT: Duration = Duration::from_secs(2);

/// A container's output: frames of stdout / stderr, ending when the output does.
pub(crate) type LogStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Docker's event stream: container lifecycle events as they happen.
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<EventMessage, DockerError>> + Send>>;

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
    /// Container events from `since_secs` (Unix seconds; None: from now) on, until the
    /// connection ends.
    async fn events(&self, since_secs: Option<i64>) -> Result<EventStream, DockerError>;
    /// One container's CPU use (percent of one CPU, over Docker's ~1 s sample) and memory
    /// use (bytes, page cache left out).
    async fn usage(&self, id: &str) -> Result<(f64, u64), DockerError>;
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
pub(super) fn socket_addr() -> String {
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
pub(super) fn max_api_version(message: &str) -> Option<ClientVersion> {
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

    async fn usage(&self, id: &str) -> Result<(f64, u64), DockerError> {
        let options = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: false,
        };
        let mut stats = self.client().await?.stats(id, Some(options));
        let s = stats
            .next()
            .await
            .ok_or_else(|| DockerError::DockerStreamError {
                error: format!("Docker sent no stats for container {id}"),
            })??;
        Ok(usage_of(&s))
    }

    async fn events(&self, since_secs: Option<i64>) -> Result<EventStream, DockerError> {
        let mut options =
            EventsOptionsBuilder::new().filters(&HashMap::from([("type", vec!["container"])]));
        if let Some(since) = since_secs {
            options = options.since(&since.to_string());
        }
        Ok(Box::pin(self.client().await?.events(Some(options.build()))))
    }
}

/// The exit code of an exec whose output ended. Docker records it a moment after the output
/// ends, so this asks for up to [`EXEC_EXIT_WAIT`]; None when the command still runs then.
pub(super) async fn exec_exit_code(
    docker: &dyn DockerApi,
    exec_id: &str,
) -> Result<Option<i64>, DockerError> {
    let deadline = tokio::time::Instant::now() + EXEC_EXIT_WAIT;
    loop {
        let (running, code) = docker.exec_status(exec_id).await?;
        if !running || tokio::time::Instant::now() >= deadline {
            return Ok(if running { None } else { code });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU percent (of one CPU) and memory bytes from one stats answer, as `docker stats` computes
/// them: the CPU time used between Docker's two readings over the host's, times the CPUs;
/// memory without the page cache (`inactive_file`).
pub(super) fn usage_of(s: &bollard::models::ContainerStatsResponse) -> (f64, u64) {
    let total = |c: &Option<bollard::models::ContainerCpuStats>| {
        let c = c.as_ref();
        (
            c.and_then(|c| c.cpu_usage.as_ref())
                .and_then(|u| u.total_usage)
                .unwrap_or(0),
            c.and_then(|c| c.system_cpu_usage).unwrap_or(0),
        )
    };
    let (cpu, system) = total(&s.cpu_stats);
    let (pre_cpu, pre_system) = total(&s.precpu_stats);
    let cpus = s
        .cpu_stats
        .as_ref()
        .and_then(|c| c.online_cpus)
        .unwrap_or(1)
        .max(1);
    let (d_cpu, d_system) = (
        cpu.saturating_sub(pre_cpu),
        system.saturating_sub(pre_system),
    );
    let percent = if d_system == 0 {
        0.0
    } else {
        d_cpu as f64 / d_system as f64 * f64::from(cpus) * 100.0
    };
    let memory = s.memory_stats.as_ref().map_or(0, |m| {
        let cache = m
            .stats
            .as_ref()
            .and_then(|st| {
                st.get("inactive_file")
                    .or_else(|| st.get("total_inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        m.usage.unwrap_or(0).saturating_sub(cache)
    });
    (percent, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maximum_api_version_is_read_from_dockers_refusal() {
        let v = max_api_version(
            "client version 1.53 is too new. Maximum supported API version is 1.41",
        )
        .unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(max_api_version("page not found").is_none());
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

    #[test]
    fn usage_is_computed_as_docker_stats_does() {
        let s: bollard::models::ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 300_000_000u64}, "system_cpu_usage": 2_000_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 100_000_000u64}, "system_cpu_usage": 1_000_000_000u64},
            "memory_stats": {"usage": 10_000_000u64, "stats": {"inactive_file": 4_000_000u64}}
        }))
        .unwrap();
        let (cpu, memory) = usage_of(&s);
        assert!((cpu - 40.0).abs() < 1e-9, "{cpu}");
        assert_eq!(memory, 6_000_000);
    }
}
