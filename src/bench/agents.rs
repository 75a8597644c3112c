//! `croupier bench agents`: many agents against servers on etcd. In one run it
//! - starts two `croupier server` processes (a and b) on the given etcd, under a fresh
//!   namespace;
//! - registers N lightweight agents with server a (real sessions, each with its own certificate
//!   and connection: `RegisterAgent`, a `Connect` tunnel, heartbeats every `--heartbeat`;
//!   `load_agent`) and reports the rate;
//! - holds them heartbeating for `--hold` and reports server a's CPU use and resident memory
//!   (from `/proc`), and the memory per agent against the idle server; then holds them as long
//!   again with heartbeats by rpc instead of over the tunnel, to compare;
//! - opens `--watchers` `WatchRegistrations` streams on server b and measures how long each
//!   takes to see a change made through server a (node state flips);
//! - measures invoke throughput to a real agent held by server a, called through a (the owner)
//!   and through b (forwarded), with each server's CPU per call;
//! - kills server a and starts it again on the same address: every agent reconnects with the
//!   SDK's backoff, and the time until all are registered and online again is the storm's.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use croupier_proto::common::v1::{FunctionDescriptor, NodeState};
use croupier_proto::registry::v1::WatchRegistrationsRequest;
use croupier_sdk::{CallOptions, Client, HandlerError, Provider, ProviderConfig, TlsFiles};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::load_agent::{LoadAgent, LoadStats};
use crate::certs::{CertsInit, init};

/// Arguments of `croupier bench agents`.
#[derive(Args, Debug, Clone)]
pub struct AgentsBenchArgs {
    /// Lightweight agents.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// etcd client URLs, comma-separated (start one with e.g. `etcd --data-dir /tmp/etcd`).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// Heartbeat interval the servers give agents.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// How long all agents heartbeat while server CPU and memory are measured.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Watch-latency samples.
    #[arg(long, default_value_t = 20)]
    pub changes: u32,
    /// Registration watchers on server b.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Skip the reconnect storm (killing and restarting server a).
    #[arg(long)]
    pub skip_storm: bool,
    /// Length of each invoke-throughput phase.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub invoke_duration: Duration,
}

/// A `croupier server` child process, killed on drop.
struct ServerProc {
    child: Child,
    url: String,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProc {
    fn start(
        dir: &std::path::Path,
        id: &str,
        args: &AgentsBenchArgs,
        ns: &str,
        listen: &str,
    ) -> anyhow::Result<ServerProc> {
        let exe = std::env::current_exe().context("finding the croupier binary")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("server-{id}.log")))?;
        let mut child = Command::new(exe)
            .args(["--log", "warn", "server", "--listen", listen])
            .args(["--server-id", id, "--store", "etcd", "--etcd-namespace", ns])
            .args(["--etcd-endpoints", &args.etcd_endpoints.join(",")])
            .args([
                "--heartbeat-interval",
                &humantime::format_duration(args.heartbeat).to_string(),
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("data-{id}")))
            .arg("--tls-dir")
            .arg(dir.join("certs"))
            .env("CROUPIER_AUDIT_LOG", "false")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting croupier server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let url = crate::child::server_url(&crate::child::lines(stdout), Duration::from_secs(30))
            .with_context(|| format!("server {id} did not start; see {}", dir.display()))?;
        Ok(ServerProc { child, url })
    }

    /// CPU seconds (user + system) so far, from /proc.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::child::cpu_seconds(self.child.id()).context("reading the server's CPU time")
    }

    /// Resident memory in MiB, from /proc.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        crate::child::rss_mib(self.child.id()).context("reading the server's memory")
    }
}

/// Runs the benchmark and prints the figures.
pub async fn agents(args: AgentsBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("croupier-bench-agents-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let certs = dir.join("certs");
    let ids: Vec<String> = (0..args.agents).map(|i| format!("sim-{i}")).collect();
    let t = Instant::now();
    let mut agent_ids = ids.clone();
    agent_ids.push("echo".into());
    init(&CertsInit {
        dir: certs.clone(),
        agents: agent_ids,
        clients: vec!["bench".into()],
        admins: vec!["bench".into()],
        servers: vec![],
        hosts: vec![],
        force: false,
        ..Default::default()
    })?;
    eprintln!(
        "certificates for {} agents in {:.1?}",
        args.agents,
        t.elapsed()
    );
    let ns = format!("/bench-{}", uuid::Uuid::new_v4());
    let mut a = ServerProc::start(&dir, "a", &args, &ns, "127.0.0.1:0")?;
    let b = ServerProc::start(&dir, "b", &args, &ns, "127.0.0.1:0")?;
    let client_a = Client::connect(&a.url, &TlsFiles::from_dir(&certs, "client-bench")).await?;
    client_a.agents("bench", "scale").await?;
    let idle_rss = a.rss_mib()?;

    // Registration.
    let stop = CancellationToken::new();
    let stats = Arc::new(LoadStats::default());
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut pems = Vec::with_capacity(ids.len());
    for id in &ids {
        pems.push(TlsFiles::from_dir(&certs, &format!("agent-{id}")).load()?);
    }
    let cpu_before = a.cpu_seconds()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (id, pem)) in ids.iter().zip(pems).enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        let agent = LoadAgent {
            url: a.url.clone(),
            pem,
            id: id.clone(),
            source: super::load_agent::source(i),
            stop: stop.clone(),
            stats: stats.clone(),
        };
        tasks.push(croupier_proto::task::spawn(
            "sim agent",
            agent.run(Some(permit)),
        ));
    }
    wait_registered(&stats, args.agents as u64, Duration::from_secs(600)).await?;
    let register_time = started.elapsed();
    let register_cpu = a.cpu_seconds()? - cpu_before;
    let online = online_agents(&client_a).await?;
    if online != args.agents {
        bail!(
            "{online} of {} agents are registered and online",
            args.agents
        );
    }

    // Holding: everyone heartbeats, over the tunnel and then by rpc.
    let (hold_cpu, hold_heartbeats) = hold(&a, &stats, args.hold).await?;
    let rss = a.rss_mib()?;
    stats.unary_heartbeats.store(true, Ordering::Relaxed);
    let (unary_cpu, unary_heartbeats) = hold(&a, &stats, args.hold).await?;
    stats.unary_heartbeats.store(false, Ordering::Relaxed);

    let watch_h = watch_latency(&a, &b, &certs, &args).await?;

    // Invoke throughput to a real agent held by a: via a, and via b.
    let echo_stop = CancellationToken::new();
    let provider = Provider::new({
        let mut c = ProviderConfig::new(
            vec![a.url.clone()],
            "echo",
            TlsFiles::from_dir(&certs, "agent-echo"),
        );
        c.game_id = "bench".into();
        c.env = "scale".into();
        c
    })
    .function(
        FunctionDescriptor {
            id: "bench.echo".into(),
            ..Default::default()
        },
        |call| async move { Ok::<_, HandlerError>(call.payload) },
    );
    let mut state = provider.state();
    let echo = croupier_proto::task::spawn("agents", provider.run(echo_stop.clone()));
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected)).await??;
    let opts = CallOptions {
        game_id: "bench".into(),
        env: "scale".into(),
        ..Default::default()
    };
    let client_b = Client::connect(&b.url, &TlsFiles::from_dir(&certs, "client-bench")).await?;
    let cpu = (a.cpu_seconds()?, b.cpu_seconds()?);
    let (via_owner, owner_calls) = throughput(&client_a, &opts, args.invoke_duration).await?;
    let owner_cpu_a = (a.cpu_seconds()? - cpu.0) / owner_calls as f64 * 1e6;
    // b may need a moment to see the echo agent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client_b
        .invoke("bench.echo", serde_json::json!({}), &opts)
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("server b cannot reach the echo agent held by a");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = (a.cpu_seconds()?, b.cpu_seconds()?);
    let (via_other, other_calls) = throughput(&client_b, &opts, args.invoke_duration).await?;
    let fwd_cpu = (
        (a.cpu_seconds()? - cpu.0) / other_calls as f64 * 1e6,
        (b.cpu_seconds()? - cpu.1) / other_calls as f64 * 1e6,
    );
    echo_stop.cancel();
    let _ = echo.await;

    let storm = if args.skip_storm {
        None
    } else {
        Some(reconnect_storm(&mut a, &dir, &args, &ns, &stats, &certs).await?)
    };

    println!(
        "croupier bench agents: {} lightweight agents (own certificate and connection each), \
         servers a and b on etcd {}\n",
        args.agents,
        args.etcd_endpoints.join(",")
    );
    println!(
        "register all:            {:.1} s ({:.0} agents/s; server a used {:.2} CPU-s, {:.0} µs per registration)",
        register_time.as_secs_f64(),
        args.agents as f64 / register_time.as_secs_f64(),
        register_cpu,
        register_cpu / args.agents as f64 * 1e6
    );
    println!(
        "holding, heartbeat {:?} over the tunnel: server a {:.1} % of one core, {:.0} MiB resident ({:.0} idle, {:.1} KiB per agent); \
         {} heartbeats in {:?} ({:.0}/s)",
        args.heartbeat,
        hold_cpu * 100.0,
        rss,
        idle_rss,
        (rss - idle_rss) * 1024.0 / args.agents as f64,
        hold_heartbeats,
        args.hold,
        hold_heartbeats as f64 / args.hold.as_secs_f64()
    );
    println!(
        "holding, heartbeats by rpc instead: server a {:.1} % of one core; {} heartbeats ({:.0}/s)",
        unary_cpu * 100.0,
        unary_heartbeats,
        unary_heartbeats as f64 / args.hold.as_secs_f64()
    );
    println!(
        "change via a seen by {} watchers on b ({} changes, {} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.watchers,
        args.changes,
        watch_h.len(),
        watch_h.value_at_quantile(0.5) as f64 / 1000.0,
        watch_h.value_at_quantile(0.99) as f64 / 1000.0,
        watch_h.max() as f64 / 1000.0
    );
    println!(
        "invoke, concurrency 32, {:?}: via the owner {:.0}/s, via another replica {:.0}/s (ratio {:.2}); \
         CPU per call: owner path a {:.0} µs, forwarded path a {:.0} µs + b {:.0} µs",
        args.invoke_duration,
        via_owner,
        via_other,
        via_other / via_owner,
        owner_cpu_a,
        fwd_cpu.0,
        fwd_cpu.1
    );
    if let Some(s) = storm {
        println!(
            "reconnect storm (server a killed and started again): all {} agents online again {:.1} s \
             after the restart ({:.1} s after the kill); {} failed attempts; server a used {:.1} CPU-s",
            args.agents,
            s.settled.as_secs_f64(),
            s.since_kill.as_secs_f64(),
            s.failures,
            s.cpu
        );
        for (reason, n) in stats.top_reasons(5) {
            println!("  {n:>6} × {reason}");
        }
    }

    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Holds the agents for `hold`: server a's share of one core, and the heartbeats sent.
async fn hold(a: &ServerProc, stats: &LoadStats, hold: Duration) -> anyhow::Result<(f64, u64)> {
    let cpu0 = a.cpu_seconds()?;
    let hb0 = stats.heartbeats.load(Ordering::Relaxed);
    tokio::time::sleep(hold).await;
    let cpu = (a.cpu_seconds()? - cpu0) / hold.as_secs_f64();
    Ok((cpu, stats.heartbeats.load(Ordering::Relaxed) - hb0))
}

/// Waits until `stats` counts `n` registrations.
pub(super) async fn wait_registered(
    stats: &LoadStats,
    n: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while stats.registrations.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} registrations after {limit:?}",
                stats.registrations.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Lightweight agents registered and online, as server a lists them.
async fn online_agents(client: &Client) -> anyhow::Result<usize> {
    Ok(client
        .agents("bench", "scale")
        .await?
        .iter()
        .filter(|a| a.online && a.agent_id.starts_with("sim-"))
        .count())
}

/// `--watchers` watchers on b (50 streams per connection); for each of `--changes` node state
/// flips through a, the time until every watcher saw it.
async fn watch_latency(
    a: &ServerProc,
    b: &ServerProc,
    certs: &std::path::Path,
    args: &AgentsBenchArgs,
) -> anyhow::Result<Histogram<u64>> {
    let admin = Client::connect(&a.url, &TlsFiles::from_dir(certs, "admin-bench")).await?;
    let base = Instant::now();
    // Nanoseconds after `base` at which the current change was made.
    let changed_at = Arc::new(AtomicU64::new(0));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut clients = Vec::new();
    let mut watches = Vec::new();
    for i in 0..args.watchers.max(1) {
        if i % 50 == 0 {
            clients
                .push(Client::connect(&b.url, &TlsFiles::from_dir(certs, "client-bench")).await?);
        }
        let mut watch = clients
            .last()
            .context("a watcher's client")?
            .watch(WatchRegistrationsRequest {
                function_id: "bench.noop".into(),
                game_id: "bench".into(),
                env: "scale".into(),
                start_revision: 0,
            })
            .await?;
        // Skip the snapshot.
        while let Some(ev) = watch.message().await? {
            if ev.r#type == croupier_proto::registry::v1::EventType::Synced as i32 {
                break;
            }
        }
        let (changed_at, seen_tx) = (changed_at.clone(), seen_tx.clone());
        watches.push(croupier_proto::task::spawn("watcher", async move {
            while let Ok(Some(ev)) = watch.message().await {
                if ev.agent_id == "sim-0" {
                    let at = base.elapsed().as_nanos() as u64;
                    let _ = seen_tx.send(at.saturating_sub(changed_at.load(Ordering::Relaxed)));
                }
            }
        }));
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..args.changes {
        let state = if i % 2 == 0 {
            NodeState::Maintenance
        } else {
            NodeState::Normal
        };
        changed_at.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        admin.set_node_state("sim-0", state, "bench").await?;
        for _ in 0..args.watchers.max(1) {
            let nanos = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                .await
                .context("a watcher did not see a change within 30 s")?
                .context("watchers ended")?;
            h.record((nanos / 1000).max(1))?;
        }
    }
    for w in watches {
        w.abort();
    }
    Ok(h)
}

/// What the reconnect storm measured.
struct Storm {
    settled: Duration,
    since_kill: Duration,
    failures: u64,
    cpu: f64,
}

/// Kills server a, starts it again on its address, and waits until every lightweight agent is
/// registered with it and online.
async fn reconnect_storm(
    a: &mut ServerProc,
    dir: &std::path::Path,
    args: &AgentsBenchArgs,
    ns: &str,
    stats: &LoadStats,
    certs: &std::path::Path,
) -> anyhow::Result<Storm> {
    let listen = a.url.trim_start_matches("https://").to_string();
    let registered = stats.registrations.load(Ordering::Relaxed);
    stats.reasons.lock().clear();
    let failures = stats.failures.load(Ordering::Relaxed);
    let killed = Instant::now();
    let _ = a.child.kill();
    let _ = a.child.wait();
    *a = ServerProc::start(dir, "a", args, ns, &listen)?;
    let restarted = Instant::now();
    let cpu0 = a.cpu_seconds()?;
    wait_registered(
        stats,
        registered + args.agents as u64,
        Duration::from_secs(300),
    )
    .await?;
    let client = Client::connect(&a.url, &TlsFiles::from_dir(certs, "client-bench")).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let online = online_agents(&client).await?;
        if online == args.agents {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after the storm {online} of {} agents are online",
                args.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Storm {
        settled: restarted.elapsed(),
        since_kill: killed.elapsed(),
        failures: stats.failures.load(Ordering::Relaxed) - failures,
        cpu: a.cpu_seconds()? - cpu0,
    })
}

/// Calls per second at concurrency 32 for `duration`, and the calls made.
async fn throughput(
    client: &Client,
    opts: &CallOptions,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let stop_at = Instant::now() + duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, opts, done) = (client.clone(), opts.clone(), done.clone());
        tasks.push(croupier_proto::task::spawn("throughput", async move {
            while Instant::now() < stop_at {
                let r = client
                    .invoke("bench.echo", serde_json::json!({"x": 1}), &opts)
                    .await?;
                anyhow::ensure!(r.success, "bench.echo failed: {}", r.error);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let calls = done.load(Ordering::Relaxed);
    Ok((calls as f64 / duration.as_secs_f64(), calls))
}
