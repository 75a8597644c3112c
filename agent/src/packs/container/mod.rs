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
//! - this module — the labels, [`register`] and the adapters between the provider and the
//!   handlers.
//! - [`docker`] — [`DockerApi`], the Docker operations the pack uses, and [`LocalDocker`], their
//!   bollard implementation for the local daemon (connection, API version, startup [`probe`]).
//! - [`procs`] — the processes of a `container.exec`, from `/proc`, to kill a cancelled one.
//! - [`error`] — Docker errors as handler errors with codes.
//! - [`descriptors`] — the functions' descriptors.
//! - [`params`] — the functions' parameters and their checks.
//! - [`calls`] — the synchronous functions: list, inspect, create, start, stop, restart,
//!   remove, exec.
//! - [`jobs`] — the jobs `container.logs` and `container.run`.
//! - `fake` (tests only) — a Docker daemon in memory and a recorder of job events.

mod calls;
mod descriptors;
mod docker;
mod error;
mod jobs;
mod params;
mod procs;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use croupier_proto::common::v1::FunctionDescriptor;
use croupier_sdk::{Invocation, JobContext, Provider};

use calls::{create, exec, inspect, list, remove, restart, start, stop};
use descriptors::{
    create_descriptor, exec_descriptor, inspect_descriptor, list_descriptor, logs_descriptor,
    remove_descriptor, restart_descriptor, run_descriptor, start_descriptor, stop_descriptor,
    with_note,
};
use jobs::{logs_job, run_job};

pub(crate) use docker::{DockerApi, LocalDocker, probe};

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
