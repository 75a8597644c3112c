//! The synchronous functions: `container.list`, `container.inspect`, `container.create`,
//! `container.start`, `container.stop`, `container.restart`, `container.remove` and
//! `container.exec`. An exec whose call is dropped or cancelled before its command ended is
//! killed ([`KillOnDrop`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::models::{ContainerInspectResponse, ContainerSummary, ExecConfig};
use croupier_sdk::tls::error_chain;
use croupier_sdk::{HandlerError, Invocation};
use futures::StreamExt;
use serde_json::{Value, json};

use super::docker::{DockerApi, exec_exit_code};
use super::error::{Subject, docker_error, invalid};
use super::params::{
    ExecParams, ListParams, RemoveParams, Spec, StopParams, Target, env_list, non_empty, params,
    stop_timeout,
};
use super::{AGENT_LABEL, Ctx};

/// Most bytes of stdout (and of stderr) `container.exec` returns.
const MAX_EXEC_OUTPUT: usize = 1 << 20;

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

pub(super) async fn list(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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

pub(super) async fn inspect(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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

pub(super) async fn create(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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

pub(super) async fn start(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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

pub(super) async fn stop(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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

pub(super) async fn restart(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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

pub(super) async fn remove(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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

pub(super) async fn exec(ctx: Ctx, call: Invocation) -> Result<Value, HandlerError> {
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
