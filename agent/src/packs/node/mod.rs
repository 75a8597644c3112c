//! The `node` pack: what the host looks like and how busy it is, read with `sysinfo`.
//!
//! - `node.metrics` — CPU usage (total and per core), load averages, memory, swap, per-disk
//!   usage, per-interface network byte counters and rates, uptime, process count, timestamp.
//! - `node.resources` — the inventory: CPU brand/cores/threads/frequency/arch, memory, disks,
//!   NICs with MAC and IP addresses, OS, kernel, hostname and the Docker version (bollard).
//! - Heartbeats carry `cpu_percent` and `memory_percent`.
//!
//! **Sampling.** CPU usage and network rates are differences between two samples. There is
//! no background task: a [`Sampler`](metrics::Sampler) shared by all `node.metrics` calls keeps the last sample
//! and samples on demand. A call whose previous sample is between [`SAMPLE_GAP`] (200 ms) and
//! [`MAX_WINDOW`] (5 s) old takes one new sample and reports usage and rates over that window;
//! a call with no previous sample, or a stale one, takes two samples [`SAMPLE_GAP`] apart; a
//! call within [`SAMPLE_GAP`] of the last sample reuses its figures. So a call returns within
//! about 200 ms plus the time to read `/proc`, and an idle agent does no work. `sample_window_ms`
//! in the result says what window the figures cover. Memory, swap, disks, load, uptime and the
//! process count are read afresh on every call. The heartbeat summary keeps its own sample,
//! refreshed at each heartbeat, so its `cpu_percent` is the average since the previous one.
//!
//! Layout:
//! - this module — [`register`], the shared constants and helpers.
//! - [`metrics`] — `node.metrics`: its result type, descriptor and the sampler.
//! - [`resources`] — `node.resources`: its result type, descriptor, the inventory and the
//!   Docker version.
//! - [`heartbeat`] — the `cpu_percent` and `memory_percent` heartbeat summary.
//! - [`inventory`] — the inventory the server keeps: collected at start (the registration
//!   carries it), checked periodically, sent over the tunnel when it changes.
//! - [`telemetry`] — periodic metric samples, batched over the tunnel, and threshold events.

mod heartbeat;
mod inventory;
mod metrics;
mod resources;
mod telemetry;

pub use inventory::InventoryTimes;
pub(crate) use inventory::report as report_inventory;
pub(crate) use metrics::Latest;
pub(crate) use telemetry::report as report_metrics;
pub use telemetry::{MetricsTimes, Thresholds};

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croupier_sdk::{HandlerError, Invocation, Provider};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::StatusFn;
use super::container::DockerApi;
use crate::descriptor::{Typed, encode, semantics, typed};
use crate::lock;
use heartbeat::Summary;
use metrics::{Sampler, metrics_descriptor};
use resources::resources_descriptor;

/// Shortest window CPU usage and rates are computed over; sysinfo does not update CPU times
/// more often than `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` (200 ms on Linux).
const SAMPLE_GAP: Duration = Duration::from_millis(200);
/// Longest window a call reports over; an older previous sample is replaced by a fresh pair.
const MAX_WINDOW: Duration = Duration::from_secs(5);
/// How long `node.resources` waits for Docker to answer.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(1);
/// Default timeout of the node functions, in seconds.
const TIMEOUT_SECS: i32 = 10;

/// Registers `node.metrics` and `node.resources`, and adds the heartbeat summary to `status`.
/// `docker` is the agent's Docker client, asked for its version by `node.resources`; `latest`
/// is the periodic reports' latest sample, which `node.metrics` includes.
pub(crate) fn register(
    provider: Provider,
    status: &mut Vec<StatusFn>,
    docker: Arc<dyn DockerApi>,
    latest: Latest,
) -> Provider {
    let summary = Mutex::new(Summary::new());
    status.push(Box::new(move |out| lock(&summary).add_to(out)));
    let sampler = Arc::new(tokio::sync::Mutex::new(Sampler::default()));
    let provider = function(provider, metrics_descriptor(), move |call| {
        let (sampler, latest) = (sampler.clone(), latest.clone());
        async move {
            let mut m = metrics::metrics(sampler, call.cancel).await?;
            m.latest_sample = lock(&latest).clone();
            Ok(m)
        }
    });
    function(provider, resources_descriptor(), move |_call| {
        let docker = docker.clone();
        async move { resources::resources(docker.as_ref()).await }
    })
}

/// Registers `d` with `f`, which returns `d`'s result type. The payload is not looked at: the
/// server has checked it against [`NoParams`].
fn function<R, F, Fut>(provider: Provider, d: Typed<NoParams, R>, f: F) -> Provider
where
    R: Serialize + 'static,
    F: Fn(Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    let id: Arc<str> = d.descriptor.id.as_str().into();
    provider.function(d.descriptor, move |call| {
        let (id, running) = (id.clone(), f(call));
        async move { encode(&id, &running.await?) }
    })
}

/// The parameters of both functions: none.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// A `node` query's descriptor, with its result schema derived from `R`.
fn descriptor<R: JsonSchema>(id: &str, description: &str) -> Typed<NoParams, R> {
    typed(
        id,
        "node",
        description,
        semantics("query", true, TIMEOUT_SECS),
    )
}

/// Runs `f` on the blocking pool: sysinfo reads `/proc` and `statvfs`s every mount point.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HandlerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HandlerError::internal(format!("reading system information: {e}")))
}

fn sysinfo_error(e: sysinfo::Error) -> HandlerError {
    HandlerError::new(
        "UNAVAILABLE",
        format!("system information unavailable: {e}"),
    )
}

fn percent_of(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

fn round2(x: impl Into<f64>) -> f64 {
    (x.into() * 100.0).round() / 100.0
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::descriptor::check::schema;

    #[test]
    fn descriptors_are_node_queries_with_valid_schemas() {
        for d in [
            metrics_descriptor().descriptor,
            resources_descriptor().descriptor,
        ] {
            assert_eq!(d.category, "node");
            let sem = d.semantics.clone().unwrap();
            assert_eq!(sem.kind, "query");
            assert!(sem.idempotent);
            assert!(sem.timeout > 0);
            assert!(!sem.job);
            for result in [false, true] {
                jsonschema::validator_for(&schema(&d, result))
                    .unwrap_or_else(|e| panic!("{} schema invalid: {e}", d.id));
            }
            let params = jsonschema::validator_for(&schema(&d, false)).unwrap();
            assert!(params.is_valid(&json!({})));
            assert!(!params.is_valid(&json!({"x": 1})));
        }
    }

    #[test]
    fn rounding_and_percentages() {
        assert_eq!(round2(12.3456_f64), 12.35);
        assert_eq!(percent_of(1, 4), 25.0);
        assert_eq!(percent_of(1, 0), 0.0);
    }
}
