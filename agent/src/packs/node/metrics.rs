//! `node.metrics`: how busy the host is, from a [`Sampler`] shared by all calls (see the
//! [module docs](super) for how it samples).

use std::sync::Arc;
use std::time::{Duration, Instant};

use croupier_sdk::HandlerError;
use schemars::JsonSchema;
use serde::Serialize;
use sysinfo::{
    DiskRefreshKind, Disks, MemoryRefreshKind, Networks, ProcessRefreshKind, ProcessesToUpdate,
    System,
};
use tokio_util::sync::CancellationToken;

use super::{
    MAX_WINDOW, NoParams, SAMPLE_GAP, blocking, descriptor, percent_of, round2, sysinfo_error,
    unix_ms,
};
use crate::descriptor::Typed;

/// `node.metrics`'s descriptor.
pub(super) fn metrics_descriptor() -> Typed<NoParams, Metrics> {
    descriptor(
        "node.metrics",
        "Host metrics: CPU usage (total and per core), load averages, memory, swap, disk usage, \
         network byte counters and rates, uptime and process count. Usage and rates cover \
         `sample_window_ms` (200 ms to 5 s).",
    )
}

/// `node.metrics`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Metrics {
    /// When the figures were read, Unix ms.
    pub(super) timestamp_ms: u64,
    /// Window CPU usage and network rates are averaged over.
    pub(super) sample_window_ms: u64,
    pub(super) cpu: CpuUsage,
    pub(super) load_average: Option<LoadAverage>,
    pub(super) memory: MemoryUsage,
    pub(super) swap: SwapUsage,
    pub(super) disks: Vec<DiskUsage>,
    pub(super) networks: Vec<NetworkUsage>,
    pub(super) uptime_secs: Option<u64>,
    pub(super) processes: usize,
    /// The node pack's latest periodic sample: every metric the server's history keeps (disk
    /// I/O, network errors and drops, temperatures, GPUs, containers, custom gauges…); null
    /// until the first sample.
    pub(super) latest_sample: Option<LatestSample>,
}

/// One periodic sample of the node's metrics.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct LatestSample {
    /// When it was taken, Unix ms.
    pub(crate) timestamp_ms: i64,
    /// The values, by name (`cpu.percent`, `diskio.sda.read_iops`, `temp.<sensor>`, …).
    pub(crate) values: std::collections::BTreeMap<String, f64>,
}

/// The latest periodic sample, shared by the metrics reports and `node.metrics`.
pub(crate) type Latest = Arc<std::sync::Mutex<Option<LatestSample>>>;

/// CPU usage over the sample window, in percent.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct CpuUsage {
    #[schemars(range(min = 0, max = 100))]
    pub(super) usage_percent: f64,
    #[schemars(inner(range(min = 0, max = 100)))]
    pub(super) per_core_percent: Vec<f64>,
}

/// The load averages over 1, 5 and 15 minutes.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct LoadAverage {
    #[schemars(range(min = 0))]
    pub(super) one: f64,
    #[schemars(range(min = 0))]
    pub(super) five: f64,
    #[schemars(range(min = 0))]
    pub(super) fifteen: f64,
}

/// Memory, in bytes.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct MemoryUsage {
    pub(super) total_bytes: u64,
    pub(super) used_bytes: u64,
    pub(super) available_bytes: u64,
    #[schemars(range(min = 0, max = 100))]
    pub(super) used_percent: f64,
}

/// Swap, in bytes.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct SwapUsage {
    pub(super) total_bytes: u64,
    pub(super) used_bytes: u64,
}

/// One mounted file system.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DiskUsage {
    pub(super) name: String,
    pub(super) mount_point: String,
    pub(super) file_system: String,
    pub(super) total_bytes: u64,
    pub(super) available_bytes: u64,
    pub(super) used_bytes: u64,
}

/// One network interface's byte counters, and its rates over the sample window.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(super) struct NetworkUsage {
    pub(super) interface: String,
    pub(super) rx_bytes_total: u64,
    pub(super) tx_bytes_total: u64,
    #[schemars(range(min = 0))]
    pub(super) rx_bytes_per_sec: f64,
    #[schemars(range(min = 0))]
    pub(super) tx_bytes_per_sec: f64,
}

/// The last sample of CPU times and network counters, shared by `node.metrics` calls.
#[derive(Default)]
pub(super) struct Sampler {
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
    networks: Vec<NetworkUsage>,
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
    fn snapshot(&mut self) -> Result<Metrics, HandlerError> {
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
        let disks = c
            .disks
            .iter()
            .map(|d| DiskUsage {
                name: d.name().to_string_lossy().into_owned(),
                mount_point: d.mount_point().to_string_lossy().into_owned(),
                file_system: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
                used_bytes: d.total_space().saturating_sub(d.available_space()),
            })
            .collect();
        let load_average = System::load_average().ok().map(|l| LoadAverage {
            one: l.one,
            five: l.five,
            fifteen: l.fifteen,
        });
        Ok(Metrics {
            timestamp_ms: unix_ms(),
            sample_window_ms: w.length.as_millis() as u64,
            cpu: CpuUsage {
                usage_percent: round2(w.cpu_total),
                per_core_percent: w.per_core.iter().map(|u| round2(*u)).collect(),
            },
            load_average,
            memory: MemoryUsage {
                total_bytes: total,
                used_bytes: used,
                available_bytes: c.sys.available_memory(),
                used_percent: round2(percent_of(used, total)),
            },
            swap: SwapUsage {
                total_bytes: c.sys.total_swap(),
                used_bytes: c.sys.used_swap(),
            },
            disks,
            networks: w.networks.clone(),
            uptime_secs: System::uptime().ok(),
            processes: c.sys.processes().len(),
            latest_sample: None,
        })
    }
}

impl Window {
    fn read(sys: &System, networks: &Networks, length: Duration) -> Window {
        let secs = length.as_secs_f64().max(f64::EPSILON);
        let mut nets: Vec<NetworkUsage> = networks
            .iter()
            .map(|(name, n)| NetworkUsage {
                interface: name.to_string_lossy().into_owned(),
                rx_bytes_total: n.total_received(),
                tx_bytes_total: n.total_transmitted(),
                rx_bytes_per_sec: round2(n.received() as f64 / secs),
                tx_bytes_per_sec: round2(n.transmitted() as f64 / secs),
            })
            .collect();
        nets.sort_by(|a, b| a.interface.cmp(&b.interface));
        Window {
            length,
            cpu_total: sys.global_cpu_usage(),
            per_core: sys.cpus().iter().map(sysinfo::Cpu::usage).collect(),
            networks: nets,
        }
    }
}

/// `node.metrics`: samples as the [module docs](super) say, then reads the rest.
pub(super) async fn metrics(
    sampler: Arc<tokio::sync::Mutex<Sampler>>,
    cancel: CancellationToken,
) -> Result<Metrics, HandlerError> {
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

/// The metrics over the time since `sampler`'s previous sample (the periodic reports'
/// interval); the first call takes a baseline and a sample [`SAMPLE_GAP`] apart.
pub(super) async fn over_interval(
    sampler: Arc<tokio::sync::Mutex<Sampler>>,
) -> Result<Metrics, HandlerError> {
    let mut s = sampler.lock_owned().await;
    if s.age().is_none() {
        let (back, taken) = blocking(move || {
            let r = s.sample(true);
            (s, r)
        })
        .await?;
        s = back;
        taken.map_err(sysinfo_error)?;
        tokio::time::sleep(SAMPLE_GAP).await;
    }
    blocking(move || {
        s.sample(false).map_err(sysinfo_error)?;
        s.snapshot()
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::check::{assert_valid, over_the_wire, schema};

    fn json(m: &Metrics) -> serde_json::Value {
        serde_json::to_value(m).unwrap()
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
        assert!(m.sample_window_ms >= SAMPLE_GAP.as_millis() as u64);
        assert_valid(
            &schema(&metrics_descriptor().descriptor, true),
            &over_the_wire(&json(&m)),
        );
        // Every online CPU, at least as many as this process may use.
        let cores = m.cpu.per_core_percent.len();
        assert!(cores >= std::thread::available_parallelism().unwrap().get());
        assert!(m.memory.total_bytes > 0);
        assert!(m.processes > 0);

        // A call right after reuses the window instead of waiting again.
        let t = Instant::now();
        let again = metrics(sampler.clone(), CancellationToken::new())
            .await
            .unwrap();
        assert!(t.elapsed() < SAMPLE_GAP, "{:?}", t.elapsed());
        assert_eq!(again.sample_window_ms, m.sample_window_ms);

        // Later, one new sample ends a window that began with the previous one.
        tokio::time::sleep(SAMPLE_GAP * 2).await;
        let later = metrics(sampler, CancellationToken::new()).await.unwrap();
        assert!(later.sample_window_ms >= 2 * SAMPLE_GAP.as_millis() as u64);
        assert!(later.timestamp_ms > m.timestamp_ms);
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
        assert!(json(&m)["cpu"]["usage_percent"].is_number());
    }
}
