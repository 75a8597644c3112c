//! End-to-end: pipeline templates stored through the CLI, started as `pipeline.start` jobs on a
//! real agent whose `container.run` steps run on the real dockerd with the local busybox image:
//! args filled by the server (a missing one named), envs merged on the agent (its own value
//! wins), step events through PENDING → RUNNING → COMPLETED, and cancel stopping the running
//! step and removing its container; each finished step's log kept with the job (`croupier
//! job logs --step`, live with `--follow`), a cancelled step's not.

mod common;

use std::time::Duration;

use common::{IMAGE, Mesh, bin, containers_labelled, docker_ready, opts};
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_proto::json::opt_struct_to_json;
use serde_json::{Value, json};
use tonic::Code;

/// A step's stored log, once its (background) write is done.
async fn step_log(
    client: &croupier_sdk::Client,
    job: &str,
    step: &str,
) -> croupier_proto::function::v1::GetStepLogResponse {
    for _ in 0..100 {
        if let Ok(log) = client.step_log(job, step).await {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .step_log(job, step)
        .await
        .expect("the step's log is stored")
}

fn data(e: &JobEvent) -> Value {
    opt_struct_to_json(e.data.as_ref())
}

/// (step, status) of the step-status events, in order.
fn statuses(events: &[JobEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .map(data)
        .filter(|d| d.get("status").is_some() && d.get("index").is_some())
        .map(|d| {
            (
                d["step"].as_str().unwrap_or_default().to_string(),
                d["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

const TEMPLATES: &str = r#"
id = "greet"
description = "says hello from a container"
envs = ["REGION", "FROM_CALLER"]

[[args]]
name = "greeting"
required = true

[[args]]
name = "who"
default = "world"

[[steps]]
name = "ping"
function = "agent.ping"
args = { said = "${args.greeting}" }

[[steps]]
name = "say"
function = "container.run"
timeout = 60
args = { image = "IMAGE", cmd = ["sh", "-c", "echo ${args.greeting} ${args.who} from ${env.REGION} and ${env.FROM_CALLER}"] }
"#;

const FAILING: &str = r#"
id = "failing"
[[steps]]
name = "breaks"
function = "container.run"
args = { image = "IMAGE", cmd = ["sh", "-c", "echo trying; exit 2"] }

[[steps]]
name = "after"
function = "agent.ping"
"#;

const SLOW: &str = r#"
id = "slow"
[[steps]]
name = "sleep"
function = "container.run"
args = { image = "IMAGE", cmd = ["sleep", "300"] }

[[steps]]
name = "never"
function = "agent.ping"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_run_their_steps_in_order_and_cancel_stops_the_running_step() {
    if !docker_ready() {
        return;
    }
    let mesh = Mesh::start(&["p1"], Duration::from_secs(2));
    let agent_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let _p1 = mesh.agent_env(
        "p1",
        &[
            ("REGION", "agent-eu"),
            ("CROUPIER_AGENT_HTTP_LISTEN", &agent_port),
        ],
    );
    mesh.wait_online(&["p1"]).await;
    let cli = |args: &[&str], identity: &str| {
        std::process::Command::new(bin())
            .args(args)
            .args(["--server", &mesh.url, "--tls-dir"])
            .arg(mesh.certs())
            .args(["--identity", identity])
            .output()
            .unwrap()
    };
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/pipelines/start-platform.toml"),
    )
    .unwrap();
    for (name, text) in [
        ("greet.toml", TEMPLATES),
        ("slow.toml", SLOW),
        ("failing.toml", FAILING),
        ("start-platform.toml", example.as_str()),
    ] {
        let file = mesh.dir.path().join(name);
        std::fs::write(&file, text.replace("IMAGE", IMAGE)).unwrap();
        let f = file.to_str().unwrap();
        let denied = cli(&["pipeline", "put", f], "client-c1");
        assert!(!denied.status.success(), "only admins store pipelines");
        let out = cli(&["pipeline", "put", f], "admin-ops");
        assert!(out.status.success(), "{out:?}");
    }
    let out = cli(&["pipeline", "list"], "client-c1");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("greet") && listed.contains("slow"),
        "{listed}"
    );

    let client = mesh.client("client-c1").await;
    // The server checks the args.
    let err = client
        .start_job(
            "pipeline.start",
            json!({"template_id": "greet", "args": {}}),
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"greeting\""), "{err:?}");

    let job = client
        .start_job(
            "pipeline.start",
            json!({
                "template_id": "greet",
                "args": {"greeting": "hi"},
                "envs": {"REGION": "caller-us", "FROM_CALLER": "the caller"}
            }),
            &opts(),
        )
        .await
        .unwrap();
    let record = job.wait().await.unwrap();
    assert_eq!(record.status, "completed", "{record:?}");
    let mut stream = client.job_events(job.id(), 0).await.unwrap();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e);
    }
    let s = statuses(&events);
    let expect: Vec<(String, String)> = [
        ("ping", "PENDING"),
        ("say", "PENDING"),
        ("ping", "RUNNING"),
        ("ping", "COMPLETED"),
        ("say", "RUNNING"),
        ("say", "COMPLETED"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(s, expect);
    // The container's line: args filled by the server, the agent's REGION over the caller's.
    let line = events
        .iter()
        .find(|e| data(e)["step"] == "say" && e.message.contains("hi world"))
        .unwrap_or_else(|| panic!("no output line: {events:?}"));
    assert_eq!(line.message, "hi world from agent-eu and the caller");
    let progress: Vec<f64> = events
        .iter()
        .filter(|e| e.r#type == EventType::Progress as i32)
        .map(|e| e.progress)
        .collect();
    assert_eq!(progress, vec![0.5, 1.0]);

    // The step's log is kept with the job once the step ended.
    let log = step_log(&client, job.id(), "say").await;
    assert_eq!(log.status, "COMPLETED");
    assert_eq!(log.index, 1);
    assert!(
        log.lines
            .contains(&"hi world from agent-eu and the caller".to_string()),
        "{log:?}"
    );
    let out = cli(&["job", "logs", job.id(), "--step", "say"], "client-c1");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hi world from agent-eu"), "{text}");
    // Followed live (here: replayed, the job is over): only this step's events, to its end.
    let out = cli(
        &["job", "logs", job.id(), "--step", "say", "--follow"],
        "client-c1",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[say RUNNING]") && text.contains("[say COMPLETED]"),
        "{text}"
    );
    assert!(text.contains("hi world from agent-eu"), "{text}");
    assert!(!text.contains("[ping"), "other steps left out: {text}");

    // A failing step stops the pipeline, named; the rest is not run.
    let job = client
        .start_job("pipeline.start", json!({"template_id": "failing"}), &opts())
        .await
        .unwrap();
    let record = job.wait().await.unwrap();
    assert_eq!(record.status, "failed", "{record:?}");
    assert!(record.error.contains("step breaks failed"), "{record:?}");
    let events: Vec<JobEvent> = {
        let mut s = client.job_events(job.id(), 0).await.unwrap();
        let mut v = Vec::new();
        while let Some(e) = s.message().await.unwrap() {
            v.push(e);
        }
        v
    };
    let s = statuses(&events);
    assert!(s.contains(&("breaks".into(), "FAILED".into())), "{s:?}");
    assert!(s.contains(&("after".into(), "CANCELLED".into())), "{s:?}");
    assert!(
        events.iter().any(|e| e.message == "trying"),
        "the step's output is kept"
    );
    let log = step_log(&client, job.id(), "breaks").await;
    assert_eq!(log.status, "FAILED");
    assert!(log.lines.contains(&"trying".to_string()), "{log:?}");
    // The failed job is a node event of its agent.
    let out = cli(&["events", "--json", "--type", "job.failed"], "client-c1");
    let text = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        failed.iter().any(|e| e["entity_id"] == job.id()
            && e["node_id"] == "p1"
            && e["data"]["function"] == "pipeline.start"),
        "{text}"
    );
    // A step that never ran (CANCELLED) has no stored log, and the error says what there is.
    let e = client.step_log(job.id(), "after").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("no stored log of step \"after\"") && e.message().contains("breaks"),
        "{}",
        e.message()
    );

    // The example from deploy/pipelines: a platform container that answers.
    let instance = format!("e2e-{}", std::process::id());
    let job = client
        .start_job(
            "pipeline.start",
            json!({
                "template_id": "start-platform",
                "args": {"instance": instance, "image": IMAGE},
                "envs": {"REGION": "eu"}
            }),
            &opts(),
        )
        .await
        .unwrap();
    let record = job.wait().await;
    let _ = common::docker(&["rm", "-f", &format!("platform-{instance}")]);
    let record = record.unwrap();
    assert_eq!(record.status, "completed", "{record:?}");
    let steps = opt_struct_to_json(record.result.as_ref())["steps"].clone();
    assert_eq!(steps[2]["step"], "check");
    assert_eq!(steps[2]["result"]["stdout"].as_str().unwrap().trim(), "ok");

    // Cancel: the running container step stops and its container goes; the rest is not run.
    let job = client
        .start_job("pipeline.start", json!({"template_id": "slow"}), &opts())
        .await
        .unwrap();
    let mut stream = client.job_events(job.id(), 0).await.unwrap();
    loop {
        let e = stream.message().await.unwrap().unwrap();
        if data(&e)["step"] == "sleep" && data(&e)["status"] == "RUNNING" {
            break;
        }
    }
    // Wait for the container to exist.
    let label = format!("croupier.job={}", job.id());
    for _ in 0..100 {
        if !containers_labelled(&label).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !containers_labelled(&label).is_empty(),
        "the step's container runs"
    );
    job.cancel("stop the pipeline").await.unwrap();
    let mut rest = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        rest.push(e);
    }
    assert_eq!(rest.last().unwrap().r#type, EventType::Cancelled as i32);
    let s = statuses(&rest);
    assert!(s.contains(&("sleep".into(), "CANCELLED".into())), "{s:?}");
    assert!(s.contains(&("never".into(), "CANCELLED".into())), "{s:?}");
    assert!(
        containers_labelled(&label).is_empty(),
        "the cancelled step's container is removed"
    );

    // What the server and the agent counted.
    let server = common::scrape(mesh.metrics.as_deref().unwrap());
    let at = |series: &str| common::sample(&server, series);
    assert_eq!(at("croupier_pipelines_total{op=\"put\"}"), Some(4.0));
    assert_eq!(
        at("croupier_pipeline_runs_total{outcome=\"started\"}"),
        Some(4.0)
    );
    assert_eq!(
        at("croupier_pipeline_runs_total{outcome=\"INVALID_ARGUMENT\"}"),
        Some(1.0)
    );
    let agent = common::scrape(&agent_port);
    let at = |series: &str| common::sample(&agent, series);
    assert_eq!(
        at("croupier_agent_pipeline_runs_total{outcome=\"completed\"}"),
        Some(2.0),
        "{agent}"
    );
    assert_eq!(
        at("croupier_agent_pipeline_runs_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("croupier_agent_pipeline_runs_total{outcome=\"cancelled\"}"),
        Some(1.0)
    );
    assert!(at("croupier_agent_pipeline_steps_total{status=\"FAILED\"}") >= Some(1.0));
    assert!(at("croupier_agent_pipeline_steps_total{status=\"CANCELLED\"}") >= Some(3.0));
}
