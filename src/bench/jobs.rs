//! `croupier bench jobs`: job events per second from one job to one subscriber, and the time
//! to the first event.

use super::*;
use anyhow::Context;
use clap::Args;
use croupier_sdk::{CallOptions, HandlerError};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

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
