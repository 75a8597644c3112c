//! `croupier bench invoke`: the cost of the mesh. In one process and one run it measures the
//! same handler reached two ways, both over mTLS on loopback:
//! - direct: client → a tonic `FunctionService` that calls the handler itself;
//! - mesh: client → croupier server → agent tunnel → handler → back.
//!
//! For each it reports latency at concurrency 1 and throughput and latency at concurrency N
//! (default 64), then the ratios the project tracks (mesh/direct throughput, mesh/direct p50 at
//! concurrency 1).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use croupier_proto::function::v1::{
    self as pb, function_service_server::FunctionService,
    function_service_server::FunctionServiceServer,
};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use croupier_sdk::{CallOptions, Client, HandlerError, Provider, ProviderConfig, TlsFiles};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::certs::{CertsInit, init};
use crate::config::ServerConfig;

/// Arguments of `croupier bench invoke`.
#[derive(Args, Debug, Clone)]
pub struct InvokeBenchArgs {
    /// How long each measured phase runs (e.g. "5s").
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrency of the throughput phase.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Payload size in bytes (JSON-encoded).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The handler both paths run: echoes the payload.
fn echo(payload: serde_json::Value) -> serde_json::Value {
    payload
}

/// A `FunctionService` that runs the handler in-process: the "direct" baseline.
struct Direct;

#[tonic::async_trait]
impl FunctionService for Direct {
    async fn invoke_function(
        &self,
        request: Request<pb::InvokeFunctionRequest>,
    ) -> Result<Response<pb::InvokeFunctionResponse>, Status> {
        let req = request.into_inner();
        let out = echo(opt_struct_to_json(req.payload.as_ref()));
        Ok(Response::new(pb::InvokeFunctionResponse {
            success: true,
            result: Some(json_to_struct(&out)),
            agent_id: "direct".into(),
            ..Default::default()
        }))
    }
    async fn invoke_job(
        &self,
        _: Request<pb::InvokeJobRequest>,
    ) -> Result<Response<pb::InvokeJobResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    type StreamJobEventsStream = futures::stream::Empty<Result<pb::JobEvent, Status>>;
    async fn stream_job_events(
        &self,
        _: Request<pb::StreamJobEventsRequest>,
    ) -> Result<Response<Self::StreamJobEventsStream>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn cancel_job(
        &self,
        _: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn register_function(
        &self,
        _: Request<pb::RegisterFunctionRequest>,
    ) -> Result<Response<pb::RegisterFunctionResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn get_job(
        &self,
        _: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn put_pipeline(
        &self,
        _: Request<pb::PutPipelineRequest>,
    ) -> Result<Response<pb::PutPipelineResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn get_pipeline(
        &self,
        _: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::GetPipelineResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn list_pipelines(
        &self,
        _: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn delete_pipeline(
        &self,
        _: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::DeletePipelineResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
    async fn delete_function(
        &self,
        _: Request<pb::DeleteFunctionRequest>,
    ) -> Result<Response<pb::DeleteFunctionResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }
}

/// Figures of one phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    /// "direct" or "mesh".
    pub path: &'static str,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Completed calls.
    pub calls: u64,
    /// Calls per second.
    pub per_second: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
}

async fn phase(
    path: &'static str,
    client: &Client,
    payload: &serde_json::Value,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let stop_at = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let opts = CallOptions::default();
            while Instant::now() < stop_at {
                let t = Instant::now();
                let r = client.invoke("bench.echo", payload.clone(), &opts).await?;
                anyhow::ensure!(r.success, "bench.echo failed: {} {}", r.error_code, r.error);
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok(Phase {
        path,
        concurrency,
        calls: all.len(),
        per_second: all.len() as f64 / duration.as_secs_f64(),
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
    })
}

/// A server and one in-process agent on loopback, with fresh certificates in a temp dir.
struct BenchMesh {
    dir: std::path::PathBuf,
    certs: std::path::PathBuf,
    url: String,
    stop: CancellationToken,
    agent_stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    agent: tokio::task::JoinHandle<Result<(), croupier_sdk::provider::ProviderError>>,
}

impl BenchMesh {
    /// Starts the server (its config adjusted by `tune`) and an agent whose functions `add`
    /// registers.
    async fn start(
        tune: impl FnOnce(&mut ServerConfig),
        add: impl FnOnce(Provider) -> Provider,
    ) -> anyhow::Result<BenchMesh> {
        let dir = tempfile_dir()?;
        let certs = dir.join("certs");
        init(&CertsInit {
            dir: certs.clone(),
            agents: vec!["bench-agent".into()],
            clients: vec!["bench".into()],
            admins: vec![],
            servers: vec![],
            hosts: vec![],
            force: false,
        })?;
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let mut cfg = ServerConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.join("data"),
            tls_dir: certs.clone(),
            audit_log: false,
            ..ServerConfig::default()
        };
        tune(&mut cfg);
        let s = stop.clone();
        let server = tokio::spawn(crate::server::serve(cfg, listener, async move {
            s.cancelled().await
        }));
        let provider = add(Provider::new(ProviderConfig::new(
            vec![url.clone()],
            "bench-agent",
            TlsFiles::from_dir(&certs, "agent-bench-agent"),
        )));
        let mut state = provider.state();
        let agent_stop = CancellationToken::new();
        let agent = tokio::spawn(provider.run(agent_stop.clone()));
        tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected))
            .await
            .context("the bench agent did not connect")??;
        Ok(BenchMesh {
            dir,
            certs,
            url,
            stop,
            agent_stop,
            server,
            agent,
        })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.url, &TlsFiles::from_dir(&self.certs, "client-bench")).await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        // The agent leaves first (goodbye), then the server drains.
        self.agent_stop.cancel();
        let _ = self.agent.await;
        self.stop.cancel();
        self.server.await??;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Runs the benchmark and prints the figures.
pub async fn invoke(args: InvokeBenchArgs) -> anyhow::Result<()> {
    let mesh_env = BenchMesh::start(
        |_| {},
        |p| {
            p.function(
                croupier_proto::common::v1::FunctionDescriptor {
                    id: "bench.echo".into(),
                    ..Default::default()
                },
                |call| async move { Ok::<_, HandlerError>(echo(call.payload)) },
            )
        },
    )
    .await?;
    let certs = mesh_env.certs.clone();
    let stop = CancellationToken::new();

    // The direct baseline: same handler behind a tonic server with the same mTLS.
    let direct_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let direct_url = format!("https://{}", direct_listener.local_addr()?);
    let d = stop.clone();
    let direct = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(crate::server::server_tls(&certs)?)?
            .tcp_nodelay(true)
            .add_service(FunctionServiceServer::new(Direct))
            .serve_with_incoming_shutdown(crate::server::nodelay(direct_listener), async move {
                d.cancelled().await
            }),
    );

    let tls = TlsFiles::from_dir(&certs, "client-bench");
    let mesh = mesh_env.client().await?;
    let direct_client = Client::connect(&direct_url, &tls).await?;
    let filler = "x".repeat(args.payload_bytes.saturating_sub(10));
    let payload = serde_json::json!({ "d": filler });

    let warm = Duration::from_millis(500);
    phase("direct", &direct_client, &payload, 8, warm).await?;
    phase("mesh", &mesh, &payload, 8, warm).await?;
    let mut phases = Vec::new();
    for c in [1, args.concurrency] {
        phases.push(phase("direct", &direct_client, &payload, c, args.duration).await?);
        phases.push(phase("mesh", &mesh, &payload, c, args.duration).await?);
    }
    let find = |path: &str, c: usize| {
        phases
            .iter()
            .find(|p| p.path == path && p.concurrency == c)
            .cloned()
    };
    let (d1, m1) = (find("direct", 1).unwrap(), find("mesh", 1).unwrap());
    let (dn, mn) = (
        find("direct", args.concurrency).unwrap(),
        find("mesh", args.concurrency).unwrap(),
    );
    let throughput_ratio = mn.per_second / dn.per_second;
    let p50_ratio = m1.p50_us as f64 / d1.p50_us as f64;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "payload_bytes": args.payload_bytes,
                "phases": phases,
                "mesh_over_direct_throughput": throughput_ratio,
                "mesh_over_direct_p50_c1": p50_ratio,
            })
        );
    } else {
        println!(
            "croupier bench invoke: {}-byte payload, {:?} per phase, mTLS on loopback, one process\n",
            args.payload_bytes, args.duration
        );
        let rows: Vec<Vec<String>> = phases
            .iter()
            .map(|p| {
                vec![
                    p.path.into(),
                    p.concurrency.to_string(),
                    p.calls.to_string(),
                    format!("{:.0}", p.per_second),
                    format!("{:.3}", p.p50_us as f64 / 1000.0),
                    format!("{:.3}", p.p99_us as f64 / 1000.0),
                ]
            })
            .collect();
        print!(
            "{}",
            crate::output::table(
                &[
                    "PATH",
                    "CONCURRENCY",
                    "CALLS",
                    "CALLS/S",
                    "P50 MS",
                    "P99 MS"
                ],
                &rows
            )
        );
        println!(
            "\nmesh/direct throughput at concurrency {}: {:.2} (target >= 0.50)\n\
             mesh/direct p50 at concurrency 1: {:.2} (target <= 2.50)",
            args.concurrency, throughput_ratio, p50_ratio
        );
    }
    stop.cancel();
    let _ = direct.await;
    mesh_env.stop().await
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("croupier-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Arguments of `croupier bench jobs`.
#[derive(Args, Debug, Clone)]
pub struct JobsBenchArgs {
    /// Events one job emits in the throughput phase.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Jobs started one after another in the latency phase.
    #[arg(long, default_value_t = 300)]
    pub starts: u32,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Figures of `croupier bench jobs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobsFigures {
    /// Events the subscriber received (seq-checked: consecutive, none twice).
    pub events: u64,
    /// Events per second from the job's first event to its last, at the subscriber.
    pub events_per_second: f64,
    /// Jobs started in the latency phase.
    pub starts: u32,
    /// Median time from sending InvokeJob to receiving the job's first event, microseconds.
    pub first_event_p50_us: u64,
    /// 99th percentile of the same, microseconds.
    pub first_event_p99_us: u64,
    /// Median time for `InvokeJob` alone to answer, microseconds.
    pub invoke_job_p50_us: u64,
}

/// `croupier bench jobs`: one job emitting `events` log events as fast as it may, followed by
/// one subscriber through the server; then `starts` jobs one after another, each timed from
/// `InvokeJob` to its first event.
pub async fn jobs(args: JobsBenchArgs) -> anyhow::Result<()> {
    use croupier_proto::function::v1::EventType;
    // Keep every event, so the subscriber never meets retention.
    let keep = args.events as usize + 16;
    let mesh_env = BenchMesh::start(
        |cfg| cfg.jobs.max_events = keep,
        |p| {
            p.job(
                croupier_proto::common::v1::FunctionDescriptor {
                    id: "bench.flood".into(),
                    ..Default::default()
                },
                |job| async move {
                    let n = job.payload()["events"].as_u64().unwrap_or(0);
                    // Give the subscriber time to attach, so it follows live from the start.
                    let delay = job.payload()["delay_ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    for i in 0..n {
                        job.log(format!("event {i}")).await;
                    }
                    Ok::<_, HandlerError>(serde_json::json!({ "events": n }))
                },
            )
        },
    )
    .await?;
    let client = mesh_env.client().await?;
    let opts = CallOptions::default();

    // Throughput: one job, one subscriber.
    let job = client
        .start_job(
            "bench.flood",
            serde_json::json!({ "events": args.events }),
            &opts,
        )
        .await?;
    let mut stream = job.events(0).await?;
    let mut received = 0u64;
    let mut expected_seq = 1;
    let mut first_at: Option<Instant> = None;
    let mut last_at = Instant::now();
    while let Some(ev) = stream.message().await? {
        anyhow::ensure!(
            ev.seq == expected_seq,
            "seq {} arrived, {expected_seq} expected",
            ev.seq
        );
        expected_seq += 1;
        received += 1;
        let now = Instant::now();
        first_at.get_or_insert(now);
        last_at = now;
        if ev.r#type == EventType::Error as i32 {
            anyhow::bail!("the flood job failed: {}", ev.message);
        }
    }
    let span = last_at.duration_since(first_at.unwrap_or(last_at));
    let events_per_second = received as f64 / span.as_secs_f64().max(1e-9);

    // Latency: InvokeJob → first event, one job at a time.
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut answered = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..args.starts {
        let t = Instant::now();
        let job = client
            .start_job("bench.flood", serde_json::json!({ "events": 0 }), &opts)
            .await?;
        answered.record(t.elapsed().as_micros().max(1) as u64)?;
        let mut stream = job.events(0).await?;
        let first = stream
            .message()
            .await?
            .context("job stream ended without an event")?;
        anyhow::ensure!(first.seq == 1, "first event has seq {}", first.seq);
        h.record(t.elapsed().as_micros().max(1) as u64)?;
        while stream.message().await?.is_some() {}
    }
    let figures = JobsFigures {
        events: received,
        events_per_second,
        starts: args.starts,
        first_event_p50_us: h.value_at_quantile(0.5),
        first_event_p99_us: h.value_at_quantile(0.99),
        invoke_job_p50_us: answered.value_at_quantile(0.5),
    };
    if args.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "croupier bench jobs: mTLS on loopback, one process, embedded store\n\n\
             events from one job to one subscriber: {} events in {:.2}s = {:.0} events/s\n\
             InvokeJob to first event ({} jobs): p50 {:.3} ms, p99 {:.3} ms \
             (InvokeJob alone answers in {:.3} ms, p50)",
            figures.events,
            span.as_secs_f64(),
            figures.events_per_second,
            figures.starts,
            figures.first_event_p50_us as f64 / 1000.0,
            figures.first_event_p99_us as f64 / 1000.0,
            figures.invoke_job_p50_us as f64 / 1000.0,
        );
    }
    mesh_env.stop().await
}
