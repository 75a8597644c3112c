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
//!
//! Layout:
//! - this module — the labels, [`register`], and [`serve`] / [`serve_job`], which decode a
//!   payload as the handler's parameter type and encode its result.
//! - [`docker`] — [`DockerApi`], the Docker operations the pack uses, and [`LocalDocker`], their
//!   bollard implementation for the local daemon (connection, API version, startup [`probe`]).
//! - [`procs`] — the processes of a `container.exec`, from `/proc`, to kill a cancelled one.
//! - [`error`] — Docker errors as handler errors with codes.
//! - [`descriptors`] — the functions' descriptors, with schemas derived from their parameter
//!   and result types.
//! - [`params`] — the functions' parameters and the checks JSON Schema does not make.
//! - [`results`] — the functions' results, made from Docker's answers.
//! - [`calls`] — the synchronous functions: list, inspect, create, start, stop, restart,
//!   remove, exec.
//! - [`jobs`] — the jobs `container.logs` and `container.run`.
//! - [`events`] — Docker's container events reported as node events (`container.die` with
//!   the exit code, `container.oom`, `container.health`, …).
//! - `fake` (tests only) — a Docker daemon in memory and a recorder of job events.

mod calls;
mod descriptors;
mod docker;
mod error;
mod events;
mod jobs;
mod params;
mod procs;
mod results;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use croupier_sdk::{HandlerError, Invocation, JobContext, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::descriptor::{Typed, encode};
use descriptors::with_note;
use params::params;

pub(crate) use docker::{DockerApi, LocalDocker, probe};
pub(crate) use events::report as report_events;

/// Label naming the agent that created a container.
pub(crate) const AGENT_LABEL: &str = "croupier.agent";
/// Label naming the job that created a container.
pub(crate) const JOB_LABEL: &str = "croupier.job";
/// Labels under this prefix are Croupier's; callers may not set them.
const RESERVED_PREFIX: &str = "croupier.";
/// Longest `timeout` of `container.stop` and `container.restart`, in seconds.
const MAX_STOP_SECS: i64 = 300;

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
    Registrar {
        provider,
        ctx,
        unavailable,
    }
    .function(descriptors::list(), calls::list)
    .function(descriptors::inspect(), calls::inspect)
    .function(descriptors::create(), calls::create)
    .function(descriptors::start(), calls::start)
    .function(descriptors::stop(), calls::stop)
    .function(descriptors::restart(), calls::restart)
    .function(descriptors::remove(), calls::remove)
    .function(descriptors::exec(), calls::exec)
    .job(descriptors::logs(), jobs::logs_job)
    .job(descriptors::run(), jobs::run_job)
    .provider
}

/// Registers the pack's functions, each with the handler whose parameter and result types its
/// schemas were derived from.
struct Registrar {
    provider: Provider,
    ctx: Ctx,
    unavailable: Option<String>,
}

impl Registrar {
    /// A synchronous function, served by [`serve`].
    fn function<P, R, F, Fut>(self, d: Typed<P, R>, f: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, P, Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let descriptor = with_note(d.descriptor, self.unavailable.as_deref());
        let id: Arc<str> = descriptor.id.as_str().into();
        let (ctx, f) = (self.ctx.clone(), Arc::new(f));
        let provider = self.provider.function(descriptor, move |call| {
            let (id, ctx, f) = (id.clone(), ctx.clone(), f.clone());
            async move { serve(&id, ctx, call, &*f).await }
        });
        Registrar { provider, ..self }
    }

    /// A job, served by [`serve_job`].
    fn job<P, R, F, Fut>(self, d: Typed<P, R>, f: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, P, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        let descriptor = with_note(d.descriptor, self.unavailable.as_deref());
        let id: Arc<str> = descriptor.id.as_str().into();
        let (ctx, f) = (self.ctx.clone(), Arc::new(f));
        let provider = self.provider.job(descriptor, move |job| {
            let (id, ctx, f) = (id.clone(), ctx.clone(), f.clone());
            async move { serve_job(&id, ctx, job, &*f).await }
        });
        Registrar { provider, ..self }
    }
}

/// One call of function `id`: the payload decoded as `P` (a payload that does not decode is
/// `INVALID_ARGUMENT` naming the function, and `f` is not called), `f`'s result as JSON.
async fn serve<P, R, Fut>(
    id: &str,
    ctx: Ctx,
    call: Invocation,
    f: impl FnOnce(Ctx, P, Invocation) -> Fut,
) -> Result<Value, HandlerError>
where
    P: DeserializeOwned,
    R: Serialize,
    Fut: Future<Output = Result<R, HandlerError>>,
{
    let p = params::<P>(id, &call.payload)?;
    let r = f(ctx, p, call).await?;
    encode(id, &r)
}

/// [`serve`] for the job `id`.
async fn serve_job<P, R, Fut>(
    id: &str,
    ctx: Ctx,
    job: JobContext,
    f: impl FnOnce(Ctx, P, JobContext) -> Fut,
) -> Result<Value, HandlerError>
where
    P: DeserializeOwned,
    R: Serialize,
    Fut: Future<Output = Result<R, HandlerError>>,
{
    let p = params::<P>(id, job.payload())?;
    let r = f(ctx, p, job).await?;
    encode(id, &r)
}
