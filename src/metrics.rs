//! The server's Prometheus metrics: the names this crate records, the recorder the whole process
//! shares, and the gauges read from the registry at scrape time.
//!
//! Every crate records through the `metrics` facade under names defined in its own `metrics`
//! module (`croupier_control::metrics`, `croupier_function::metrics`, this one); the recorder
//! installed here renders them all on `/metrics` ([`crate::http`]).
//!
//! Label cardinality is kept bounded on purpose: no agent ids, request ids, job ids or caller
//! identities are labels. `rpc` labels come from the methods the protos define (anything else is
//! `other`), function labels only name functions the registry knows (others are
//! `(unregistered)`), and the per-agent gauges are keyed by game, env and node state.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use croupier_control::plane::ControlPlane;
use croupier_registry::view::{Filter, RegistryView};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

/// Histogram: time the server took to answer an rpc (to its response headers: the whole call
/// for unary rpcs, the opening for streams), seconds, by `rpc`.
pub const RPC_SECONDS: &str = "croupier_rpc_duration_seconds";
/// Counter: rpcs answered, by `rpc` and `code` (the gRPC status name; `OK` for a stream that
/// opened).
pub const RPC_TOTAL: &str = "croupier_rpc_total";
/// Gauge: agents registered with a live lease, by `game`, `env` and `state` (normal,
/// maintenance, disabled), read from the registry at scrape time.
pub const AGENTS_ONLINE: &str = "croupier_agents_online";
/// Gauge: the latest value of a node metric (node pack), by `node` and `metric`.
pub const NODE_METRIC: &str = "croupier_node_metric";
/// Gauge: 1 while this server is ready (store reachable, not draining).
pub const READY: &str = "croupier_ready";

/// Buckets of every `*_seconds` histogram: 100 µs to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Turns recording on or off for the whole process (what was recorded stays exported), cached
/// handles included. Only `croupier bench invoke --metrics-rounds` uses it, to measure what
/// metrics cost.
pub fn set_recording(on: bool) {
    croupier_proto::metric_handles::set_recording(on);
}

/// The Prometheus recorder behind the switch of [`set_recording`]: off, every metric is a
/// no-op handle.
struct Switch(metrics_exporter_prometheus::PrometheusRecorder);

impl metrics::Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if croupier_proto::metric_handles::recording() {
            self.0.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if croupier_proto::metric_handles::recording() {
            self.0.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if croupier_proto::metric_handles::recording() {
            self.0.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

/// The process's Prometheus recorder, installed on first use (every server in the process
/// shares it); `None` when another recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(Switch(recorder)).ok()?;
            describe();
            metrics_process::Collector::default().describe();
            let h = handle.clone();
            croupier_proto::task::spawn("metrics upkeep", async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(RPC_SECONDS, Unit::Seconds, "Time to answer an rpc, by rpc.");
    describe_counter!(RPC_TOTAL, "Rpcs answered, by rpc and gRPC status code.");
    describe_gauge!(
        AGENTS_ONLINE,
        "Agents registered with a live lease, by game, env and node state."
    );
    describe_gauge!(
        NODE_METRIC,
        "The latest value an agent's node pack reported for a node metric, by node and metric."
    );
    describe_gauge!(
        READY,
        "1 while the server is ready: store reachable, not draining."
    );
    croupier_control::metrics::describe();
    croupier_registry::store::metered::describe();
    croupier_registry::metrics::describe();
    croupier_function::metrics::describe();
}

/// The gauges read from the registry when `/metrics` is scraped.
pub struct ScrapeGauges {
    view: Arc<RegistryView>,
    plane: Arc<ControlPlane>,
    jobs: Option<Arc<croupier_function::jobs::JobManager>>,
    /// The (game, env, state) series set last time, so a group that emptied drops to 0.
    seen: Mutex<BTreeSet<(String, String, String)>>,
    /// The (node, metric) series set last time, so one whose history aged out becomes NaN.
    seen_nodes: Mutex<BTreeSet<(String, String)>>,
    process: metrics_process::Collector,
}

impl ScrapeGauges {
    /// Gauges over `view`.
    pub fn new(view: Arc<RegistryView>, plane: Arc<ControlPlane>) -> ScrapeGauges {
        ScrapeGauges {
            view,
            plane,
            jobs: None,
            seen: Mutex::default(),
            seen_nodes: Mutex::default(),
            process: metrics_process::Collector::default(),
        }
    }

    /// Also reports the jobs `jobs` runs.
    pub fn with_jobs(mut self, jobs: Arc<croupier_function::jobs::JobManager>) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// Sets the gauges to what the registry and the process hold now.
    pub fn update(&self) {
        self.process.collect();
        if let Some(jobs) = &self.jobs {
            metrics::gauge!(croupier_function::metrics::JOBS_RUNNING).set(jobs.running() as f64);
        }
        let (tunnels, in_flight) = self.plane.load_summary();
        metrics::gauge!(croupier_control::metrics::TUNNELS_OPEN).set(tunnels as f64);
        metrics::gauge!(croupier_control::metrics::CALLS_IN_FLIGHT).set(in_flight as f64);
        let mut counts: std::collections::BTreeMap<(String, String, String), f64> =
            std::collections::BTreeMap::new();
        for (agent, node) in self.view.agents(&Filter::default()) {
            let state = node.state.as_str();
            *counts
                .entry((agent.game_id.clone(), agent.env.clone(), state.into()))
                .or_default() += 1.0;
        }
        let mut seen = self.seen.lock();
        for key in seen.iter() {
            if !counts.contains_key(key) {
                let (g, e, s) = key.clone();
                metrics::gauge!(AGENTS_ONLINE, "game" => g, "env" => e, "state" => s).set(0.0);
            }
        }
        seen.clear();
        for (key, n) in counts {
            let (g, e, s) = key.clone();
            metrics::gauge!(AGENTS_ONLINE, "game" => g, "env" => e, "state" => s).set(n);
            seen.insert(key);
        }
        drop(seen);
        self.node_metrics();
    }

    /// The latest value of every node metric this server keeps, one series per node and
    /// metric; a series whose history aged out reads NaN.
    fn node_metrics(&self) {
        let latest = self.plane.latest_node_metrics();
        let mut seen = self.seen_nodes.lock();
        let now: BTreeSet<(String, String)> = latest
            .iter()
            .map(|(n, m, _)| (n.clone(), m.clone()))
            .collect();
        for (node, metric) in seen.difference(&now) {
            metrics::gauge!(NODE_METRIC, "node" => node.clone(), "metric" => metric.clone())
                .set(f64::NAN);
        }
        for (node, metric, value) in latest {
            metrics::gauge!(NODE_METRIC, "node" => node, "metric" => metric).set(value);
        }
        *seen = now;
    }
}
