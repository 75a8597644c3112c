//! The `node` pack: what the host looks like and how busy it is, read with `sysinfo`.
//!
//! - `node.metrics` — CPU usage (total and per core), load averages, memory, swap, per-disk
//!   usage, per-interface network byte counters and rates, uptime, process count, timestamp.
//! - `node.resources` — the inventory: CPU brand/cores/threads/frequency/arch, memory, disks,
//!   NICs with MAC and IP addresses, OS, kernel, hostname and the Docker version (bollard).
//! - Heartbeats carry `cpu_percent` and `memory_percent`.
//!
//! **Sampling.** CPU usage and network rates are differences between two samples. There is
//! no background task: a [`Sampler`] shared by all `node.metrics` calls keeps the last sample
//! and samples on demand. A call whose previous sample is between [`SAMPLE_GAP`] (200 ms) and
//! [`MAX_WINDOW`] (5 s) old takes one new sample and reports usage and rates over that window;
//! a call with no previous sample, or a stale one, takes two samples [`SAMPLE_GAP`] apart; a
//! call within [`SAMPLE_GAP`] of the last sample reuses its figures. So a call returns within
//! about 200 ms plus the time to read `/proc`, and an idle agent does no work. `sample_window_ms`
//! in the result says what window the figures cover. Memory, swap, disks, load, uptime and the
//! process count are read afresh on every call. The heartbeat summary keeps its own sample,
//! refreshed at each heartbeat, so its `cpu_percent` is the average since the previous one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use croupier_proto::common::v1::{FunctionDescriptor, Semantics};
use croupier_proto::json::json_to_struct;
use croupier_sdk::tls::error_chain;
use croupier_sdk::{HandlerError, Provider};
use serde_json::{Value, json};
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, ProcessRefreshKind,
    ProcessesToUpdate, RefreshKind, System,
};
use tokio_util::sync::CancellationToken;

use super::StatusFn;
use super::container::DockerApi;

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
/// `docker` is the agent's Docker client, asked for its version by `node.resources`.
pub(crate) fn register(
    provider: Provider,
    status: &mut Vec<StatusFn>,
    docker: Arc<dyn DockerApi>,
) -> Provider {
    let summary = Mutex::new(Summary::new());
    status.push(Box::new(move |out| lock(&summary).add_to(out)));
    let sampler = Arc::new(tokio::sync::Mutex::new(Sampler::default()));
    provider
        .function(metrics_descriptor(), move |call| {
            metrics(sampler.clone(), call.cancel)
        })
        .function(resources_descriptor(), move |_call| {
            let docker = docker.clone();
            async move { resources(docker.as_ref()).await }
        })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn descriptor(id: &str, description: &str, result: Value) -> FunctionDescriptor {
    FunctionDescriptor {
        id: id.into(),
        name: id.into(),
        category: "node".into(),
        description: description.into(),
        // Neither function takes arguments.
        params_schema: Some(json_to_struct(
            &json!({"type": "object", "additionalProperties": false}),
        )),
        result_schema: Some(json_to_struct(&result)),
        semantics: Some(Semantics {
            kind: "query".into(),
            idempotent: true,
            timeout: TIMEOUT_SECS,
            job: false,
        }),
        version: "1".into(),
        ..Default::default()
    }
}

/// JSON Schema of a non-negative integer.
fn count() -> Value {
    json!({"type": "integer", "minimum": 0})
}

/// JSON Schema of a percentage.
fn percent() -> Value {
    json!({"type": "number", "minimum": 0, "maximum": 100})
}

/// JSON Schema of an object whose listed properties are all required.
fn object(properties: Value) -> Value {
    let required: Vec<String> = properties
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "properties": properties, "required": required})
}

fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn metrics_descriptor() -> FunctionDescriptor {
    let disk = object(json!({
        "name": {"type": "string"},
        "mount_point": {"type": "string"},
        "file_system": {"type": "string"},
        "total_bytes": count(),
        "available_bytes": count(),
        "used_bytes": count(),
    }));
    let network = object(json!({
        "interface": {"type": "string"},
        "rx_bytes_total": count(),
        "tx_bytes_total": count(),
        "rx_bytes_per_sec": {"type": "number", "minimum": 0},
        "tx_bytes_per_sec": {"type": "number", "minimum": 0},
    }));
    let result = object(json!({
        "timestamp_ms": {"type": "integer", "description": "When the figures were read, Unix ms."},
        "sample_window_ms": {
            "type": "integer",
            "minimum": 0,
            "description": "Window CPU usage and network rates are averaged over."
        },
        "cpu": object(json!({
            "usage_percent": percent(),
            "per_core_percent": {"type": "array", "items": percent()},
        })),
        "load_average": nullable(object(json!({
            "one": {"type": "number", "minimum": 0},
            "five": {"type": "number", "minimum": 0},
            "fifteen": {"type": "number", "minimum": 0},
        }))),
        "memory": object(json!({
            "total_bytes": count(),
            "used_bytes": count(),
            "available_bytes": count(),
            "used_percent": percent(),
        })),
        "swap": object(json!({"total_bytes": count(), "used_bytes": count()})),
        "disks": {"type": "array", "items": disk},
        "networks": {"type": "array", "items": network},
        "uptime_secs": nullable(count()),
        "processes": count(),
    }));
    descriptor(
        "node.metrics",
        "Host metrics: CPU usage (total and per core), load averages, memory, swap, disk usage, \
         network byte counters and rates, uptime and process count. Usage and rates cover \
         `sample_window_ms` (200 ms to 5 s).",
        result,
    )
}

fn resources_descriptor() -> FunctionDescriptor {
    let disk = object(json!({
        "name": {"type": "string"},
        "mount_point": {"type": "string"},
        "file_system": {"type": "string"},
        "kind": {"type": "string", "description": "HDD, SSD or Unknown."},
        "removable": {"type": "boolean"},
        "total_bytes": count(),
    }));
    let address = object(json!({"address": {"type": "string"}, "prefix": count()}));
    let nic = object(json!({
        "interface": {"type": "string"},
        "mac": {"type": "string"},
        "addresses": {"type": "array", "items": address},
    }));
    let docker = object(json!({
        "version": {"type": "string"},
        "api_version": {"type": "string"},
        "os": {"type": "string"},
        "arch": {"type": "string"},
    }));
    let result = object(json!({
        "hostname": {"type": "string"},
        "os": object(json!({
            "name": {"type": "string"},
            "version": {"type": "string"},
            "long_version": {"type": "string"},
            "kernel_version": {"type": "string"},
            "arch": {"type": "string"},
        })),
        "cpu": object(json!({
            "brand": {"type": "string"},
            "vendor": {"type": "string"},
            "physical_cores": nullable(count()),
            "logical_cpus": count(),
            "frequency_mhz": nullable(count()),
        })),
        "memory": object(json!({"total_bytes": count(), "swap_total_bytes": count()})),
        "disks": {"type": "array", "items": disk},
        "networks": {"type": "array", "items": nic},
        "docker": nullable(docker),
        "docker_error": nullable(json!({
            "type": "string",
            "description": "Why `docker` is null: Docker is not installed, not running or not answering."
        })),
    }));
    descriptor(
        "node.resources",
        "Host inventory: CPU brand, physical cores, logical CPUs, frequency and architecture; \
         memory; disks; network interfaces with MAC and IP addresses; OS, kernel and hostname; \
         the Docker version when Docker answers (else null, with the reason in docker_error).",
        result,
    )
}

// ---------------------------------------------------------------------------------------------
// node.metrics

/// The last sample of CPU times and network counters, shared by `node.metrics` calls.
#[derive(Default)]
struct Sampler {
    /// None until the first sample.
    counters: Option<Counters>,
}

struct Counters {
    sys: System,
    networks: Networks,
    disks: Disks,
    /// When the last sample was taken.
    at: Instant,
    /// Figures over the window ending at `at`; None right after a baseline sample.
    window: Option<Window>,
}

/// CPU usage and network rates between two samples.
struct Window {
    length: Duration,
    cpu_total: f32,
    per_core: Vec<f32>,
    networks: Vec<Value>,
}

impl Sampler {
    /// How long ago the last sample was taken.
    fn age(&self) -> Option<Duration> {
        self.counters.as_ref().map(|c| c.at.elapsed())
    }

    /// True when the last sample ends a window (it is not a lone baseline).
    fn has_window(&self) -> bool {
        self.counters.as_ref().is_some_and(|c| c.window.is_some())
    }

    /// Takes a sample. With `baseline`, it only starts a window (the previous one, if any, is
    /// too old to mean "now"); otherwise it ends the window begun by the previous sample.
    fn sample(&mut self, baseline: bool) -> Result<(), sysinfo::Error> {
        let now = Instant::now();
        let Some(c) = self.counters.as_mut() else {
            let mut sys = System::new()?;
            sys.refresh_cpu_usage();
            self.counters = Some(Counters {
                sys,
                networks: Networks::new_with_refreshed_list()?,
                disks: Disks::new()?,
                at: now,
                window: None,
            });
            return Ok(());
        };
        let length = now.duration_since(c.at);
        c.sys.refresh_cpu_usage();
        c.networks.refresh(true);
        c.at = now;
        c.window = if baseline {
            None
        } else {
            Some(Window::read(&c.sys, &c.networks, length))
        };
        Ok(())
    }

    /// The metrics: the window's CPU usage and rates, everything else read now.
    fn snapshot(&mut self) -> Result<Value, HandlerError> {
        let c = self
            .counters
            .as_mut()
            .ok_or_else(|| HandlerError::internal("no sample taken"))?;
        let w = c
            .window
            .as_ref()
            .ok_or_else(|| HandlerError::internal("no complete sample window"))?;
        c.sys
            .refresh_memory_specifics(MemoryRefreshKind::everything());
        c.sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().without_tasks(),
        );
        c.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let total = c.sys.total_memory();
        let used = c.sys.used_memory();
        let disks: Vec<Value> = c
            .disks
            .iter()
            .map(|d| {
                json!({
                    "name": d.name().to_string_lossy(),
                    "mount_point": d.mount_point().to_string_lossy(),
                    "file_system": d.file_system().to_string_lossy(),
                    "total_bytes": d.total_space(),
                    "available_bytes": d.available_space(),
                    "used_bytes": d.total_space().saturating_sub(d.available_space()),
                })
            })
            .collect();
        let load = System::load_average()
            .map(|l| json!({"one": l.one, "five": l.five, "fifteen": l.fifteen}))
            .unwrap_or(Value::Null);
        Ok(json!({
            "timestamp_ms": unix_ms(),
            "sample_window_ms": w.length.as_millis() as u64,
            "cpu": {
                "usage_percent": round2(w.cpu_total),
                "per_core_percent": w.per_core.iter().map(|u| round2(*u)).collect::<Vec<_>>(),
            },
            "load_average": load,
            "memory": {
                "total_bytes": total,
                "used_bytes": used,
                "available_bytes": c.sys.available_memory(),
                "used_percent": round2(percent_of(used, total)),
            },
            "swap": {"total_bytes": c.sys.total_swap(), "used_bytes": c.sys.used_swap()},
            "disks": disks,
            "networks": w.networks,
            "uptime_secs": System::uptime().ok(),
            "processes": c.sys.processes().len(),
        }))
    }
}

impl Window {
    fn read(sys: &System, networks: &Networks, length: Duration) -> Window {
        let secs = length.as_secs_f64().max(f64::EPSILON);
        let mut nets: Vec<(String, Value)> = networks
            .iter()
            .map(|(name, n)| {
                let name = name.to_string_lossy().into_owned();
                let v = json!({
                    "interface": name,
                    "rx_bytes_total": n.total_received(),
                    "tx_bytes_total": n.total_transmitted(),
                    "rx_bytes_per_sec": round2(n.received() as f64 / secs),
                    "tx_bytes_per_sec": round2(n.transmitted() as f64 / secs),
                });
                (name, v)
            })
            .collect();
        nets.sort_by(|a, b| a.0.cmp(&b.0));
        Window {
            length,
            cpu_total: sys.global_cpu_usage(),
            per_core: sys.cpus().iter().map(|c| c.usage()).collect(),
            networks: nets.into_iter().map(|(_, v)| v).collect(),
        }
    }
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

async fn metrics(
    sampler: Arc<tokio::sync::Mutex<Sampler>>,
    cancel: CancellationToken,
) -> Result<Value, HandlerError> {
    // One call samples at a time; a call waiting here then finds a fresh window to reuse.
    let mut s = sampler.lock_owned().await;
    if s.age().is_none_or(|age| age > MAX_WINDOW) {
        let (back, taken) = blocking(move || {
            let r = s.sample(true);
            (s, r)
        })
        .await?;
        s = back;
        taken.map_err(sysinfo_error)?;
    }
    let age = s.age().unwrap_or_default();
    if !s.has_window() || age >= SAMPLE_GAP {
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_GAP.saturating_sub(age)) => {}
            _ = cancel.cancelled() => {
                return Err(HandlerError::new("CANCELLED", "node.metrics cancelled"));
            }
        }
        let (back, taken) = blocking(move || {
            let r = s.sample(false);
            (s, r)
        })
        .await?;
        s = back;
        taken.map_err(sysinfo_error)?;
    }
    blocking(move || s.snapshot()).await?
}

// ---------------------------------------------------------------------------------------------
// node.resources

async fn resources(docker: &dyn DockerApi) -> Result<Value, HandlerError> {
    let (inventory, docker) = tokio::join!(blocking(inventory), docker_version(docker));
    let mut inventory = inventory?.map_err(sysinfo_error)?;
    let (docker, reason) = match docker {
        Ok(v) => (v, Value::Null),
        Err(reason) => (Value::Null, Value::String(reason)),
    };
    inventory["docker"] = docker;
    inventory["docker_error"] = reason;
    Ok(inventory)
}

/// Everything `node.resources` reports except Docker.
fn inventory() -> Result<Value, sysinfo::Error> {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_frequency())
            .with_memory(MemoryRefreshKind::everything()),
    )?;
    let cpus = sys.cpus();
    let first = cpus.first();
    let frequency = cpus.iter().map(|c| c.frequency()).max().filter(|f| *f > 0);
    let disks = Disks::new_with_refreshed_list_specifics(
        DiskRefreshKind::nothing().with_kind().with_storage(),
    )?;
    let disks: Vec<Value> = disks
        .iter()
        .map(|d| {
            json!({
                "name": d.name().to_string_lossy(),
                "mount_point": d.mount_point().to_string_lossy(),
                "file_system": d.file_system().to_string_lossy(),
                "kind": d.kind().to_string(),
                "removable": d.is_removable(),
                "total_bytes": d.total_space(),
            })
        })
        .collect();
    let networks = Networks::new_with_refreshed_list()?;
    let mut nics: Vec<(String, Value)> = networks
        .iter()
        .map(|(name, n)| {
            let name = name.to_string_lossy().into_owned();
            let mut addresses: Vec<_> = n.ip_networks().to_vec();
            addresses.sort();
            let addresses: Vec<Value> = addresses
                .iter()
                .map(|a| json!({"address": a.addr.to_string(), "prefix": a.prefix}))
                .collect();
            let v = json!({
                "interface": name,
                "mac": n.mac_address().to_string(),
                "addresses": addresses,
            });
            (name, v)
        })
        .collect();
    nics.sort_by(|a, b| a.0.cmp(&b.0));
    let text = |r: Result<String, sysinfo::Error>| r.unwrap_or_default();
    Ok(json!({
        "hostname": text(System::host_name()),
        "os": {
            "name": text(System::name()),
            "version": text(System::os_version()),
            "long_version": text(System::long_os_version()),
            "kernel_version": text(System::kernel_version()),
            "arch": System::cpu_arch(),
        },
        "cpu": {
            "brand": first.map(|c| c.brand().trim()).unwrap_or_default(),
            "vendor": first.map(|c| c.vendor_id()).unwrap_or_default(),
            "physical_cores": System::physical_core_count().ok(),
            "logical_cpus": cpus.len(),
            "frequency_mhz": frequency,
        },
        "memory": {"total_bytes": sys.total_memory(), "swap_total_bytes": sys.total_swap()},
        "disks": disks,
        "networks": nics.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}

/// Docker's version, or why there is none. Never waits more than [`DOCKER_TIMEOUT`], the
/// connection (made on first use, negotiating the API version with older daemons) included.
async fn docker_version(docker: &dyn DockerApi) -> Result<Value, String> {
    let v = match tokio::time::timeout(DOCKER_TIMEOUT, docker.version()).await {
        Err(_) => {
            return Err(format!(
                "Docker did not answer within {} ms",
                DOCKER_TIMEOUT.as_millis()
            ));
        }
        Ok(Err(e)) => {
            return Err(format!(
                "asking Docker for its version: {}",
                error_chain(&e)
            ));
        }
        Ok(Ok(v)) => v,
    };
    Ok(json!({
        "version": v.version.unwrap_or_default(),
        "api_version": v.api_version.unwrap_or_default(),
        "os": v.os.unwrap_or_default(),
        "arch": v.arch.unwrap_or_default(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Heartbeat summary

/// The sample behind the heartbeat's `cpu_percent` and `memory_percent`.
struct Summary {
    /// None when sysinfo cannot read this system; the summary is then left out.
    sys: Option<System>,
}

impl Summary {
    fn new() -> Summary {
        // Sampling now makes the first heartbeat's CPU figure the average since start-up.
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        if let Err(e) = &sys {
            tracing::warn!(error = %e, "no CPU and memory figures for heartbeats");
        }
        Summary { sys: sys.ok() }
    }

    fn add_to(&mut self, out: &mut HashMap<String, String>) {
        let Some(sys) = self.sys.as_mut() else {
            return;
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        out.insert(
            "cpu_percent".into(),
            format!("{:.1}", sys.global_cpu_usage()),
        );
        out.insert(
            "memory_percent".into(),
            format!("{:.1}", percent_of(sys.used_memory(), sys.total_memory())),
        );
    }
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
    use super::*;

    fn schema_of(d: &FunctionDescriptor, result: bool) -> Value {
        let s = if result {
            &d.result_schema
        } else {
            &d.params_schema
        };
        croupier_proto::json::opt_struct_to_json(s.as_ref())
    }

    fn assert_valid(schema: &Value, value: &Value) {
        let validator = jsonschema::validator_for(schema).expect("schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{value:#}");
    }

    /// What the caller gets: the handler's JSON after the trip through `google.protobuf.Struct`.
    fn over_the_wire(v: &Value) -> Value {
        croupier_proto::json::struct_to_json(&json_to_struct(v))
    }

    #[test]
    fn descriptors_are_node_queries_with_valid_schemas() {
        for d in [metrics_descriptor(), resources_descriptor()] {
            assert_eq!(d.category, "node");
            let sem = d.semantics.clone().unwrap();
            assert_eq!(sem.kind, "query");
            assert!(sem.idempotent);
            assert!(sem.timeout > 0);
            assert!(!sem.job);
            for result in [false, true] {
                let schema = schema_of(&d, result);
                jsonschema::validator_for(&schema)
                    .unwrap_or_else(|e| panic!("{} schema invalid: {e}", d.id));
            }
            let params = jsonschema::validator_for(&schema_of(&d, false)).unwrap();
            assert!(params.is_valid(&json!({})));
            assert!(!params.is_valid(&json!({"x": 1})));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_match_their_schema_and_reuse_fresh_samples() {
        let sampler = Arc::new(tokio::sync::Mutex::new(Sampler::default()));
        let t = Instant::now();
        let m = metrics(sampler.clone(), CancellationToken::new())
            .await
            .unwrap();
        // The first call takes two samples SAMPLE_GAP apart.
        assert!(t.elapsed() >= SAMPLE_GAP, "{:?}", t.elapsed());
        assert!(m["sample_window_ms"].as_u64().unwrap() >= SAMPLE_GAP.as_millis() as u64);
        assert_valid(&schema_of(&metrics_descriptor(), true), &over_the_wire(&m));
        // Every online CPU, at least as many as this process may use.
        let cores = m["cpu"]["per_core_percent"].as_array().unwrap().len();
        assert!(cores >= std::thread::available_parallelism().unwrap().get());
        assert!(m["memory"]["total_bytes"].as_u64().unwrap() > 0);
        assert!(m["processes"].as_u64().unwrap() > 0);

        // A call right after reuses the window instead of waiting again.
        let t = Instant::now();
        let again = metrics(sampler.clone(), CancellationToken::new())
            .await
            .unwrap();
        assert!(t.elapsed() < SAMPLE_GAP, "{:?}", t.elapsed());
        assert_eq!(again["sample_window_ms"], m["sample_window_ms"]);

        // Later, one new sample ends a window that began with the previous one.
        tokio::time::sleep(SAMPLE_GAP * 2).await;
        let later = metrics(sampler, CancellationToken::new()).await.unwrap();
        assert!(later["sample_window_ms"].as_u64().unwrap() >= 2 * SAMPLE_GAP.as_millis() as u64);
        assert!(later["timestamp_ms"].as_u64().unwrap() > m["timestamp_ms"].as_u64().unwrap());
    }

    #[tokio::test]
    async fn cancelled_metrics_call_stops_waiting() {
        let sampler = Arc::new(tokio::sync::Mutex::new(Sampler::default()));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = metrics(sampler.clone(), cancel).await.unwrap_err();
        assert_eq!(e.code, "CANCELLED");
        // The baseline it took still serves the next call.
        let m = metrics(sampler, CancellationToken::new()).await.unwrap();
        assert!(m["cpu"]["usage_percent"].is_number());
    }

    #[tokio::test]
    async fn resources_match_their_schema_with_or_without_docker() {
        let r = resources(&super::super::container::LocalDocker::new())
            .await
            .unwrap();
        assert_valid(
            &schema_of(&resources_descriptor(), true),
            &over_the_wire(&r),
        );
        assert!(r["cpu"]["logical_cpus"].as_u64().unwrap() >= 1);
        assert_eq!(r["os"]["arch"], std::env::consts::ARCH);
        // Docker is optional: either a version or the reason there is none.
        match &r["docker"] {
            Value::Null => assert!(!r["docker_error"].as_str().unwrap().is_empty(), "{r:#}"),
            d => {
                assert!(d["version"].is_string());
                assert!(r["docker_error"].is_null());
            }
        }
    }

    #[test]
    fn heartbeat_summary_has_cpu_and_memory_percent() {
        let mut summary = Summary::new();
        std::thread::sleep(SAMPLE_GAP);
        let mut out = HashMap::new();
        summary.add_to(&mut out);
        for key in ["cpu_percent", "memory_percent"] {
            let v: f64 = out[key].parse().unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!((0.0..=100.0).contains(&v), "{key} = {v}");
        }
    }

    #[test]
    fn rounding_and_percentages() {
        assert_eq!(round2(12.3456_f64), 12.35);
        assert_eq!(percent_of(1, 4), 25.0);
        assert_eq!(percent_of(1, 0), 0.0);
    }
}
