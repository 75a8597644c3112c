//! The node's metrics, sampled every `sample` interval (default 15 s) and reported over the
//! tunnel in batches every `batch` interval (default 1 min; the first sample at once), at once
//! when a threshold is crossed (CPU, memory, a disk; each crossing and clearing is also a node event).
//!
//! One sample holds, by name:
//! - `cpu.percent` (over the interval), `load.1`, `load.5`, `load.15`;
//! - `memory.percent`, `memory.used_bytes`, `swap.used_bytes`;
//! - `disk.<mount>.used_percent` for file systems on block devices;
//! - `diskio.<device>.{read_iops,write_iops,read_bytes_per_sec,write_bytes_per_sec}` from
//!   `/proc/diskstats`;
//! - `net.<interface>.{rx_bytes_per_sec,tx_bytes_per_sec,rx_errors,tx_errors,rx_dropped,
//!   tx_dropped}` (errors and drops counted over the interval; container veths left out);
//! - `temp.<sensor>` in °C where the machine exposes sensors;
//! - `gpu.<i>.{util_percent,memory_used_bytes}` when `nvidia-smi` answers;
//! - `containers.<state>`: Docker's containers by state, and
//!   `container.<name>.{cpu_percent,memory_bytes}` of (up to 32) running ones, when Docker
//!   answers;
//! - `custom.<name>`: gauges the provider set through [`Reporter::gauge`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use croupier_proto::control::v1::{MetricSample, NodeEvent};
use croupier_sdk::Reporter;
use sysinfo::Components;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::{Sampler, over_interval};
use super::{DOCKER_TIMEOUT, blocking, unix_ms};
use crate::packs::container::DockerApi;

/// When the node pack samples and reports its metrics.
#[derive(Clone, Debug)]
pub struct MetricsTimes {
    /// How often a sample is taken. Default 15 s.
    pub sample: Duration,
    /// How often the samples are sent. Default 1 min.
    pub batch: Duration,
    /// Percentages whose crossing sends the samples at once.
    pub thresholds: Thresholds,
}

impl Default for MetricsTimes {
    fn default() -> Self {
        MetricsTimes {
            sample: Duration::from_secs(15),
            batch: Duration::from_secs(60),
            thresholds: Thresholds::default(),
        }
    }
}

/// Usage percentages that count as "too high"; 0 turns one off.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// `cpu.percent`. Default 90.
    pub cpu: f64,
    /// `memory.percent`. Default 90.
    pub memory: f64,
    /// Each `disk.<mount>.used_percent`. Default 90.
    pub disk: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cpu: 90.0,
            memory: 90.0,
            disk: 90.0,
        }
    }
}

impl std::str::FromStr for Thresholds {
    type Err = String;

    /// `cpu=90,memory=85,disk=95`; names left out keep their default.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut t = Thresholds::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: write NAME=PERCENT, e.g. cpu=90"))?;
            let v = percent(v).ok_or_else(|| format!("{part:?}: the percentage must be 0-100"))?;
            match k {
                "cpu" => t.cpu = v,
                "memory" => t.memory = v,
                "disk" => t.disk = v,
                other => return Err(format!("unknown threshold {other:?}: cpu, memory or disk")),
            }
        }
        Ok(t)
    }
}

impl Thresholds {
    /// These thresholds with those an assignment's config of `node.metrics` sets
    /// (`threshold.cpu`, `threshold.memory`, `threshold.disk`: percentages), so that an admin
    /// can set them per agent or label selector (`croupier assign set … --function
    /// node.metrics --selector tier=db --config threshold.disk=80`). A value that is not a
    /// percentage is ignored.
    pub fn with_config(&self, config: &HashMap<String, String>) -> Thresholds {
        let mut t = self.clone();
        for (key, slot) in [
            ("threshold.cpu", &mut t.cpu),
            ("threshold.memory", &mut t.memory),
            ("threshold.disk", &mut t.disk),
        ] {
            if let Some(v) = config.get(key).and_then(|v| percent(v)) {
                *slot = v;
            }
        }
        t
    }
}

/// A percentage, 0-100.
fn percent(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=100.0).contains(v))
}

/// Counters kept between samples, for rates and counts over the interval.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    diskstats: HashMap<String, [u64; 4]>,
    net: HashMap<String, [u64; 4]>,
}

/// Samples and reports the node's metrics through `reporter` until `stop`.
pub(crate) async fn report(
    docker: Arc<dyn DockerApi>,
    reporter: Reporter,
    times: MetricsTimes,
    latest: super::Latest,
    assignments: croupier_sdk::provider::Assignments,
    stop: CancellationToken,
) {
    let sampler = Arc::new(tokio::sync::Mutex::new(Sampler::default()));
    let mut previous = Previous::default();
    let mut above: BTreeMap<String, bool> = BTreeMap::new();
    let mut batch = Vec::new();
    // The first sample goes out at once, so a node that just started has figures.
    let mut first = true;
    let mut batch_started = Instant::now();
    let mut tick = tokio::time::interval(times.sample);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(s) = sample(&sampler, &mut previous, docker.as_ref(), &reporter).await else {
            continue;
        };
        let limits = match assignments.get("node.metrics") {
            Some(a) => times.thresholds.with_config(&a.config),
            None => times.thresholds.clone(),
        };
        let crossed = thresholds(&s, &limits, &mut above, &reporter);
        *crate::lock(&latest) = Some(super::metrics::LatestSample {
            timestamp_ms: s.timestamp,
            values: s.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        });
        batch.push(s);
        if crossed || first || batch_started.elapsed() >= times.batch {
            first = false;
            reporter.metrics(std::mem::take(&mut batch));
            batch_started = Instant::now();
        }
    }
}

/// One sample of everything the module docs list; None when the system figures are
/// unavailable.
async fn sample(
    sampler: &Arc<tokio::sync::Mutex<Sampler>>,
    previous: &mut Previous,
    docker: &dyn DockerApi,
    reporter: &Reporter,
) -> Option<MetricSample> {
    let m = match over_interval(sampler.clone()).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "metrics sample failed");
            return None;
        }
    };
    let mut v: HashMap<String, f64> = HashMap::new();
    v.insert("cpu.percent".into(), m.cpu.usage_percent);
    if let Some(l) = &m.load_average {
        v.insert("load.1".into(), l.one);
        v.insert("load.5".into(), l.five);
        v.insert("load.15".into(), l.fifteen);
    }
    v.insert("memory.percent".into(), m.memory.used_percent);
    v.insert("memory.used_bytes".into(), m.memory.used_bytes as f64);
    v.insert("swap.used_bytes".into(), m.swap.used_bytes as f64);
    for d in m.disks.iter().filter(|d| d.name.starts_with("/dev/")) {
        let pct = super::percent_of(d.used_bytes, d.total_bytes);
        v.insert(
            format!("disk.{}.used_percent", name(&d.mount_point)),
            super::round2(pct),
        );
    }
    for n in m.networks.iter().filter(|n| keep_interface(&n.interface)) {
        let i = name(&n.interface);
        v.insert(format!("net.{i}.rx_bytes_per_sec"), n.rx_bytes_per_sec);
        v.insert(format!("net.{i}.tx_bytes_per_sec"), n.tx_bytes_per_sec);
    }
    let now = Instant::now();
    let secs = previous
        .at
        .map(|at| now.duration_since(at).as_secs_f64())
        .filter(|s| *s > 0.0);
    previous.at = Some(now);
    let (diskstats, net, temps, gpus) = blocking(|| {
        (
            read_diskstats(),
            read_net_counters(),
            temperatures(),
            gpu_usage(),
        )
    })
    .await
    .ok()?;
    for (dev, c) in &diskstats {
        if let (Some(p), Some(secs)) = (previous.diskstats.get(dev), secs) {
            let rate = |i: usize, scale: f64| {
                super::round2(c[i].saturating_sub(p[i]) as f64 * scale / secs)
            };
            v.insert(format!("diskio.{dev}.read_iops"), rate(0, 1.0));
            v.insert(format!("diskio.{dev}.read_bytes_per_sec"), rate(1, 512.0));
            v.insert(format!("diskio.{dev}.write_iops"), rate(2, 1.0));
            v.insert(format!("diskio.{dev}.write_bytes_per_sec"), rate(3, 512.0));
        }
    }
    previous.diskstats = diskstats;
    for (ifc, c) in &net {
        if let Some(p) = previous.net.get(ifc) {
            for (i, what) in ["rx_errors", "tx_errors", "rx_dropped", "tx_dropped"]
                .iter()
                .enumerate()
            {
                v.insert(
                    format!("net.{ifc}.{what}"),
                    c[i].saturating_sub(p[i]) as f64,
                );
            }
        }
    }
    previous.net = net;
    v.extend(temps);
    v.extend(gpus);
    if let Ok(Ok(containers)) =
        tokio::time::timeout(DOCKER_TIMEOUT, docker.list(true, HashMap::new())).await
    {
        let mut by_state: BTreeMap<String, f64> = ["running", "exited", "paused"]
            .iter()
            .map(|s| ((*s).to_string(), 0.0))
            .collect();
        let mut running = Vec::new();
        for c in containers {
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            if state == "running" {
                let label = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .or(c.id.clone())
                    .unwrap_or_default();
                running.push((c.id.unwrap_or_default(), label));
            }
            *by_state.entry(name(&state)).or_default() += 1.0;
        }
        for (state, n) in by_state {
            v.insert(format!("containers.{state}"), n);
        }
        v.extend(container_usage(docker, running).await);
    }
    for (k, value) in reporter.gauges() {
        v.insert(format!("custom.{}", name(&k)), value);
    }
    v.retain(|_, x| x.is_finite());
    Some(MetricSample {
        timestamp: unix_ms() as i64,
        values: v,
    })
}

/// Most running containers whose CPU and memory a sample reads (Docker's stats take ~1 s
/// each, read in parallel).
const MAX_CONTAINER_STATS: usize = 32;

/// `container.<name>.cpu_percent` and `container.<name>.memory_bytes` of running containers.
async fn container_usage(
    docker: &dyn DockerApi,
    running: Vec<(String, String)>,
) -> Vec<(String, f64)> {
    let reads = running
        .into_iter()
        .take(MAX_CONTAINER_STATS)
        .map(|(id, label)| async move {
            let got = tokio::time::timeout(Duration::from_secs(3), docker.usage(&id)).await;
            (label, got)
        });
    let mut v = Vec::new();
    for (label, got) in futures::future::join_all(reads).await {
        if let Ok(Ok((cpu, memory))) = got {
            let n = name(&label);
            v.push((format!("container.{n}.cpu_percent"), super::round2(cpu)));
            v.push((format!("container.{n}.memory_bytes"), memory as f64));
        }
    }
    v
}

/// A name part as the server accepts it: `[A-Za-z0-9._/:-]`, other characters as `_`.
fn name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._/:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn keep_interface(i: &str) -> bool {
    i != "lo" && !i.starts_with("veth")
}

/// `/proc/diskstats` of whole block devices: reads, sectors read, writes, sectors written.
fn read_diskstats() -> HashMap<String, [u64; 4]> {
    let text = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = *f.get(2)?;
            let whole = std::path::Path::new(&format!("/sys/block/{dev}")).exists();
            if !whole || dev.starts_with("loop") || dev.starts_with("ram") {
                return None;
            }
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            Some((name(dev), [n(3), n(5), n(7), n(9)]))
        })
        .collect()
}

/// Each interface's error and drop counters (`/sys/class/net/*/statistics`).
fn read_net_counters() -> HashMap<String, [u64; 4]> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let ifc = e.file_name().to_string_lossy().into_owned();
            if !keep_interface(&ifc) {
                return None;
            }
            let read = |f: &str| {
                std::fs::read_to_string(e.path().join("statistics").join(f))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Some((
                name(&ifc),
                [
                    read("rx_errors"),
                    read("tx_errors"),
                    read("rx_dropped"),
                    read("tx_dropped"),
                ],
            ))
        })
        .collect()
}

/// Temperatures the machine exposes, in °C.
fn temperatures() -> Vec<(String, f64)> {
    let Ok(components) = Components::new_with_refreshed_list() else {
        return Vec::new();
    };
    (&components)
        .into_iter()
        .filter_map(|c| {
            let t = c.temperature()?;
            Some((format!("temp.{}", name(c.label())), super::round2(t)))
        })
        .collect()
}

/// GPU use from `nvidia-smi`, when it is installed and answers.
fn gpu_usage() -> Vec<(String, f64)> {
    let Some(out) = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
    else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for (i, line) in String::from_utf8_lossy(&out.stdout).lines().enumerate() {
        let f: Vec<f64> = line
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        if let [util, mem_mib] = f[..] {
            v.push((format!("gpu.{i}.util_percent"), util));
            v.push((
                format!("gpu.{i}.memory_used_bytes"),
                mem_mib * 1024.0 * 1024.0,
            ));
        }
    }
    v
}

/// Checks `s` against the thresholds: a metric going above (or back below) its threshold is
/// a `threshold.crossed` (or `threshold.cleared`) node event. True when anything crossed, so
/// the samples go out at once.
fn thresholds(
    s: &MetricSample,
    t: &Thresholds,
    above: &mut BTreeMap<String, bool>,
    reporter: &Reporter,
) -> bool {
    let mut crossed = false;
    for (metric, value) in &s.values {
        let limit = match metric.as_str() {
            "cpu.percent" => t.cpu,
            "memory.percent" => t.memory,
            m if m.starts_with("disk.") && m.ends_with(".used_percent") => t.disk,
            _ => continue,
        };
        if limit <= 0.0 {
            continue;
        }
        let now_above = *value >= limit;
        let was_above = above.insert(metric.clone(), now_above).unwrap_or(false);
        if now_above == was_above {
            continue;
        }
        crossed = true;
        let (kind, status, word) = if now_above {
            ("threshold.crossed", "above", "above")
        } else {
            ("threshold.cleared", "below", "back below")
        };
        reporter.event(NodeEvent {
            r#type: kind.into(),
            entity_id: metric.clone(),
            status: status.into(),
            message: format!("{metric} is {value:.1}, {word} {limit}"),
            data: [
                ("metric".to_string(), metric.clone()),
                ("value".to_string(), format!("{value:.2}")),
                ("threshold".to_string(), limit.to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        });
    }
    crossed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packs::container::LocalDocker;

    #[test]
    fn an_assignments_config_overrides_thresholds() {
        let t = Thresholds::default();
        let config: HashMap<String, String> = [
            ("threshold.disk", "80"),
            ("threshold.cpu", "lots"),
            ("threshold.memory", "150"),
            ("other", "1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
        let o = t.with_config(&config);
        assert_eq!((o.cpu, o.memory, o.disk), (90.0, 90.0, 80.0));
    }

    #[test]
    fn thresholds_parse_and_cross_once_each_way() {
        let t: Thresholds = "cpu=50, disk=95".parse().unwrap();
        assert_eq!((t.cpu, t.memory, t.disk), (50.0, 90.0, 95.0));
        assert!(
            "gpu=3"
                .parse::<Thresholds>()
                .unwrap_err()
                .contains("unknown threshold")
        );
        assert!(
            "cpu=300"
                .parse::<Thresholds>()
                .unwrap_err()
                .contains("0-100")
        );
        let r = Reporter::default();
        let mut above = BTreeMap::new();
        let s = |cpu: f64| MetricSample {
            timestamp: 1,
            values: [("cpu.percent".to_string(), cpu)].into_iter().collect(),
        };
        assert!(!thresholds(&s(10.0), &t, &mut above, &r));
        assert!(thresholds(&s(70.0), &t, &mut above, &r));
        assert!(!thresholds(&s(80.0), &t, &mut above, &r));
        assert!(thresholds(&s(20.0), &t, &mut above, &r));
        assert_eq!(r.queued(), 2);
    }

    #[tokio::test]
    async fn a_sample_reads_what_proc_says() {
        let sampler = Arc::new(tokio::sync::Mutex::new(Sampler::default()));
        let mut previous = Previous::default();
        let docker = LocalDocker::new();
        let r = Reporter::default();
        r.gauge("players online", 42.0);
        let first = sample(&sampler, &mut previous, &docker, &r).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = sample(&sampler, &mut previous, &docker, &r).await.unwrap();
        let v = &s.values;
        assert!((0.0..=100.0).contains(&v["cpu.percent"]));
        assert!(v["memory.used_bytes"] > 0.0);
        assert_eq!(v["custom.players_online"], 42.0);
        // Counters over the interval appear from the second sample on.
        assert!(!first.values.keys().any(|k| k.ends_with(".read_iops")));
        let disks: Vec<&String> = v.keys().filter(|k| k.starts_with("diskio.")).collect();
        let devices = read_diskstats();
        assert_eq!(disks.len(), devices.len() * 4, "{disks:?}");
        assert!(v.keys().all(|k| {
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/:-".contains(c))
        }));
    }
}
