//! `croupier bench invoke`: calls through the mesh against the same echo reached other ways,
//! with latency percentiles and throughput. By default it measures the deployed shape, server
//! and agent as processes, against a direct tonic server and NATS request-reply
//! ([`super::deployed`]). With `--in-process` it runs the server and the agent inside this
//! process, the audit log off:
//! - direct: client → a tonic `FunctionService` that calls the handler itself;
//! - mesh: client → croupier server → agent tunnel → handler → back.
//!
//! For each it reports latency at concurrency 1 and throughput and latency at concurrency N
//! (default 64), then the ratios (mesh/direct throughput, mesh/direct p50 at concurrency 1).

use super::*;
use clap::Args;
use croupier_proto::function::v1::{
    self as pb, function_service_server::FunctionService,
    function_service_server::FunctionServiceServer,
};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use croupier_sdk::{CallOptions, Client, HandlerError, TlsFiles};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

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
    /// Also measure what metrics cost: this many rounds of mesh phases with the metrics
    /// recorder on and off, interleaved (0: skip; with --in-process only).
    #[arg(long, default_value_t = 0)]
    pub metrics_rounds: usize,
    /// Run the server and the agent inside this process, audit log off (the older, kinder
    /// figure), instead of the deployed shape.
    #[arg(long)]
    pub in_process: bool,
    /// Rounds of every path, interleaved (deployed shape).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Client connections of the mesh's extra throughput phase (deployed shape; 1: none).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Agent processes serving the mesh's calls (deployed shape).
    #[arg(long, default_value_t = 1)]
    pub agents: usize,
    /// Worker threads of each agent process (deployed shape; default: one per core).
    #[arg(long)]
    pub agent_threads: Option<usize>,
    /// Leave NATS out (deployed shape; it needs `nats-server` on PATH).
    #[arg(long)]
    pub skip_nats: bool,
}

/// The metrics' cost: median ratios (on / off) over interleaved rounds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MetricsOverhead {
    /// Rounds measured.
    pub rounds: usize,
    /// Throughput at the bench's concurrency, metrics on over off.
    pub throughput_on_over_off: f64,
    /// p50 at concurrency 1, metrics on over off.
    pub p50_c1_on_over_off: f64,
}

/// The median of `v` (NaN when empty).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Mesh phases with metrics on and off, alternating which goes first each round.
async fn metrics_overhead(
    mesh: &Client,
    payload: &serde_json::Value,
    args: &InvokeBenchArgs,
) -> anyhow::Result<MetricsOverhead> {
    let (mut tput, mut p50) = (Vec::new(), Vec::new());
    for round in 0..args.metrics_rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut got = std::collections::HashMap::new();
        for on in order {
            crate::metrics::set_recording(on);
            let c1 = phase("mesh", mesh, payload, 1, args.duration).await?;
            let cn = phase("mesh", mesh, payload, args.concurrency, args.duration).await?;
            got.insert(on, (c1, cn));
        }
        crate::metrics::set_recording(true);
        let (on1, onn) = &got[&true];
        let (off1, offn) = &got[&false];
        tput.push(onn.per_second / offn.per_second);
        p50.push(on1.p50_us as f64 / off1.p50_us as f64);
    }
    Ok(MetricsOverhead {
        rounds: args.metrics_rounds,
        throughput_on_over_off: median(tput),
        p50_c1_on_over_off: median(p50),
    })
}

/// The handler both paths run: echoes the payload.
pub(super) fn echo(payload: serde_json::Value) -> serde_json::Value {
    payload
}

/// A `FunctionService` that runs the handler in-process: the "direct" baseline.
pub(super) struct Direct;

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

    async fn get_step_log(
        &self,
        _: Request<pb::GetStepLogRequest>,
    ) -> Result<Response<pb::GetStepLogResponse>, Status> {
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

    async fn list_approvals(
        &self,
        _: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }

    async fn get_approval(
        &self,
        _: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }

    async fn decide_approval(
        &self,
        _: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        Err(Status::unimplemented(
            "the direct baseline serves InvokeFunction only",
        ))
    }

    async fn get_function_stats(
        &self,
        _: Request<pb::GetFunctionStatsRequest>,
    ) -> Result<Response<pb::GetFunctionStatsResponse>, Status> {
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

pub(super) async fn phase(
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
        tasks.push(croupier_proto::task::spawn("phase", async move {
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

/// Runs the benchmark and prints the figures.
pub async fn invoke(args: InvokeBenchArgs) -> anyhow::Result<()> {
    if !args.in_process {
        anyhow::ensure!(
            args.metrics_rounds == 0,
            "--metrics-rounds measures the in-process mesh: add --in-process"
        );
        return super::deployed::run(&args).await;
    }
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
    let direct = croupier_proto::task::spawn(
        "invoke",
        tonic::transport::Server::builder()
            .tls_config(crate::server::server_tls(&certs)?)?
            .tcp_nodelay(true)
            .add_service(FunctionServiceServer::new(Direct))
            .serve_with_incoming_shutdown(crate::server::nodelay(direct_listener), async move {
                d.cancelled().await;
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
    let measured = |path: &str, c: usize| {
        find(path, c).with_context(|| format!("no {path} phase at concurrency {c} was measured"))
    };
    let (d1, m1) = (measured("direct", 1)?, measured("mesh", 1)?);
    let (dn, mn) = (
        measured("direct", args.concurrency)?,
        measured("mesh", args.concurrency)?,
    );
    let throughput_ratio = mn.per_second / dn.per_second;
    let p50_ratio = m1.p50_us as f64 / d1.p50_us as f64;
    let overhead = if args.metrics_rounds > 0 {
        Some(metrics_overhead(&mesh, &payload, &args).await?)
    } else {
        None
    };

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "payload_bytes": args.payload_bytes,
                "phases": phases,
                "mesh_over_direct_throughput": throughput_ratio,
                "mesh_over_direct_p50_c1": p50_ratio,
                "metrics_overhead": overhead,
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
        if let Some(o) = &overhead {
            println!(
                "metrics on/off over {} interleaved rounds (medians): throughput at concurrency \
                 {} {:.3}, p50 at concurrency 1 {:.3} (goal: within 3%)",
                o.rounds, args.concurrency, o.throughput_on_over_off, o.p50_c1_on_over_off
            );
        }
    }
    stop.cancel();
    let _ = direct.await;
    mesh_env.stop().await
}
