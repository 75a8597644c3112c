//! The jobs: `container.logs` streams a container's output as `LOG` events, one per line;
//! `container.run` creates a container, streams its output, waits for it and removes it, and
//! cleans up ([`Cleanup`]) however it ends: failed, cancelled or dropped.

use std::sync::Arc;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::LogsOptionsBuilder;
use croupier_sdk::{HandlerError, JobContext};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::docker::{DockerApi, LogStream};
use super::error::{Subject, docker_error, invalid};
use super::params::{LogsParams, RunParams, non_empty};
use super::results::{Logged, Ran};

/// Seconds a cancelled `container.run` gives its container to stop before it is killed.
pub(super) const CANCEL_STOP_SECS: i32 = 2;
/// Longest log line sent as one event; longer lines are split.
pub(super) const MAX_LINE: usize = 16 * 1024;

/// Where a job's output goes: a [`JobContext`] in the agent, a recorder in tests.
#[async_trait]
pub(super) trait Report: Send + Sync {
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
pub(super) struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    /// The complete lines (stream, text) that `frame` ends; longer than [`MAX_LINE`] lines are
    /// cut into pieces.
    pub(super) fn push(&mut self, frame: LogOutput) -> Vec<(&'static str, String)> {
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
    pub(super) fn finish(&mut self) -> Vec<(&'static str, String)> {
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

pub(super) async fn logs_job(
    ctx: Ctx,
    p: LogsParams,
    job: JobContext,
) -> Result<Logged, HandlerError> {
    follow_logs(&ctx, p, job.cancel(), &job).await
}

/// `container.logs`: the container's output until it ends or the job is cancelled.
pub(super) async fn follow_logs(
    ctx: &Ctx,
    p: LogsParams,
    cancel: &CancellationToken,
    out: &dyn Report,
) -> Result<Logged, HandlerError> {
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
        Pumped::Ended(lines) => Ok(Logged { id: p.id, lines }),
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
            Ok(())
            | Err(DockerError::DockerResponseServerError {
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

pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub(super) async fn run_job(ctx: Ctx, p: RunParams, job: JobContext) -> Result<Ran, HandlerError> {
    run_container(&ctx, p, job.job_id(), job.cancel(), &job).await
}

/// `container.run`: create, start, stream the output, wait, remove. Cancelled, it stops and
/// removes the container before answering `CANCELLED`.
pub(super) async fn run_container(
    ctx: &Ctx,
    p: RunParams,
    job_id: &str,
    cancel: &CancellationToken,
    out: &dyn Report,
) -> Result<Ran, HandlerError> {
    let RunParams { spec, remove } = p;
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
    Ok(Ran {
        id,
        exit_code,
        lines,
        removed: remove,
    })
}

/// The cancel path of `container.run`: stop and remove the container, say so, answer CANCELLED.
async fn cancelled<T>(guard: Cleanup, out: &dyn Report) -> Result<T, HandlerError> {
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
    use super::*;
    use crate::packs::container::fake::{err, out};

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
}
