//! The synchronous functions: `container.list`, `container.inspect`, `container.create`,
//! `container.start`, `container.stop`, `container.restart`, `container.remove` and
//! `container.exec`. An exec whose call is dropped or cancelled before its command ended is
//! killed ([`KillOnDrop`]).

use std::collections::HashMap;
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::models::ExecConfig;
use croupier_sdk::tls::error_chain;
use croupier_sdk::{HandlerError, Invocation};
use futures::StreamExt;

use super::docker::{DockerApi, exec_exit_code};
use super::error::{Subject, docker_error, invalid};
use super::params::{
    ExecParams, ListParams, RemoveParams, Spec, StopParams, Target, env_list, non_empty,
    stop_timeout,
};
use super::results::{Acted, Created, Executed, Inspection, Listed, Summary};
use super::{AGENT_LABEL, Ctx};

/// Most bytes of stdout (and of stderr) `container.exec` returns.
const MAX_EXEC_OUTPUT: usize = 1 << 20;

pub(super) async fn list(ctx: Ctx, p: ListParams, _: Invocation) -> Result<Listed, HandlerError> {
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
    Ok(Listed {
        containers: containers.into_iter().map(Summary::from).collect(),
    })
}

pub(super) async fn inspect(
    ctx: Ctx,
    p: Target,
    _: Invocation,
) -> Result<Inspection, HandlerError> {
    non_empty("id", &p.id)?;
    let c = ctx.docker.inspect(&p.id).await.map_err(|e| {
        docker_error(
            &format!("inspecting container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(Inspection::from(c))
}

pub(super) async fn create(ctx: Ctx, spec: Spec, _: Invocation) -> Result<Created, HandlerError> {
    let image = spec.image.clone();
    let (name, body) = spec.into_body(&ctx.agent_id, "")?;
    let created = ctx
        .docker
        .create(name.as_deref(), body)
        .await
        .map_err(|e| docker_error("creating the container", Subject::Image(&image), e))?;
    Ok(Created {
        id: created.id,
        warnings: created.warnings,
    })
}

pub(super) async fn start(ctx: Ctx, p: Target, _: Invocation) -> Result<Acted, HandlerError> {
    non_empty("id", &p.id)?;
    ctx.docker.start(&p.id).await.map_err(|e| {
        docker_error(
            &format!("starting container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(Acted { id: p.id })
}

pub(super) async fn stop(ctx: Ctx, p: StopParams, _: Invocation) -> Result<Acted, HandlerError> {
    non_empty("id", &p.id)?;
    let timeout = stop_timeout("container.stop", p.timeout)?;
    ctx.docker.stop(&p.id, timeout).await.map_err(|e| {
        docker_error(
            &format!("stopping container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(Acted { id: p.id })
}

pub(super) async fn restart(ctx: Ctx, p: StopParams, _: Invocation) -> Result<Acted, HandlerError> {
    non_empty("id", &p.id)?;
    let timeout = stop_timeout("container.restart", p.timeout)?;
    ctx.docker.restart(&p.id, timeout).await.map_err(|e| {
        docker_error(
            &format!("restarting container {}", p.id),
            Subject::Container(&p.id),
            e,
        )
    })?;
    Ok(Acted { id: p.id })
}

pub(super) async fn remove(
    ctx: Ctx,
    p: RemoveParams,
    _: Invocation,
) -> Result<Acted, HandlerError> {
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
    Ok(Acted { id: p.id })
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

pub(super) async fn exec(
    ctx: Ctx,
    p: ExecParams,
    call: Invocation,
) -> Result<Executed, HandlerError> {
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
                    stdout.push(&message);
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
    Ok(Executed {
        id: p.id,
        exit_code,
        stdout: stdout.text(),
        stderr: stderr.text(),
        truncated: stdout.truncated || stderr.truncated,
    })
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
                    tracing::warn!(exec_id, error = %error_chain(&e), "a cancelled exec could not be killed; it goes on in its container");
                }
            }
        });
    }
}
