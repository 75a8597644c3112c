//! `croupier bench agents`: many agents against servers on etcd. In one run it
//! - starts two `croupier server` processes (a and b) on the given etcd, under a fresh
//!   namespace;
//! - registers N lightweight agents with server a (real sessions, each with its own certificate
//!   and connection: `RegisterAgent`, a `Connect` tunnel, heartbeats every `--heartbeat`) and
//!   reports the time to register them all;
//! - holds them heartbeating for `--hold` and reports server a's CPU use and resident memory
//!   (from `/proc`);
//! - measures how long a `WatchRegistrations` watcher on server b takes to see a change made
//!   through server a (node state flips);
//! - measures invoke throughput to a real agent held by server a, called through a (the owner)
//!   and through b (forwarded).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use croupier_proto::common::v1::{FunctionDescriptor, NodeState};
use croupier_proto::control::v1::{
    AgentFrame, HeartbeatRequest, Hello, RegisterAgentRequest, agent_frame,
    control_service_client::ControlServiceClient,
};
use croupier_proto::registry::v1::WatchRegistrationsRequest;
use croupier_sdk::tls::connect;
use croupier_sdk::{CallOptions, Client, HandlerError, Provider, ProviderConfig, TlsFiles};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::certs::{CertsInit, init};

/// Arguments of `croupier bench agents`.
#[derive(Args, Debug, Clone)]
pub struct AgentsBenchArgs {
    /// Simulated agents.
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
    ) -> anyhow::Result<ServerProc> {
        let exe = std::env::current_exe().context("finding the croupier binary")?;
        let log = std::fs::File::create(dir.join(format!("server-{id}.log")))?;
        let mut child = Command::new(exe)
            .args(["--log", "warn", "server", "--listen", "127.0.0.1:0"])
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

/// One lightweight agent: registered, tunnel open, heartbeating until `stop`.
async fn sim_agent(
    url: String,
    certs: std::path::PathBuf,
    id: String,
    stop: CancellationToken,
    heartbeats: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let pem = TlsFiles::from_dir(&certs, &format!("agent-{id}")).load()?;
    let channel = connect(&url, &pem).await?;
    let mut control = ControlServiceClient::new(channel);
    let reg = control
        .register_agent(RegisterAgentRequest {
            agent_id: id.clone(),
            game_id: "bench".into(),
            env: "scale".into(),
            version: "1".into(),
            functions: vec!["bench.noop".into()],
            labels: Default::default(),
            descriptors: vec![],
            session_id: String::new(),
            max_message_bytes: 0,
        })
        .await?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            agent_id: id.clone(),
            session_id: reg.session_id.clone(),
        })),
    })
    .await?;
    let mut inbound = control
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    inbound.message().await?; // Welcome
    let interval = Duration::from_secs(reg.heartbeat_interval.max(1) as u64);
    Ok(croupier_proto::task::spawn("sim_agent", async move {
        let _tunnel = (tx, inbound);
        // Spread the heartbeats over the interval.
        let offset = Duration::from_millis(rand::random::<u64>() % interval.as_millis() as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let req = HeartbeatRequest {
                agent_id: id.clone(),
                timestamp: croupier_registry::model::now_ms(),
                status: Default::default(),
                session_id: reg.session_id.clone(),
            };
            if control.heartbeat(req).await.is_ok() {
                heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
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
    let a = ServerProc::start(&dir, "a", &args, &ns)?;
    let b = ServerProc::start(&dir, "b", &args, &ns)?;

    // Registration.
    let stop = CancellationToken::new();
    let heartbeats = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let cpu_before = a.cpu_seconds()?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for id in &ids {
        let permit = limit.clone().acquire_owned().await?;
        let (url, certs, id, stop, hb) = (
            a.url.clone(),
            certs.clone(),
            id.clone(),
            stop.clone(),
            heartbeats.clone(),
        );
        pending.push(croupier_proto::task::spawn("agents", async move {
            let r = sim_agent(url, certs, id, stop, hb).await;
            drop(permit);
            r
        }));
    }
    let mut tasks = Vec::new();
    for p in pending {
        tasks.push(p.await??);
    }
    let register_time = started.elapsed();
    let register_cpu = a.cpu_seconds()? - cpu_before;
    let client_a = Client::connect(&a.url, &TlsFiles::from_dir(&certs, "client-bench")).await?;
    let registered = client_a.agents("bench", "scale").await?.len();
    if registered != args.agents {
        bail!("{registered} of {} agents are registered", args.agents);
    }

    // Holding: everyone heartbeats.
    let cpu0 = a.cpu_seconds()?;
    let hb0 = heartbeats.load(Ordering::Relaxed);
    tokio::time::sleep(args.hold).await;
    let hold_cpu = (a.cpu_seconds()? - cpu0) / args.hold.as_secs_f64();
    let hold_heartbeats = heartbeats.load(Ordering::Relaxed) - hb0;
    let rss = a.rss_mib()?;

    // Watch latency: a change through a, seen by a watcher on b.
    let admin = Client::connect(&a.url, &TlsFiles::from_dir(&certs, "admin-bench")).await?;
    let client_b = Client::connect(&b.url, &TlsFiles::from_dir(&certs, "client-bench")).await?;
    let mut watch = client_b
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
    let mut watch_h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..args.changes {
        let state = if i % 2 == 0 {
            NodeState::Maintenance
        } else {
            NodeState::Normal
        };
        let t = Instant::now();
        admin.set_node_state("sim-0", state, "bench").await?;
        loop {
            let ev = watch.message().await?.context("watch ended")?;
            if ev.agent_id == "sim-0" {
                break;
            }
        }
        watch_h.record(t.elapsed().as_micros().max(1) as u64)?;
    }

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
    let via_owner = throughput(&client_a, &opts, args.invoke_duration).await?;
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
    let via_other = throughput(&client_b, &opts, args.invoke_duration).await?;

    println!(
        "croupier bench agents: {} lightweight agents (own certificate and connection each), \
         servers a and b on etcd {}\n",
        args.agents,
        args.etcd_endpoints.join(",")
    );
    println!(
        "register all:            {:.1} s ({:.0} agents/s; server a used {:.1} CPU-s)",
        register_time.as_secs_f64(),
        args.agents as f64 / register_time.as_secs_f64(),
        register_cpu
    );
    println!(
        "holding, heartbeat {:?}: server a {:.1} % of one core, {:.0} MiB resident; {} heartbeats in {:?} ({:.0}/s)",
        args.heartbeat,
        hold_cpu * 100.0,
        rss,
        hold_heartbeats,
        args.hold,
        hold_heartbeats as f64 / args.hold.as_secs_f64()
    );
    println!(
        "change via a seen by a watcher on b ({} changes): p50 {:.2} ms, p99 {:.2} ms",
        args.changes,
        watch_h.value_at_quantile(0.5) as f64 / 1000.0,
        watch_h.value_at_quantile(0.99) as f64 / 1000.0
    );
    println!(
        "invoke, concurrency 32, {:?}: via the owner {:.0}/s, via another replica {:.0}/s (ratio {:.2})",
        args.invoke_duration,
        via_owner,
        via_other,
        via_other / via_owner
    );

    echo_stop.cancel();
    let _ = echo.await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn throughput(
    client: &Client,
    opts: &CallOptions,
    duration: Duration,
) -> anyhow::Result<f64> {
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
    Ok(done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64())
}
