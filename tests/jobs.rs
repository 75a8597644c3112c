//! End-to-end: jobs through real `croupier server` and `croupier agent` processes — ordered
//! events with consecutive seqs, late subscribers and `from_seq`, cancel, agent loss, a server
//! restart mid-job without gap or duplicate, idempotency keys, bad input, and the CLI.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, bin, opts};
use croupier_proto::common::v1::NodeState;
use croupier_proto::function::v1::{EventType, JobEvent, ListJobsRequest};
use croupier_proto::json::opt_struct_to_json;
use croupier_sdk::Client;
use serde_json::json;
use tonic::Code;

/// Reads a job's events from `from_seq` until the stream ends (after the terminal event).
async fn collect(client: &Client, job_id: &str, from_seq: i64) -> Vec<JobEvent> {
    let mut stream = client.job_events(job_id, from_seq).await.unwrap();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Ok(Ok(Some(e))) => out.push(e),
            Ok(Ok(None)) => return out,
            Ok(Err(s)) => panic!("job stream failed: {s:?}"),
            Err(_) => panic!("job stream stalled; got {} events", out.len()),
        }
    }
}

fn kind(e: &JobEvent) -> EventType {
    EventType::try_from(e.r#type).unwrap()
}

fn seqs(events: &[JobEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

/// Asserts events are 1..=n in order with START first and one terminal event last.
fn assert_complete(events: &[JobEvent], terminal: EventType) {
    let n = events.len() as i64;
    assert_eq!(
        seqs(events),
        (1..=n).collect::<Vec<_>>(),
        "consecutive seqs"
    );
    assert_eq!(kind(&events[0]), EventType::Start);
    assert_eq!(kind(events.last().unwrap()), terminal);
    let terminals = events
        .iter()
        .filter(|e| {
            matches!(
                kind(e),
                EventType::Done | EventType::Error | EventType::Cancelled
            )
        })
        .count();
    assert_eq!(terminals, 1, "exactly one terminal event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_streams_in_order_replays_for_late_subscribers_and_resumes_from_seq() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;

    let job = client
        .start_job("agent.countdown", json!({"steps": 5, "ms": 30}), &opts())
        .await
        .unwrap();
    let first = client.get_job(job.id()).await.unwrap();
    assert!(
        ["pending", "running"].contains(&first.status.as_str()),
        "{first:?}"
    );
    let live = collect(&client, job.id(), 0).await;
    // START, 5 × (PROGRESS, LOG), DONE.
    assert_eq!(live.len(), 12, "{live:?}");
    assert_complete(&live, EventType::Done);
    let progress: Vec<f64> = live
        .iter()
        .filter(|e| kind(e) == EventType::Progress)
        .map(|e| e.progress)
        .collect();
    assert_eq!(progress, vec![0.2, 0.4, 0.6, 0.8, 1.0]);
    let result = opt_struct_to_json(live.last().unwrap().data.as_ref());
    assert_eq!(result["steps"], 5);
    assert_eq!(result["agent_id"], "a1");

    // A late subscriber gets the whole history; from_seq resumes mid-stream.
    let late = collect(&client, job.id(), 0).await;
    assert_eq!(late, live);
    let tail = collect(&client, job.id(), 7).await;
    assert_eq!(seqs(&tail), (7..=12).collect::<Vec<_>>());
    assert_eq!(&tail[..], &live[6..]);

    // A job function invoked synchronously runs to its result.
    let sync = client
        .invoke("agent.countdown", json!({"steps": 2}), &opts())
        .await
        .unwrap();
    assert!(sync.success, "{sync:?}");
    assert_eq!(opt_struct_to_json(sync.result.as_ref())["steps"], 2);

    let record = client.get_job(job.id()).await.unwrap();
    assert_eq!(record.status, "completed");
    assert_eq!(record.last_seq, 12);
    assert_eq!(record.first_seq, 1);
    assert_eq!(record.agent_id, "a1");
    assert_eq!(record.caller, "spiffe://croupier/client/c1");
    assert!(record.started_at >= record.created_at && record.ended_at >= record.started_at);
    assert_eq!(opt_struct_to_json(record.result.as_ref())["steps"], 5);

    // ListJobs: newest first, filters, pages.
    let second = client
        .start_job("agent.countdown", json!({"steps": 1}), &opts())
        .await
        .unwrap();
    second.wait().await.unwrap();
    let page = client
        .list_jobs(ListJobsRequest {
            function_id: "agent.countdown".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].job_id, second.id(), "newest first");
    let next = client
        .list_jobs(ListJobsRequest {
            function_id: "agent.countdown".into(),
            page_size: 1,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.jobs.len(), 1);
    assert_eq!(next.jobs[0].job_id, job.id());
    assert!(next.next_page_token.is_empty(), "last page");
    let failed = client
        .list_jobs(ListJobsRequest {
            status: "failed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(failed.jobs.is_empty());
    let by_agent = client
        .list_jobs(ListJobsRequest {
            agent_id: "a1".into(),
            status: "completed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_agent.jobs.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_job_delivers_every_event_once() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    // ms 0: the handler emits as fast as it can (more than the agent's outbox holds), so it
    // must be slowed down by acknowledgements rather than drop anything.
    let steps = 6000;
    let job = client
        .start_job("agent.countdown", json!({"steps": steps, "ms": 0}), &opts())
        .await
        .unwrap();
    let events = collect(&client, job.id(), 0).await;
    assert_eq!(events.len() as i64, 2 * steps + 2);
    assert_complete(&events, EventType::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_handler_and_ends_the_job_cancelled() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 1000, "ms": 50}), &opts())
        .await
        .unwrap();
    let mut stream = job.events(0).await.unwrap();
    // Wait until it runs.
    loop {
        let e = stream.message().await.unwrap().unwrap();
        if kind(&e) == EventType::Progress {
            break;
        }
    }
    // Someone else may not cancel it.
    let agent_client = mesh.client("agent-a1").await;
    let denied = agent_client.cancel_job(job.id(), "").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let asked = Instant::now();
    let resp = job.cancel("maintenance window").await.unwrap();
    assert!(resp.success, "{resp:?}");
    let mut rest = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        rest.push(e);
    }
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    let last = rest.last().unwrap();
    assert_eq!(kind(last), EventType::Cancelled);
    assert_eq!(last.message, "maintenance window");
    assert!(
        rest.iter()
            .any(|e| kind(e) == EventType::Log && e.message.contains("countdown cancelled")),
        "the handler saw the token and cleaned up: {rest:?}"
    );
    let all = collect(&client, job.id(), 0).await;
    assert_complete(&all, EventType::Cancelled);
    let record = client.get_job(job.id()).await.unwrap();
    assert_eq!(record.status, "cancelled");
    assert_eq!(record.cancel_reason, "maintenance window");

    let again = job.cancel("again").await.unwrap();
    assert!(!again.success);
    assert!(again.message.contains("already finished"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_ends_its_job_with_agent_lost() {
    let hb = Duration::from_millis(400);
    let mesh = Mesh::start(&["a1"], hb);
    let a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 1000, "ms": 50}), &opts())
        .await
        .unwrap();
    let mut stream = job.events(0).await.unwrap();
    while kind(&stream.message().await.unwrap().unwrap()) != EventType::Progress {}
    let killed = Instant::now();
    a1.signal(9);
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = Some(e);
    }
    let last = last.unwrap();
    assert_eq!(kind(&last), EventType::Error, "{last:?}");
    assert!(last.message.contains("agent lost"), "{last:?}");
    let waited = killed.elapsed();
    assert!(
        waited >= hb * 2 && waited < hb * 3 + Duration::from_secs(3),
        "ended after {waited:?} (offline after 3 × {hb:?})"
    );
    let record = client.get_job(job.id()).await.unwrap();
    assert_eq!(record.status, "failed");
    assert_eq!(record.error_code, "AGENT_LOST");
    assert_complete(&collect(&client, job.id(), 0).await, EventType::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_job_loses_no_event_and_repeats_none() {
    let mut mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 60, "ms": 50}), &opts())
        .await
        .unwrap();
    let job_id = job.id().to_string();
    let mut seen = Vec::new();
    let mut stream = job.events(0).await.unwrap();
    while seen.len() < 10 {
        seen.push(stream.message().await.unwrap().unwrap());
    }
    drop(stream);

    // Kill the server hard (no flush, no goodbye), then start it again on the same address.
    let addr = mesh.url.trim_start_matches("https://").to_string();
    let mut server = mesh.server.take().unwrap();
    server.signal(9);
    server.wait_exit(Duration::from_secs(10));
    drop(server);
    common::wait_port_free(&addr);
    mesh.start_server(&addr);

    // Resume where we were: every later event exactly once, up to DONE.
    let client = mesh.client("client-c1").await;
    let from = seen.last().unwrap().seq + 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rest = loop {
        match client.job_events(&job_id, from).await {
            Ok(_) => break collect(&client, &job_id, from).await,
            Err(s) => {
                assert!(
                    Instant::now() < deadline,
                    "job not served after restart: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    seen.extend(rest);
    assert_eq!(seen.len(), 122, "START + 60 × (PROGRESS, LOG) + DONE");
    assert_complete(&seen, EventType::Done);
    assert!(
        !seen.iter().any(|e| kind(e) == EventType::Gap),
        "no gap after a restart"
    );
    let record = client.get_job(&job_id).await.unwrap();
    assert_eq!(
        record.status,
        "completed",
        "{record:?}\n{}",
        mesh.server_log()
    );
    assert_eq!(record.last_seq, 122);
    // The whole history survives the restart too.
    assert_complete(&collect(&client, &job_id, 0).await, EventType::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_returns_the_same_job() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let mut o = opts();
    o.idempotency_key = "deploy-42".into();
    let payload = json!({"steps": 3, "ms": 10});
    let (a, b) = tokio::join!(
        client.start_job("agent.countdown", payload.clone(), &o),
        client.start_job("agent.countdown", payload.clone(), &o),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.id(),
        b.id(),
        "concurrent starts with one key make one job"
    );
    a.wait().await.unwrap();
    let c = client
        .start_job("agent.countdown", payload.clone(), &o)
        .await
        .unwrap();
    assert_eq!(
        c.id(),
        a.id(),
        "a repeat after the end returns the same job"
    );
    let jobs = client
        .list_jobs(ListJobsRequest {
            function_id: "agent.countdown".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.jobs.len(), 1, "one run only");
    let other = client
        .start_job("agent.countdown", json!({"steps": 4}), &o)
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_requests_get_clear_errors() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let expect = |r: Result<tonic::Streaming<JobEvent>, tonic::Status>, code: Code, says: &str| {
        let s = r.expect_err("an error");
        assert_eq!(s.code(), code, "{s:?}");
        assert!(s.message().contains(says), "{s:?}");
    };
    expect(
        client.job_events("no-such-job", 0).await,
        Code::NotFound,
        "does not exist",
    );
    expect(
        client.job_events("../etc", 0).await,
        Code::InvalidArgument,
        "job_id",
    );
    let s = client.get_job("nope").await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = client.cancel_job("nope", "").await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);

    let start = |f: &'static str, p: serde_json::Value, o: croupier_sdk::CallOptions| {
        let client = client.clone();
        async move { client.start_job(f, p, &o).await.expect_err("an error") }
    };
    let s = start("no.such.fn", json!({}), opts()).await;
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    let s = start("agent.countdown", json!({"steps": "many"}), opts()).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("steps"), "{s:?}");
    let mut broadcast = opts();
    broadcast.routing = "broadcast".into();
    let s = start("agent.countdown", json!({"steps": 1}), broadcast).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let s = client
        .list_jobs(ListJobsRequest {
            status: "sleeping".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // The server carries on.
    let ok = client
        .start_job("agent.countdown", json!({"steps": 1}), &opts())
        .await
        .unwrap();
    assert_eq!(ok.wait().await.unwrap().status, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_follows_jobs_and_exits_by_outcome() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .args(["--server", &mesh.url, "--tls-dir"])
            .arg(mesh.certs())
            .args(["--identity", "client-c1"]);
        cmd.output().unwrap()
    };
    let out = cli(&[
        "job",
        "start",
        "agent.countdown",
        "--payload",
        r#"{"steps": 2, "ms": 10}"#,
        "--game-id",
        "g",
        "--env",
        "e",
        "--follow",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0]["type"], "START");
    assert_eq!(lines[5]["type"], "DONE");
    let job_id = lines[0]["job_id"].as_str().unwrap().to_string();

    // Plain output when not a terminal; watch replays a finished job.
    let out = cli(&["job", "watch", &job_id]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[1] START") && text.contains("[6] DONE"),
        "{text}"
    );

    // A cancelled job exits 3.
    let out = cli(&[
        "job",
        "start",
        "agent.countdown",
        "--payload",
        r#"{"steps": 1000, "ms": 50}"#,
        "--game-id",
        "g",
        "--env",
        "e",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = cli(&["job", "cancel", &id, "--reason", "test"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cli(&["job", "watch", &id]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = cli(&["job", "get", &id, "--json"]);
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["status"], "cancelled");
    let out = cli(&["job", "list", "--status", "cancelled"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_dropped_by_retention_are_announced_with_a_gap() {
    let mesh = Mesh::start_with_env(
        &["a1"],
        Duration::from_secs(2),
        &[("CROUPIER_JOBS__MAX_EVENTS", "5")],
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 20, "ms": 5}), &opts())
        .await
        .unwrap();
    let record = job.wait().await.unwrap();
    assert_eq!(record.last_seq, 42);
    assert!(record.first_seq > 1, "old events were dropped: {record:?}");
    let events = collect(&client, job.id(), 0).await;
    let gap = &events[0];
    assert_eq!(kind(gap), EventType::Gap, "{events:?}");
    assert_eq!(gap.seq, 0);
    let next = opt_struct_to_json(gap.data.as_ref())["next_seq"]
        .as_i64()
        .unwrap();
    assert_eq!(next, events[1].seq);
    assert_eq!(opt_struct_to_json(gap.data.as_ref())["from_seq"], 1);
    let rest = seqs(&events[1..]);
    assert_eq!(
        rest,
        (next..=42).collect::<Vec<_>>(),
        "the retained tail, in order"
    );
    assert!(rest.len() < 42);
    // Asking only for retained events gets no gap.
    let tail = collect(&client, job.id(), 40).await;
    assert_eq!(seqs(&tail), vec![40, 41, 42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_node_cancels_its_running_jobs() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 1000, "ms": 50}), &opts())
        .await
        .unwrap();
    let mut stream = job.events(0).await.unwrap();
    while kind(&stream.message().await.unwrap().unwrap()) != EventType::Progress {}
    let admin = mesh.client("admin-ops").await;
    admin
        .set_node_state("a1", NodeState::Disabled, "hardware fault")
        .await
        .unwrap();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = Some(e);
    }
    let last = last.unwrap();
    assert_eq!(kind(&last), EventType::Cancelled, "{last:?}");
    assert!(last.message.contains("hardware fault"), "{last:?}");
    // No new job lands on a disabled node.
    let refused = client
        .start_job("agent.countdown", json!({"steps": 1}), &opts())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
}

/// `lb` counts the jobs an agent runs (from their start to their terminal event), so new jobs
/// go to the agent running fewer; heartbeats report the same counts to `agents`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_sends_new_jobs_to_the_agent_running_fewer() {
    let mesh = Mesh::start(&["l1", "l2"], Duration::from_secs(1));
    let _l1 = mesh.agent("l1", &[]);
    let _l2 = mesh.agent("l2", &[]);
    mesh.wait_online(&["l1", "l2"]).await;
    let client = mesh.client("client-c1").await;
    let long = json!({"steps": 300, "ms": 100});
    let start = |options: croupier_sdk::CallOptions| {
        let client = &client;
        let long = long.clone();
        async move {
            let job = client
                .start_job("agent.countdown", long, &options)
                .await
                .unwrap();
            let agent = client.get_job(job.id()).await.unwrap().agent_id;
            (job, agent)
        }
    };
    // `keep` runs to the end of the test, `stop` is cancelled halfway.
    let mut keep = Vec::new();
    for _ in 0..3 {
        keep.push(start(opts().target("l1")).await.0);
    }
    // l1 runs 3, l2 none: the next three go to l2.
    let mut stop = Vec::new();
    for _ in 0..3 {
        let (job, agent) = start(opts()).await;
        assert_eq!(agent, "l2");
        stop.push(job);
    }
    // The agents' heartbeats say the same.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let agents = client.agents("g", "e").await.unwrap();
        let running = |id: &str| {
            agents
                .iter()
                .find(|a| a.agent_id == id)
                .and_then(|a| a.status.get("running_jobs").cloned())
        };
        if running("l1").as_deref() == Some("3") && running("l2").as_deref() == Some("3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heartbeats never reported 3 running jobs each: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 3 and 3: the next two are shared.
    let mut next = Vec::new();
    for _ in 0..2 {
        let (job, agent) = start(opts()).await;
        next.push(agent);
        stop.push(job);
    }
    next.sort();
    assert_eq!(next, ["l1", "l2"]);
    // Ended jobs no longer count: with l2's jobs (and the shared ones) cancelled, l1 runs 3 and
    // l2 none, so l2 takes the next two.
    for job in &stop {
        job.cancel("make room").await.unwrap();
        job.wait().await.unwrap();
    }
    for _ in 0..2 {
        let (job, agent) = start(opts()).await;
        assert_eq!(agent, "l2");
        keep.push(job);
    }
    for job in &keep {
        job.cancel("test over").await.unwrap();
    }
}
