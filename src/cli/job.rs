//! `croupier job …`: start, watch, cancel, get and list jobs.
//!
//! Following a job shows, on a terminal, a progress bar with the latest message and the log
//! lines above it; when stdout is not a terminal, one plain line per event; with `--json`, one
//! JSON object per event. A broken stream (server restart) is resumed from the next seq.
//! Exit codes: 0 when the job is `DONE`, 1 on `ERROR`, 2 on a gRPC error, 3 on `CANCELLED`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use croupier_proto::function::v1::{EventType, JobEvent, JobRecord, ListJobsRequest};
use croupier_proto::json::opt_struct_to_json;
use croupier_sdk::Client;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{CallArgs, Conn, status_error};
use crate::output::{age, table};

use super::exit::{CANCELLED as EXIT_CANCELLED, FAILED as EXIT_ERROR};

/// `croupier job …`.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Start a function as a job; prints the job id (or follows it with --follow).
    Start(StartArgs),
    /// Follow a job's events until it ends.
    Watch(WatchArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Show a job's record.
    Get(GetArgs),
    /// List jobs, newest first.
    List(ListArgs),
    /// Show a pipeline step's log: stored when the step completed or failed, or followed live.
    Logs(LogsArgs),
}

/// `croupier job logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The job (a pipeline.start job).
    pub job_id: String,
    /// The step's name.
    #[arg(long)]
    pub step: String,
    /// Follow the step live until it ends (from its first line), instead of reading its
    /// stored log.
    #[arg(long, short)]
    pub follow: bool,
    /// JSON output: {"step", "index", "status", "lines", "dropped_lines", "ended_at"}; with
    /// --follow, one line per event.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier job start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Function id, e.g. agent.countdown.
    pub function: String,
    /// Payload, routing, deadline (the job's), idempotency.
    #[command(flatten)]
    pub call: CallArgs,
    /// Follow the job's events until it ends.
    #[arg(long)]
    pub follow: bool,
    /// JSON output (JSON lines when following).
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier job watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The job.
    pub job_id: String,
    /// First seq to show (0: from the start).
    #[arg(long, default_value_t = 0)]
    pub from_seq: i64,
    /// JSON lines output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier job cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job.
    pub job_id: String,
    /// Why (recorded in the job and its CANCELLED event).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier job get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The job.
    pub job_id: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier job list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only jobs of this function.
    #[arg(long, default_value = "")]
    pub function: String,
    /// Only jobs on this agent.
    #[arg(long, default_value = "")]
    pub agent: String,
    /// Only jobs with this status: pending, running, completed, failed, cancelled.
    #[arg(long, default_value = "")]
    pub status: String,
    /// Only this game.
    #[arg(long, default_value = "")]
    pub game_id: String,
    /// Only this environment.
    #[arg(long, default_value = "")]
    pub env: String,
    /// Jobs per page.
    #[arg(long, default_value_t = 20)]
    pub limit: i32,
    /// Page token printed by the previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs a `croupier job` command; returns the exit code.
pub async fn run(cmd: JobCommand) -> anyhow::Result<i32> {
    match cmd {
        JobCommand::Start(a) => start(a).await,
        JobCommand::Logs(a) => logs(a).await,
        JobCommand::Watch(a) => {
            let client = a.conn.client("client-dev").await?;
            follow(&client, &a.job_id, a.from_seq, a.json).await
        }
        JobCommand::Cancel(a) => cancel(a).await,
        JobCommand::Get(a) => get(a).await,
        JobCommand::List(a) => list(a).await,
    }
}

async fn start(a: StartArgs) -> anyhow::Result<i32> {
    let payload = a.call.payload()?;
    let client = a.conn.client("client-dev").await?;
    let job = match client
        .start_job(&a.function, payload, &a.call.options())
        .await
    {
        Ok(j) => j,
        Err(s) => {
            eprintln!("error: {}", status_error(&s));
            return Ok(super::exit::of_status(&s));
        }
    };
    if a.follow {
        if !a.json {
            eprintln!("job {} started", job.id());
        }
        return follow(&client, job.id(), 0, a.json).await;
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"job_id": job.id(), "status": "pending"})
        );
    } else {
        println!("{}", job.id());
        if std::io::stderr().is_terminal() {
            eprintln!("follow it with: croupier job watch {}", job.id());
        }
    }
    Ok(0)
}

/// How events are shown.
enum View {
    Bar(ProgressBar),
    Plain,
    Json,
}

impl View {
    fn new(json: bool) -> View {
        if json {
            return View::Json;
        }
        if !std::io::stdout().is_terminal() {
            return View::Plain;
        }
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        View::Bar(bar)
    }

    fn show(&self, ev: &JobEvent) {
        let kind = EventType::try_from(ev.r#type).unwrap_or(EventType::Log);
        let data = opt_struct_to_json(ev.data.as_ref());
        match self {
            View::Json => println!(
                "{}",
                serde_json::json!({
                    "job_id": ev.job_id,
                    "seq": ev.seq,
                    "type": kind.as_str_name(),
                    "message": ev.message,
                    "progress": ev.progress,
                    "timestamp": ev.timestamp,
                    "data": data,
                })
            ),
            View::Plain => println!("{}", plain_line(ev, kind, &data)),
            View::Bar(bar) => match kind {
                EventType::Progress => {
                    bar.set_position((ev.progress * 1000.0).round() as u64);
                    bar.set_message(ev.message.clone());
                }
                EventType::Done => {
                    bar.set_position(1000);
                    bar.finish_and_clear();
                    println!("DONE {}", data);
                }
                EventType::Error | EventType::Cancelled => {
                    bar.abandon();
                    println!("{} {}", kind.as_str_name(), ev.message);
                }
                _ => bar.println(plain_line(ev, kind, &data)),
            },
        }
    }
}

fn plain_line(ev: &JobEvent, kind: EventType, data: &serde_json::Value) -> String {
    let mut line = format!("[{}] {}", ev.seq, kind.as_str_name());
    if kind == EventType::Progress {
        line.push_str(&format!(" {:>3.0}%", ev.progress * 100.0));
    }
    if !ev.message.is_empty() {
        line.push(' ');
        line.push_str(&ev.message);
    }
    let show_data = matches!(kind, EventType::Done | EventType::Log | EventType::Gap)
        && data.as_object().is_some_and(|o| !o.is_empty());
    if show_data {
        line.push(' ');
        line.push_str(&data.to_string());
    }
    line
}

/// Follows a job's events until the terminal one, resuming a broken stream from the next seq.
pub async fn follow(
    client: &Client,
    job_id: &str,
    from_seq: i64,
    json: bool,
) -> anyhow::Result<i32> {
    let view = View::new(json);
    let mut next = from_seq;
    let mut retries = 0u32;
    loop {
        let mut stream = match client.job_events(job_id, next).await {
            Ok(s) => s,
            Err(s) if s.code() == tonic::Code::Unavailable && retries < 60 => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => {
                eprintln!("error: {}", status_error(&s));
                return Ok(super::exit::of_status(&s));
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!(
                        "\nstopped following; job {job_id} goes on. Follow it again: `croupier job \
                         watch {job_id} --from-seq {next}`; stop it: `croupier job cancel {job_id}`"
                    );
                    return Ok(130);
                }
            };
            match message {
                Ok(Some(ev)) => {
                    retries = 0;
                    if ev.seq > 0 {
                        next = ev.seq + 1;
                    }
                    view.show(&ev);
                    match EventType::try_from(ev.r#type) {
                        Ok(EventType::Done) => return Ok(done_exit(&ev)),
                        Ok(EventType::Error) => return Ok(EXIT_ERROR),
                        Ok(EventType::Cancelled) => return Ok(EXIT_CANCELLED),
                        _ => {}
                    }
                }
                Ok(None) => {
                    // The stream ended without a terminal event we saw: ask for the record.
                    let record = client.get_job(job_id).await.map_err(|s| status_error(&s))?;
                    return Ok(exit_code(&record.status));
                }
                Err(s) if s.code() == tonic::Code::Unavailable && retries < 60 => {
                    retries += 1;
                    if !json {
                        eprintln!("stream broken ({}); resuming from seq {next}", s.message());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Err(s) => {
                    eprintln!("error: {}", status_error(&s));
                    return Ok(super::exit::of_status(&s));
                }
            }
        }
    }
}

/// The exit code of a job that ended `DONE`: 0, unless its result says the command it ran
/// exited non-zero (`exit_code`, as `container.run` and `container.exec` report it), as
/// `docker run` passes a command's failure on.
fn done_exit(ev: &croupier_proto::function::v1::JobEvent) -> i32 {
    let result = croupier_proto::json::opt_struct_to_json(ev.data.as_ref());
    match result.get("exit_code").and_then(serde_json::Value::as_i64) {
        Some(code) if code != 0 => {
            eprintln!("job {}: its command exited with {code}", ev.job_id);
            EXIT_ERROR
        }
        _ => 0,
    }
}

fn exit_code(status: &str) -> i32 {
    match status {
        "completed" => 0,
        "cancelled" => EXIT_CANCELLED,
        _ => EXIT_ERROR,
    }
}

async fn cancel(a: CancelArgs) -> anyhow::Result<i32> {
    let client = a.conn.client("client-dev").await?;
    let resp = match client.cancel_job(&a.job_id, &a.reason).await {
        Ok(r) => r,
        Err(s) => {
            eprintln!("error: {}", status_error(&s));
            return Ok(super::exit::of_status(&s));
        }
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"success": resp.success, "status": resp.status, "message": resp.message})
        );
    } else {
        println!("{} ({})", resp.message, resp.status);
    }
    Ok(if resp.success { 0 } else { 1 })
}

fn record_json(r: &JobRecord) -> serde_json::Value {
    serde_json::json!({
        "job_id": r.job_id,
        "function_id": r.function_id,
        "game_id": r.game_id,
        "env": r.env,
        "agent_id": r.agent_id,
        "caller": r.caller,
        "status": r.status,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "result": opt_struct_to_json(r.result.as_ref()),
        "error": r.error,
        "error_code": r.error_code,
        "first_seq": r.first_seq,
        "last_seq": r.last_seq,
        "cancel_reason": r.cancel_reason,
    })
}

async fn get(a: GetArgs) -> anyhow::Result<i32> {
    let client = a.conn.client("client-dev").await?;
    let r = match client.get_job(&a.job_id).await {
        Ok(r) => r,
        Err(s) => {
            eprintln!("error: {}", status_error(&s));
            return Ok(super::exit::of_status(&s));
        }
    };
    if a.json {
        println!("{}", record_json(&r));
        return Ok(0);
    }
    let j = record_json(&r);
    for (k, v) in j.as_object().into_iter().flatten() {
        let shown = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) if k.ends_with("_at") => {
                crate::output::time(n.as_i64().unwrap_or(0))
            }
            other => other.to_string(),
        };
        if !(shown.is_empty() || shown == "null" || shown == "0") {
            println!("{k:<14}{shown}");
        }
    }
    Ok(0)
}

async fn list(a: ListArgs) -> anyhow::Result<i32> {
    let client = a.conn.client("client-dev").await?;
    let resp = client
        .list_jobs(ListJobsRequest {
            function_id: a.function.clone(),
            agent_id: a.agent.clone(),
            status: a.status.clone(),
            page_size: a.limit,
            page_token: a.page_token.clone(),
            game_id: a.game_id.clone(),
            env: a.env.clone(),
        })
        .await
        .map_err(|s| status_error(&s))
        .context("listing jobs")?;
    if a.json {
        let jobs: Vec<serde_json::Value> = resp.jobs.iter().map(record_json).collect();
        println!(
            "{}",
            serde_json::json!({"jobs": jobs, "next_page_token": resp.next_page_token})
        );
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = resp
        .jobs
        .iter()
        .map(|r| {
            vec![
                r.job_id.clone(),
                r.function_id.clone(),
                r.agent_id.clone(),
                r.status.clone(),
                age(r.created_at),
                r.last_seq.to_string(),
                if r.error.is_empty() {
                    String::new()
                } else {
                    format!("{}: {}", r.error_code, r.error)
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "JOB", "FUNCTION", "AGENT", "STATUS", "CREATED", "EVENTS", "ERROR"
            ],
            &rows
        )
    );
    if !resp.next_page_token.is_empty() {
        println!("more: --page-token {}", resp.next_page_token);
    }
    Ok(0)
}

/// Runs `croupier job logs`.
async fn logs(a: LogsArgs) -> anyhow::Result<i32> {
    let client = a.conn.client("client-dev").await?;
    if a.follow {
        let mut stream = client
            .job_events_of_step(&a.job_id, 1, &a.step)
            .await
            .map_err(|s| status_error(&s))?;
        while let Some(ev) = stream.message().await.map_err(|s| status_error(&s))? {
            let data = croupier_proto::json::opt_struct_to_json(ev.data.as_ref());
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"seq": ev.seq, "message": ev.message, "data": data})
                );
            } else if let Some(status) = data["status"].as_str() {
                println!(
                    "[{} {status}] {}",
                    a.step,
                    crate::output::clean(&ev.message)
                );
            } else {
                println!("{}", crate::output::clean(&ev.message));
            }
        }
        return Ok(0);
    }
    let log = client
        .step_log(&a.job_id, &a.step)
        .await
        .map_err(|s| status_error(&s))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "step": log.step, "index": log.index, "status": log.status,
                "lines": log.lines, "dropped_lines": log.dropped_lines, "ended_at": log.ended_at,
            })
        );
        return Ok(0);
    }
    if log.dropped_lines > 0 {
        println!(
            "... {} older lines were not kept (1 MiB per step)",
            log.dropped_lines
        );
    }
    for line in &log.lines {
        println!("{}", crate::output::clean(line));
    }
    eprintln!(
        "step {} ({}) {} at {}",
        log.step,
        log.index,
        log.status,
        crate::output::time(log.ended_at)
    );
    Ok(0)
}
