//! [`MetricsHistory`]: the metric samples of the nodes this server holds, kept in memory for a
//! bounded time: raw samples for the recent part (`raw_for`, default 1 h), per-step minimum,
//! maximum and average for the rest (`step`, default 5 min, up to `keep`, default 24 h).
//!
//! Memory: a raw point is 16 bytes (milliseconds and an `f32`), a step 20 bytes. With the
//! defaults and one sample every 15 s, a metric costs 240 × 16 + 288 × 20 = 9.4 KiB at most,
//! plus its name; a node reporting 20 metrics about 190 KiB once it has a day of history
//! ([`MetricsHistory::bytes`] counts it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use croupier_proto::control::v1::{MetricPoint, MetricSample, MetricSeries};
use parking_lot::{Mutex, RwLock};

/// Most metrics one node may have; samples naming more are cut to the first ones.
pub const MAX_METRICS_PER_NODE: usize = 128;
/// Most samples in one report.
pub const MAX_SAMPLES_PER_REPORT: usize = 1000;

/// How long metrics are kept, and how.
#[derive(Clone, Copy, Debug)]
pub struct HistoryTimes {
    /// Raw samples are kept this long. Default 1 h.
    pub raw_for: Duration,
    /// Older samples are kept as per-step min/max/average. Default 5 min.
    pub step: Duration,
    /// Nothing older than this is kept. Default 24 h.
    pub keep: Duration,
}

impl Default for HistoryTimes {
    fn default() -> Self {
        HistoryTimes {
            raw_for: Duration::from_secs(3600),
            step: Duration::from_secs(300),
            keep: Duration::from_secs(24 * 3600),
        }
    }
}

/// The history of every node's metrics on this server.
pub struct MetricsHistory {
    nodes: RwLock<HashMap<String, Mutex<NodeSeries>>>,
    times: HistoryTimes,
}

#[derive(Default)]
struct NodeSeries {
    /// The node's game and environment when it last reported.
    scope: (String, String),
    series: BTreeMap<String, Series>,
}

#[derive(Default)]
struct Series {
    /// (Unix ms, value), oldest first.
    raw: VecDeque<(i64, f32)>,
    /// Per-step aggregates, oldest first.
    steps: VecDeque<Step>,
}

struct Step {
    start: u32,
    min: f32,
    max: f32,
    sum: f32,
    count: u32,
}

impl MetricsHistory {
    /// An empty history kept as `times` says.
    pub fn new(times: HistoryTimes) -> Self {
        MetricsHistory {
            nodes: RwLock::new(HashMap::new()),
            times,
        }
    }

    /// Adds the samples of `node` (in game and env `scope`; at most [`MAX_METRICS_PER_NODE`]
    /// metrics per node), dropping what has aged out.
    pub fn record(&self, node: &str, scope: (&str, &str), samples: &[MetricSample], now_ms: i64) {
        if !self.nodes.read().contains_key(node) {
            self.nodes.write().entry(node.to_string()).or_default();
        }
        let nodes = self.nodes.read();
        let Some(n) = nodes.get(node) else { return };
        let mut n = n.lock();
        if n.scope.0 != scope.0 || n.scope.1 != scope.1 {
            n.scope = (scope.0.to_string(), scope.1.to_string());
        }
        let step = self.times.step.as_secs().max(1) as u32;
        for s in samples {
            let at_ms = s.timestamp.max(0);
            let at = (at_ms / 1000) as u32;
            for (name, value) in &s.values {
                if !n.series.contains_key(name) && n.series.len() >= MAX_METRICS_PER_NODE {
                    continue;
                }
                let series = n.series.entry(name.clone()).or_default();
                let v = *value as f32;
                series.raw.push_back((at_ms, v));
                let start = at - at % step;
                match series.steps.back_mut() {
                    Some(b) if b.start == start => {
                        b.min = b.min.min(v);
                        b.max = b.max.max(v);
                        b.sum += v;
                        b.count += 1;
                    }
                    _ => series.steps.push_back(Step {
                        start,
                        min: v,
                        max: v,
                        sum: v,
                        count: 1,
                    }),
                }
            }
        }
        self.prune(&mut n, now_ms);
    }

    fn prune(&self, n: &mut NodeSeries, now_ms: i64) {
        let now = (now_ms / 1000) as u32;
        let raw_cut = now_ms - self.times.raw_for.as_millis() as i64;
        let keep_cut = now.saturating_sub(self.times.keep.as_secs() as u32);
        for series in n.series.values_mut() {
            while series.raw.front().is_some_and(|(t, _)| *t < raw_cut) {
                series.raw.pop_front();
            }
            while series.steps.front().is_some_and(|b| b.start < keep_cut) {
                series.steps.pop_front();
            }
        }
        n.series
            .retain(|_, s| !s.raw.is_empty() || !s.steps.is_empty());
    }

    /// Drops what has aged out of every node's history, and nodes left with nothing (gone for
    /// longer than `keep`).
    pub fn sweep(&self, now_ms: i64) {
        let mut nodes = self.nodes.write();
        nodes.retain(|_, n| {
            let n = n.get_mut();
            self.prune(n, now_ms);
            !n.series.is_empty()
        });
    }

    /// The game and environment `node` last reported in, if it has a history here.
    pub fn scope(&self, node: &str) -> Option<(String, String)> {
        self.nodes.read().get(node).map(|n| n.lock().scope.clone())
    }

    /// The latest value of each metric of each node: (node, metric, value).
    pub fn latest(&self) -> Vec<(String, String, f64)> {
        let nodes = self.nodes.read();
        let mut out = Vec::new();
        for (node, n) in nodes.iter() {
            for (name, s) in &n.lock().series {
                if let Some((_, v)) = s.raw.back() {
                    out.push((node.clone(), name.clone(), f64::from(*v)));
                }
            }
        }
        out
    }

    /// A node's series from `since_ms` on, for the metrics `wanted` (names, or prefixes ending
    /// with "."; empty for all): raw samples from `raw_since` on, per-step aggregates before.
    /// Returns the series and `raw_since` (Unix ms).
    pub fn query(
        &self,
        node: &str,
        since_ms: i64,
        wanted: &[String],
        now_ms: i64,
    ) -> Option<(Vec<MetricSeries>, i64)> {
        let nodes = self.nodes.read();
        let n = nodes.get(node)?.lock();
        let raw_since = now_ms - self.times.raw_for.as_millis() as i64;
        let since = (since_ms.max(0) / 1000) as u32;
        let raw_start = (raw_since.max(0) / 1000) as u32;
        let matches = |name: &str| {
            wanted.is_empty()
                || wanted.iter().any(|w| {
                    if w.ends_with('.') {
                        name.starts_with(w.as_str())
                    } else {
                        name == w
                    }
                })
        };
        let series = n
            .series
            .iter()
            .filter(|(name, _)| matches(name))
            .map(|(name, s)| {
                let mut points: Vec<MetricPoint> = s
                    .steps
                    .iter()
                    .filter(|b| b.start + self.step_secs() > since && b.start < raw_start)
                    .map(|b| MetricPoint {
                        timestamp: i64::from(b.start) * 1000,
                        value: f64::from(b.sum / b.count.max(1) as f32),
                        min: f64::from(b.min),
                        max: f64::from(b.max),
                    })
                    .collect();
                points.extend(
                    s.raw
                        .iter()
                        .filter(|(t, _)| *t >= since_ms.max(raw_since))
                        .map(|(t, v)| MetricPoint {
                            timestamp: *t,
                            value: f64::from(*v),
                            min: f64::from(*v),
                            max: f64::from(*v),
                        }),
                );
                MetricSeries {
                    name: name.clone(),
                    points,
                }
            })
            .collect();
        Some((series, raw_since))
    }

    fn step_secs(&self) -> u32 {
        self.times.step.as_secs().max(1) as u32
    }

    /// The step of aggregated points.
    pub fn step(&self) -> Duration {
        self.times.step
    }

    /// Bytes the history holds for `node` (points, steps and names; not allocator slack).
    pub fn bytes(&self, node: &str) -> usize {
        let nodes = self.nodes.read();
        let Some(n) = nodes.get(node) else { return 0 };
        n.lock()
            .series
            .iter()
            .map(|(name, s)| {
                name.len()
                    + std::mem::size_of::<Series>()
                    + s.raw.len() * std::mem::size_of::<(i64, f32)>()
                    + s.steps.len() * std::mem::size_of::<Step>()
            })
            .sum()
    }
}

/// Checks a report: at most [`MAX_SAMPLES_PER_REPORT`] samples, metric names of 1-128
/// characters of `[A-Za-z0-9._/:-]`, finite values.
pub fn check_report(samples: &[MetricSample]) -> Result<(), String> {
    if samples.len() > MAX_SAMPLES_PER_REPORT {
        return Err(format!(
            "a metrics report has {} samples; at most {MAX_SAMPLES_PER_REPORT}",
            samples.len()
        ));
    }
    for s in samples {
        for (name, v) in &s.values {
            let ok = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/:-".contains(c));
            if !ok {
                return Err(format!(
                    "metric name {:?} must be 1-128 characters of [A-Za-z0-9._/:-]",
                    croupier_proto::limits::excerpt(name, 64)
                ));
            }
            if !v.is_finite() {
                return Err(format!("metric {name} is {v}, not a finite number"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: i64, v: f64) -> MetricSample {
        MetricSample {
            timestamp: at_s * 1000,
            values: [
                ("cpu.percent".to_string(), v),
                ("memory.percent".to_string(), 50.0),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn recent_samples_are_raw_older_ones_averaged_per_step() {
        let h = MetricsHistory::new(HistoryTimes {
            raw_for: Duration::from_secs(60),
            step: Duration::from_secs(30),
            keep: Duration::from_secs(300),
        });
        let t0 = 1_800_000_000; // a multiple of 30
        // Every 10 s for 4 minutes: values 0, 1, 2, ...
        for i in 0..24 {
            h.record(
                "n1",
                ("g", "e"),
                &[sample(t0 + i * 10, i as f64)],
                (t0 + i * 10) * 1000,
            );
        }
        let now = (t0 + 230) * 1000;
        let (series, raw_since) = h.query("n1", t0 * 1000, &["cpu.".into()], now).unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(raw_since, now - 60_000);
        let pts = &series[0].points;
        // Steps before the raw window: [t0, t0+30) holds 0,1,2 → avg 1, min 0, max 2.
        assert_eq!(pts[0].timestamp, t0 * 1000);
        assert_eq!((pts[0].value, pts[0].min, pts[0].max), (1.0, 0.0, 2.0));
        // The last points are raw samples.
        let last = pts.last().unwrap();
        assert_eq!(last.timestamp, (t0 + 230) * 1000);
        assert_eq!(last.value, 23.0);
        assert!(pts.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
        // Names and prefixes select; the latest values are exported.
        let (all, _) = h.query("n1", 0, &[], now).unwrap();
        assert_eq!(all.len(), 2);
        assert!(
            h.latest()
                .contains(&("n1".into(), "cpu.percent".into(), 23.0))
        );
        assert!(h.query("n2", 0, &[], now).is_none());
    }

    #[test]
    fn old_data_ages_out_and_the_metric_count_is_bounded() {
        let h = MetricsHistory::new(HistoryTimes {
            raw_for: Duration::from_secs(60),
            step: Duration::from_secs(30),
            keep: Duration::from_secs(120),
        });
        let t0 = 1_800_000_000;
        h.record("n1", ("g", "e"), &[sample(t0, 1.0)], t0 * 1000);
        h.record(
            "n1",
            ("g", "e"),
            &[sample(t0 + 600, 2.0)],
            (t0 + 600) * 1000,
        );
        let (series, _) = h
            .query("n1", 0, &["cpu.percent".into()], (t0 + 600) * 1000)
            .unwrap();
        assert_eq!(series[0].points.len(), 1, "{series:?}");
        let many = MetricSample {
            timestamp: (t0 + 601) * 1000,
            values: (0..200).map(|i| (format!("m{i}"), 1.0)).collect(),
        };
        h.record("n1", ("g", "e"), &[many], (t0 + 601) * 1000);
        let (all, _) = h.query("n1", 0, &[], (t0 + 601) * 1000).unwrap();
        assert_eq!(all.len(), MAX_METRICS_PER_NODE);
        assert!(h.bytes("n1") > 0);
        assert_eq!(h.scope("n1").unwrap(), ("g".to_string(), "e".to_string()));
        // A day later, the node that stopped reporting is gone.
        h.sweep((t0 + 601 + 2 * 86_400) * 1000);
        assert!(h.scope("n1").is_none());
    }

    #[test]
    fn a_day_of_node_pack_metrics_fits_in_the_stated_memory() {
        let h = MetricsHistory::new(HistoryTimes::default());
        let t0: i64 = 1_800_000_000;
        let names: Vec<String> = (0..20).map(|i| format!("node.metric.{i}")).collect();
        for i in 0..(24 * 3600 / 15) {
            let at = t0 + i * 15;
            let s = MetricSample {
                timestamp: at * 1000,
                values: names.iter().map(|n| (n.clone(), i as f64)).collect(),
            };
            h.record("n1", ("g", "e"), &[s], at * 1000);
        }
        let bytes = h.bytes("n1");
        assert!(
            bytes <= 200 * 1024,
            "{bytes} bytes for 20 metrics over a day"
        );
    }

    #[test]
    fn reports_are_checked() {
        assert!(check_report(&[sample(1, 1.0)]).is_ok());
        let bad = MetricSample {
            timestamp: 1,
            values: [("bad name".to_string(), 1.0)].into_iter().collect(),
        };
        assert!(
            check_report(&[bad])
                .unwrap_err()
                .contains("[A-Za-z0-9._/:-]")
        );
        let nan = MetricSample {
            timestamp: 1,
            values: [("x".to_string(), f64::NAN)].into_iter().collect(),
        };
        assert!(
            check_report(&[nan])
                .unwrap_err()
                .contains("not a finite number")
        );
    }
}
