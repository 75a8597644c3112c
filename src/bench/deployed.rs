//! `croupier bench invoke` in the deployed shape (the default): what a user pays per call, set
//! against the alternatives, all over mutual TLS on loopback, with the same echo and payload:
//! - direct: this process → `croupier bench direct-server` (a tonic `FunctionService`);
//! - mesh: this process → `croupier server` (audit log and metrics on) → tunnel → `croupier
//!   agent --packs none` (`agent.ping`) → back;
//! - nats: this process → `nats-server` → `croupier bench nats-responder` → back
//!   (request-reply, the same two-hop shape).
//!
//! Each round runs every path, in an order that rotates, at concurrency 1 (latency) and at the
//! bench's concurrency on one client connection (throughput; the mesh also on several
//! connections), reading the CPU time and context switches of each path's server-side
//! processes from `/proc` around each phase. Ratios are taken within a round; the medians over
//! rounds are reported.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use croupier_sdk::{CallOptions, Client, TlsFiles};
use hdrhistogram::Histogram;

use super::invoke::{InvokeBenchArgs, median};
use super::procs::{self, Proc};

/// How calls are made on one path.
#[derive(Clone)]
enum Target {
    /// `InvokeFunction` of `function`, spread over `clients` (one connection each).
    Grpc {
        clients: Vec<Client>,
        function: &'static str,
    },
    /// NATS request-reply on `bench.echo`.
    Nats(async_nats::Client),
}

impl Target {
    async fn call(&self, i: usize, json: &serde_json::Value, raw: &Bytes) -> anyhow::Result<()> {
        match self {
            Target::Grpc { clients, function } => {
                let r = clients[i % clients.len()]
                    .invoke(function, json.clone(), &CallOptions::default())
                    .await?;
                anyhow::ensure!(r.success, "{function} failed: {} {}", r.error_code, r.error);
            }
            Target::Nats(c) => {
                let m = c.request("bench.echo", raw.clone()).await?;
                anyhow::ensure!(m.payload.len() == raw.len(), "the echo changed the payload");
            }
        }
        Ok(())
    }
}

/// Figures of one phase of one path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    /// "direct", "mesh" or "nats".
    pub path: &'static str,
    /// Round (0-based).
    pub round: usize,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Client connections the callers share.
    pub connections: usize,
    /// Completed calls.
    pub calls: u64,
    /// Calls per second.
    pub per_second: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// CPU time of the path's server-side processes per call, microseconds.
    pub server_cpu_us_per_call: f64,
    /// Context switches of the path's server-side processes per call.
    pub switches_per_call: f64,
}

/// One path: how to call it and the processes that serve it.
struct Lane {
    name: &'static str,
    target: Target,
    pids: Vec<u32>,
}

fn usage(pids: &[u32]) -> (f64, u64) {
    pids.iter().fold((0.0, 0), |(cpu, sw), pid| {
        (
            cpu + crate::child::cpu_seconds(*pid).unwrap_or(0.0),
            sw + crate::child::context_switches(*pid).unwrap_or(0),
        )
    })
}

async fn phase(
    path: &Lane,
    target: &Target,
    round: usize,
    concurrency: usize,
    connections: usize,
    duration: Duration,
    payload: &(serde_json::Value, Bytes),
) -> anyhow::Result<Phase> {
    let (cpu0, sw0) = usage(&path.pids);
    let started = Instant::now();
    let stop_at = started + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let target = target.clone();
        let (json, raw) = payload.clone();
        tasks.push(croupier_proto::task::spawn("bench caller", async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while Instant::now() < stop_at {
                let t = Instant::now();
                target.call(i, &json, &raw).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, sw1) = usage(&path.pids);
    let calls = all.len().max(1) as f64;
    Ok(Phase {
        path: path.name,
        round,
        concurrency,
        connections,
        calls: all.len(),
        per_second: all.len() as f64 / elapsed,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        server_cpu_us_per_call: (cpu1 - cpu0) * 1e6 / calls,
        switches_per_call: sw1.saturating_sub(sw0) as f64 / calls,
    })
}

/// Waits until `client` can call `agent.ping` on `agents` agents.
async fn wait_agents(client: &Client, agents: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let online = client
            .agents("", "")
            .await
            .map(|a| a.iter().filter(|a| a.online).count())
            .unwrap_or(0);
        if online >= agents {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{online} of {agents} bench agents came online"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Median of `f` over the rounds' phases of `path` at `concurrency` on `connections`.
fn med(
    phases: &[Phase],
    path: &str,
    concurrency: usize,
    connections: usize,
    f: impl Fn(&Phase) -> f64,
) -> f64 {
    median(
        phases
            .iter()
            .filter(|p| p.path == path && p.concurrency == concurrency)
            .filter(|p| p.connections == connections)
            .map(f)
            .collect(),
    )
}

/// Median over rounds of the ratio of `f` for paths `a` and `b` in the same round.
fn ratio(
    phases: &[Phase],
    (a, b): (&str, &str),
    concurrency: usize,
    (conn_a, conn_b): (usize, usize),
    f: impl Fn(&Phase) -> f64,
) -> f64 {
    let rounds = phases.iter().map(|p| p.round).max().map_or(0, |r| r + 1);
    let pick = |round: usize, path: &str, conns: usize| {
        phases.iter().find(|p| {
            p.round == round
                && p.path == path
                && p.concurrency == concurrency
                && p.connections == conns
        })
    };
    median(
        (0..rounds)
            .filter_map(|r| Some(f(pick(r, a, conn_a)?) / f(pick(r, b, conn_b)?)))
            .collect(),
    )
}

/// Runs the deployed-shape benchmark and prints the figures.
pub(super) async fn run(args: &InvokeBenchArgs) -> anyhow::Result<()> {
    let dir = super::tempfile_dir()?;
    let out = run_in(&dir, args).await;
    let _ = std::fs::remove_dir_all(&dir);
    out
}

async fn run_in(dir: &Path, args: &InvokeBenchArgs) -> anyhow::Result<()> {
    let certs = dir.join("certs");
    let agent_ids: Vec<String> = (1..=args.agents.max(1))
        .map(|i| format!("bench-agent-{i}"))
        .chain(["bench-agent".to_string()])
        .collect();
    crate::certs::init(&crate::certs::CertsInit {
        dir: certs.clone(),
        agents: agent_ids.clone(),
        clients: vec!["bench".into()],
        ..Default::default()
    })?;
    let mut procs: Vec<Proc> = Vec::new();
    let (server, url) = procs::server(dir, &certs)?;
    let server_pid = server.pid();
    procs.push(server);
    let mut mesh_pids = vec![server_pid];
    for id in &agent_ids[..args.agents.max(1)] {
        let a = procs::agent(dir, &certs, &url, id, args.agent_threads)?;
        mesh_pids.push(a.pid());
        procs.push(a);
    }
    let (direct, direct_url) = procs::direct(dir, &certs)?;
    let direct_pid = direct.pid();
    procs.push(direct);

    let tls = TlsFiles::from_dir(&certs, "client-bench");
    let connect = |url: String| {
        let tls = tls.clone();
        async move { Client::connect(&url, &tls).await.context("connecting") }
    };
    let mut mesh_clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        mesh_clients.push(connect(url.clone()).await?);
    }
    wait_agents(&mesh_clients[0], args.agents.max(1)).await?;
    let mut paths = vec![
        Lane {
            name: "direct",
            target: Target::Grpc {
                clients: vec![connect(direct_url).await?],
                function: "bench.echo",
            },
            pids: vec![direct_pid],
        },
        Lane {
            name: "mesh",
            target: Target::Grpc {
                clients: mesh_clients.clone(),
                function: "agent.ping",
            },
            pids: mesh_pids,
        },
    ];
    if !args.skip_nats {
        let (nats, nats_url) = procs::nats_server(dir, &certs)?;
        let responder = procs::nats_responder(dir, &certs, &nats_url)?;
        paths.push(Lane {
            name: "nats",
            target: Target::Nats(procs::nats_connect(&nats_url, &certs, "client-bench").await?),
            pids: vec![nats.pid(), responder.pid()],
        });
        procs.push(nats);
        procs.push(responder);
    }

    let filler = "x".repeat(args.payload_bytes.saturating_sub(10));
    let json = serde_json::json!({ "d": filler });
    let payload = (json.clone(), Bytes::from(serde_json::to_vec(&json)?));
    let one_conn = |t: &Target| match t {
        Target::Grpc { clients, function } => Target::Grpc {
            clients: clients[..1].to_vec(),
            function,
        },
        t => t.clone(),
    };
    for p in &paths {
        phase(
            p,
            &one_conn(&p.target),
            0,
            8,
            1,
            Duration::from_millis(500),
            &payload,
        )
        .await?;
    }
    let n = args.concurrency;
    let mut phases = Vec::new();
    for round in 0..args.rounds.max(1) {
        for k in 0..paths.len() {
            let p = &paths[(k + round) % paths.len()];
            let single = one_conn(&p.target);
            phases.push(phase(p, &single, round, 1, 1, args.duration, &payload).await?);
            phases.push(phase(p, &single, round, n, 1, args.duration, &payload).await?);
            if p.name == "mesh" && args.connections > 1 {
                let (c, conns) = (n, args.connections);
                phases.push(phase(p, &p.target, round, c, conns, args.duration, &payload).await?);
            }
        }
    }
    drop(procs);
    report(args, &paths, &phases)
}

fn report(args: &InvokeBenchArgs, paths: &[Lane], phases: &[Phase]) -> anyhow::Result<()> {
    let n = args.concurrency;
    let conns = args.connections.max(1);
    let p50 = |p: &Phase| p.p50_us as f64;
    let tput = |p: &Phase| p.per_second;
    let cpu = |p: &Phase| p.server_cpu_us_per_call;
    let has_nats = paths.iter().any(|p| p.name == "nats");
    let mut ratios = serde_json::json!({
        "mesh_over_direct_p50_c1": ratio(phases, ("mesh", "direct"), 1, (1, 1), p50),
        "mesh_over_direct_throughput": ratio(phases, ("mesh", "direct"), n, (1, 1), tput),
        "mesh_connections_over_one_throughput": ratio(phases, ("mesh", "mesh"), n, (conns, 1), tput),
        "mesh_cpu_us_per_call_c1": med(phases, "mesh", 1, 1, cpu),
    });
    if has_nats {
        ratios["mesh_over_nats_p50_c1"] = ratio(phases, ("mesh", "nats"), 1, (1, 1), p50).into();
        ratios["mesh_over_nats_throughput"] =
            ratio(phases, ("mesh", "nats"), n, (1, 1), tput).into();
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "deployed",
                "payload_bytes": args.payload_bytes,
                "rounds": args.rounds.max(1),
                "agents": args.agents.max(1),
                "phases": phases,
                "medians": ratios,
            })
        );
        return Ok(());
    }
    println!(
        "croupier bench invoke: {}-byte payload, {} round(s) of {:?} phases, mTLS on loopback; \
         server and {} agent(s) as processes, audit log and metrics on\n",
        args.payload_bytes,
        args.rounds.max(1),
        args.duration,
        args.agents.max(1)
    );
    let mut shapes = vec![(1, 1), (n, 1)];
    if conns > 1 {
        shapes.push((n, conns));
    }
    let mut rows = Vec::new();
    for p in paths {
        for &(c, k) in &shapes {
            if k > 1 && p.name != "mesh" {
                continue;
            }
            rows.push(vec![
                p.name.to_string(),
                c.to_string(),
                k.to_string(),
                format!("{:.0}", med(phases, p.name, c, k, tput)),
                format!("{:.3}", med(phases, p.name, c, k, p50) / 1000.0),
                format!(
                    "{:.3}",
                    med(phases, p.name, c, k, |p| p.p99_us as f64) / 1000.0
                ),
                format!("{:.1}", med(phases, p.name, c, k, cpu)),
                format!("{:.1}", med(phases, p.name, c, k, |p| p.switches_per_call)),
            ]);
        }
    }
    print!(
        "{}",
        crate::output::table(
            &[
                "PATH",
                "CONCURRENCY",
                "CONNS",
                "CALLS/S",
                "P50 MS",
                "P99 MS",
                "SERVER CPU µS/CALL",
                "SWITCHES/CALL",
            ],
            &rows
        )
    );
    println!("\nmedians of per-round ratios (targets from the performance goals):");
    let line = |what: &str, key: &str, target: &str| {
        if let Some(v) = ratios[key].as_f64() {
            println!("  {what}: {v:.2} ({target})");
        }
    };
    line(
        "mesh/direct p50 at concurrency 1",
        "mesh_over_direct_p50_c1",
        "target <= 1.5",
    );
    line(
        "mesh/nats p50 at concurrency 1",
        "mesh_over_nats_p50_c1",
        "target <= 1.0",
    );
    line(
        &format!("mesh/direct throughput at concurrency {n}, one connection"),
        "mesh_over_direct_throughput",
        "target >= 0.9",
    );
    line(
        &format!("mesh/nats throughput at concurrency {n}"),
        "mesh_over_nats_throughput",
        "target >= 1.0",
    );
    line(
        &format!("mesh throughput, {conns} connections over one"),
        "mesh_connections_over_one_throughput",
        "should grow",
    );
    Ok(())
}
