//! End-to-end: the agent's `container` pack through real `croupier server` and `croupier agent`
//! processes, on the real dockerd with the local image `croupier-test/busybox:latest` (which
//! `scripts/test.sh` builds; nothing is pulled): a create/start/inspect/exec/stop/restart/remove
//! round trip, `container.list` filtering on the croupier labels, `container.run` streaming its
//! output and ending DONE with the exit code, a cancelled `container.run` leaving no container,
//! `container.logs` following a container, an unknown image, and an agent without Docker.
//!
//! Without dockerd the Docker tests are skipped with the reason printed, unless
//! `CROUPIER_REQUIRE_DOCKER=1` (as in CI), which makes them fail.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{IMAGE, Mesh, Proc, bin, containers_labelled, docker, docker_ready, opts};
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_proto::json::opt_struct_to_json;
use croupier_sdk::Client;
use serde_json::{Value, json};

const HB: Duration = Duration::from_secs(1);

/// A container name unique to this test run.
fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "croupier-e2e-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the named containers when dropped, so a failing test leaves nothing behind.
struct Remove(Vec<String>);

impl Drop for Remove {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A server and one agent `c1` carrying the container pack.
async fn mesh() -> (Mesh, Proc, Client) {
    let mesh = Mesh::start(&["c1"], HB);
    let agent = mesh.agent_with("c1", &[], &["--packs", "container"]);
    mesh.wait_online(&["c1"]).await;
    let client = mesh.client("client-c1").await;
    (mesh, agent, client)
}

/// Invokes `function`, expecting success; its result.
async fn ok(c: &Client, function: &str, payload: Value) -> Value {
    let r = c
        .invoke(function, payload.clone(), &opts())
        .await
        .unwrap_or_else(|s| panic!("{function} {payload}: {s:?}"));
    assert!(
        r.success,
        "{function} {payload}: {} {}",
        r.error_code, r.error
    );
    assert_eq!(r.agent_id, "c1");
    opt_struct_to_json(r.result.as_ref())
}

/// Invokes `function`, expecting a handler failure; (code, message).
async fn fails(c: &Client, function: &str, payload: Value) -> (String, String) {
    let r = c
        .invoke(function, payload.clone(), &opts())
        .await
        .unwrap_or_else(|s| panic!("{function} {payload}: {s:?}"));
    assert!(!r.success, "{function} {payload} succeeded: {:?}", r.result);
    (r.error_code, r.error)
}

/// A job's events from the start until the stream ends (after the terminal event).
async fn collect(client: &Client, job_id: &str) -> Vec<JobEvent> {
    let mut stream = client.job_events(job_id, 0).await.unwrap();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
            Ok(Ok(Some(e))) => out.push(e),
            Ok(Ok(None)) => return out,
            Ok(Err(s)) => panic!("job stream failed: {s:?}"),
            Err(_) => panic!("job stream stalled; got {out:?}"),
        }
    }
}

fn kind(e: &JobEvent) -> EventType {
    EventType::try_from(e.r#type).unwrap()
}

fn data(e: &JobEvent) -> Value {
    opt_struct_to_json(e.data.as_ref())
}

/// The output lines of a job's LOG events, as (stream, line).
fn output_lines(events: &[JobEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| kind(e) == EventType::Log)
        .filter_map(|e| Some((data(e)["stream"].as_str()?.to_string(), e.message.clone())))
        .collect()
}

fn pair(stream: &str, line: &str) -> (String, String) {
    (stream.to_string(), line.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_inspect_exec_stop_restart_remove() {
    if !docker_ready() {
        return;
    }
    let (_mesh, _agent, c) = mesh().await;
    let name = unique("box");
    let _cleanup = Remove(vec![name.clone()]);

    let created = ok(
        &c,
        "container.create",
        json!({
            "image": IMAGE,
            "name": name,
            "cmd": ["sleep", "300"],
            "env": {"GREETING": "hello from croupier"},
            "labels": {"team": "e2e"},
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64, "{created}");
    // Docker itself sees the labels.
    let (okd, labels, err) = docker(&["inspect", "-f", "{{json .Config.Labels}}", &id]);
    assert!(okd, "{err}");
    let labels: Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["croupier.agent"], "c1");
    assert_eq!(labels["team"], "e2e");
    assert!(labels.get("croupier.job").is_none(), "{labels}");

    // The same name again: ALREADY_EXISTS.
    let (code, msg) = fails(
        &c,
        "container.create",
        json!({"image": IMAGE, "name": name}),
    )
    .await;
    assert_eq!(code, "ALREADY_EXISTS", "{msg}");
    assert!(msg.contains("already in use"), "{msg}");

    let i = ok(&c, "container.inspect", json!({"id": name})).await;
    assert_eq!(i["id"], id);
    assert_eq!(i["name"], name);
    assert_eq!(i["state"]["status"], "created");
    assert_eq!(i["state"]["running"], false);

    // exec needs a running container.
    let (code, msg) = fails(&c, "container.exec", json!({"id": name, "cmd": ["true"]})).await;
    assert_eq!(code, "FAILED_PRECONDITION", "{msg}");

    assert_eq!(
        ok(&c, "container.start", json!({"id": name})).await["id"],
        name
    );
    let i = ok(&c, "container.inspect", json!({"id": id})).await;
    assert_eq!(i["state"]["status"], "running");
    assert_eq!(i["state"]["running"], true);
    assert!(i["state"]["pid"].as_i64().unwrap() > 0);
    assert_eq!(i["image"], IMAGE);
    assert_eq!(i["cmd"], json!(["sleep", "300"]));
    assert_eq!(i["labels"]["croupier.agent"], "c1");
    // Starting it again is fine.
    ok(&c, "container.start", json!({"id": name})).await;

    let r = ok(
        &c,
        "container.exec",
        json!({"id": name, "cmd": ["sh", "-c", "echo $GREETING; echo $EXTRA >&2; exit 4"], "env": {"EXTRA": "to stderr"}}),
    )
    .await;
    assert_eq!(r["exit_code"], 4, "{r}");
    assert_eq!(r["stdout"], "hello from croupier\n");
    assert_eq!(r["stderr"], "to stderr\n");
    assert_eq!(r["truncated"], false);

    // An exec past its deadline is DEADLINE_EXCEEDED, and its command (with the child it
    // started) is killed in the container, not left running.
    let mut o = opts();
    o.timeout = Some(Duration::from_secs(1));
    let e = c
        .invoke(
            "container.exec",
            json!({"id": name, "cmd": ["sh", "-c", "sleep 301 & sleep 302; wait"]}),
            &o,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    let sleeping = || {
        let (okd, ps, err) = docker(&["exec", &name, "ps", "-o", "pid,args"]);
        assert!(okd, "ps in the container: {err}");
        ps.lines()
            .filter(|l| l.contains("sleep 301") || l.contains("sleep 302") || l.contains("sh -c"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sleeping().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sleeping(),
        Vec::<String>::new(),
        "the exec's processes are gone"
    );

    // Removing a running container needs force.
    let (code, msg) = fails(&c, "container.remove", json!({"id": name})).await;
    assert_eq!(code, "FAILED_PRECONDITION", "{msg}");

    // `sleep` as PID 1 ignores SIGTERM: killed after the 1 s timeout.
    ok(&c, "container.stop", json!({"id": name, "timeout": 1})).await;
    let i = ok(&c, "container.inspect", json!({"id": name})).await;
    assert_eq!(i["state"]["status"], "exited");
    assert_eq!(i["state"]["running"], false);
    assert_eq!(i["state"]["exit_code"], 137);
    // Stopping it again is fine.
    ok(&c, "container.stop", json!({"id": name, "timeout": 1})).await;

    ok(&c, "container.restart", json!({"id": name, "timeout": 1})).await;
    let i = ok(&c, "container.inspect", json!({"id": name})).await;
    assert_eq!(i["state"]["running"], true);

    ok(&c, "container.remove", json!({"id": name, "force": true})).await;
    let (okd, _, _) = docker(&["inspect", &id]);
    assert!(!okd, "container {id} still exists");
    let (code, msg) = fails(&c, "container.inspect", json!({"id": name})).await;
    assert_eq!(code, "NOT_FOUND");
    assert!(
        msg.starts_with(&format!("no such container {name}")),
        "{msg}"
    );
    let (code, _) = fails(&c, "container.remove", json!({"id": name})).await;
    assert_eq!(code, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_on_the_croupier_labels() {
    if !docker_ready() {
        return;
    }
    let (_mesh, _agent, c) = mesh().await;
    let (a, b, outside) = (unique("a"), unique("b"), unique("outside"));
    let _cleanup = Remove(vec![a.clone(), b.clone(), outside.clone()]);
    let team = unique("team");
    ok(
        &c,
        "container.create",
        json!({"image": IMAGE, "name": a, "cmd": ["true"], "labels": {"team": team, "role": "a"}}),
    )
    .await;
    ok(
        &c,
        "container.create",
        json!({"image": IMAGE, "name": b, "cmd": ["true"], "labels": {"team": team, "role": "b"}}),
    )
    .await;
    // Made with the docker CLI, not through Croupier: same team label, no croupier.agent.
    let team_label = format!("team={team}");
    let (okd, _, err) = docker(&[
        "create",
        "--name",
        &outside,
        "--label",
        &team_label,
        IMAGE,
        "true",
    ]);
    assert!(okd, "{err}");

    let names = |r: &Value| -> Vec<String> {
        let mut n: Vec<String> = r["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();

    let r = ok(
        &c,
        "container.list",
        json!({"all": true, "labels": {"team": team}}),
    )
    .await;
    let mut all3 = vec![a.clone(), b.clone(), outside.clone()];
    all3.sort();
    assert_eq!(names(&r), all3);
    let r = ok(
        &c,
        "container.list",
        json!({"all": true, "labels": {"team": team}, "mine": true}),
    )
    .await;
    assert_eq!(names(&r), both);
    let r = ok(
        &c,
        "container.list",
        json!({"all": true, "labels": {"team": team, "croupier.agent": "c1"}}),
    )
    .await;
    assert_eq!(names(&r), both);
    let r = ok(
        &c,
        "container.list",
        json!({"all": true, "labels": {"team": team, "role": "b"}}),
    )
    .await;
    assert_eq!(names(&r), [b.as_str()]);
    let listed = &r["containers"][0];
    assert_eq!(listed["image"], IMAGE);
    assert_eq!(listed["state"], "created");
    assert_eq!(listed["labels"]["croupier.agent"], "c1");
    // Without `all`, only running containers: none of these.
    let r = ok(&c, "container.list", json!({"labels": {"team": team}})).await;
    assert_eq!(names(&r), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_the_output_and_ends_done_with_the_exit_code() {
    if !docker_ready() {
        return;
    }
    let (_mesh, _agent, c) = mesh().await;
    let job = c
        .start_job(
            "container.run",
            json!({"image": IMAGE, "cmd": ["sh", "-c", "echo hello; echo err >&2; exit 3"]}),
            &opts(),
        )
        .await
        .unwrap();
    let _cleanup = Remove(containers_labelled(&format!("croupier.job={}", job.id())));
    let events = collect(&c, job.id()).await;
    assert_eq!(kind(&events[0]), EventType::Start);
    let last = events.last().unwrap();
    assert_eq!(kind(last), EventType::Done, "{events:?}");
    let result = data(last);
    assert_eq!(result["exit_code"], 3, "{result}");
    assert_eq!(result["lines"], 2);
    assert_eq!(result["removed"], true);
    // Docker copies stdout and stderr separately, so only the order within a stream is kept.
    let mut lines = output_lines(&events);
    lines.sort();
    assert_eq!(lines, [pair("stderr", "err"), pair("stdout", "hello")]);
    // The container was labelled with the job, and is gone.
    let id = result["id"].as_str().unwrap();
    let created = events
        .iter()
        .find(|e| data(e)["container_id"] == id)
        .expect("a 'created container' event");
    assert!(
        created.message.starts_with("created container "),
        "{created:?}"
    );
    assert!(containers_labelled(&format!("croupier.job={}", job.id())).is_empty());

    // Kept (`remove: false`): found again by its job label through container.list.
    let job = c
        .start_job(
            "container.run",
            json!({"image": IMAGE, "cmd": ["sh", "-c", "echo kept"], "remove": false}),
            &opts(),
        )
        .await
        .unwrap();
    let events = collect(&c, job.id()).await;
    let _cleanup = Remove(containers_labelled(&format!("croupier.job={}", job.id())));
    let result = data(events.last().unwrap());
    assert_eq!(kind(events.last().unwrap()), EventType::Done, "{events:?}");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["removed"], false);
    assert_eq!(output_lines(&events), [pair("stdout", "kept")]);
    let r = ok(
        &c,
        "container.list",
        json!({"all": true, "labels": {"croupier.job": job.id()}}),
    )
    .await;
    let listed = r["containers"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{r}");
    assert_eq!(listed[0]["id"], result["id"]);
    assert_eq!(listed[0]["labels"]["croupier.agent"], "c1");
    assert_eq!(listed[0]["state"], "exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_stops_and_removes_its_container() {
    if !docker_ready() {
        return;
    }
    let (_mesh, _agent, c) = mesh().await;
    let job = c
        .start_job(
            "container.run",
            json!({"image": IMAGE, "cmd": ["sh", "-c", "echo up; sleep 300"]}),
            &opts(),
        )
        .await
        .unwrap();
    let label = format!("croupier.job={}", job.id());
    let _cleanup = Remove(containers_labelled(&label));
    // Wait until it runs: its first line arrives.
    let mut stream = c.job_events(job.id(), 0).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("no output from the container")
            .unwrap()
            .expect("stream ended before the output");
        let line = data(&e)["stream"] == "stdout" && e.message == "up";
        seen.push(e);
        if line {
            break;
        }
    }
    let running = containers_labelled(&label);
    assert_eq!(running.len(), 1, "{seen:?}");
    let _cleanup = Remove(running.clone());

    let r = job.cancel("test over").await.unwrap();
    assert!(r.success, "{r:?}");
    let events = collect(&c, job.id()).await;
    let last = events.last().unwrap();
    assert_eq!(kind(last), EventType::Cancelled, "{events:?}");
    // Its last report says the container is gone, and it is.
    let before = &events[events.len() - 2];
    assert!(before.message.contains("stopped and removed"), "{before:?}");
    assert!(
        containers_labelled(&label).is_empty(),
        "container left behind"
    );
    let (okd, _, _) = docker(&["inspect", &running[0]]);
    assert!(!okd);
    let record = c.get_job(job.id()).await.unwrap();
    assert_eq!(record.status, "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_a_container_until_it_ends_or_the_job_is_cancelled() {
    if !docker_ready() {
        return;
    }
    let (_mesh, _agent, c) = mesh().await;
    let (counter, sleeper) = (unique("counter"), unique("sleeper"));
    let _cleanup = Remove(vec![counter.clone(), sleeper.clone()]);
    ok(
        &c,
        "container.create",
        json!({
            "image": IMAGE,
            "name": counter,
            "cmd": ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done; echo done >&2"],
        }),
    )
    .await;
    ok(&c, "container.start", json!({"id": counter})).await;
    let job = c
        .start_job("container.logs", json!({"id": counter}), &opts())
        .await
        .unwrap();
    let events = collect(&c, job.id()).await;
    let last = events.last().unwrap();
    assert_eq!(kind(last), EventType::Done, "{events:?}");
    assert_eq!(data(last)["lines"], 4);
    assert_eq!(
        output_lines(&events),
        [
            pair("stdout", "line1"),
            pair("stdout", "line2"),
            pair("stdout", "line3"),
            pair("stderr", "done"),
        ]
    );
    // `tail` without `follow`: the last line only.
    let job = c
        .start_job(
            "container.logs",
            json!({"id": counter, "follow": false, "tail": 1}),
            &opts(),
        )
        .await
        .unwrap();
    let events = collect(&c, job.id()).await;
    assert_eq!(output_lines(&events), [pair("stderr", "done")]);

    // A container that keeps running: followed until the job is cancelled.
    ok(
        &c,
        "container.create",
        json!({"image": IMAGE, "name": sleeper, "cmd": ["sh", "-c", "echo awake; sleep 300"]}),
    )
    .await;
    ok(&c, "container.start", json!({"id": sleeper})).await;
    let job = c
        .start_job("container.logs", json!({"id": sleeper}), &opts())
        .await
        .unwrap();
    let mut stream = c.job_events(job.id(), 0).await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("no log line")
            .unwrap()
            .expect("stream ended early");
        if e.message == "awake" {
            break;
        }
    }
    job.cancel("enough").await.unwrap();
    let events = collect(&c, job.id()).await;
    assert_eq!(
        kind(events.last().unwrap()),
        EventType::Cancelled,
        "{events:?}"
    );
    // The container itself is left alone.
    let i = ok(&c, "container.inspect", json!({"id": sleeper})).await;
    assert_eq!(i["state"]["running"], true);

    // Logs of a container that does not exist.
    let job = c
        .start_job("container.logs", json!({"id": unique("ghost")}), &opts())
        .await
        .unwrap();
    let events = collect(&c, job.id()).await;
    let last = events.last().unwrap();
    assert_eq!(kind(last), EventType::Error, "{events:?}");
    assert_eq!(data(last)["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_image_is_not_found_with_a_clear_message() {
    if !docker_ready() {
        return;
    }
    let (_mesh, _agent, c) = mesh().await;
    let image = "croupier-test/no-such-image:latest";
    let (code, msg) = fails(&c, "container.create", json!({"image": image})).await;
    assert_eq!(code, "NOT_FOUND");
    assert!(
        msg.starts_with(&format!(
            "image {image} not found locally; it cannot be pulled here"
        )),
        "{msg}"
    );
    let job = c
        .start_job("container.run", json!({"image": image}), &opts())
        .await
        .unwrap();
    let events = collect(&c, job.id()).await;
    let last = events.last().unwrap();
    assert_eq!(kind(last), EventType::Error, "{events:?}");
    assert_eq!(data(last)["code"], "NOT_FOUND");
    assert!(
        last.message
            .starts_with(&format!("image {image} not found locally"))
    );
    assert!(containers_labelled(&format!("croupier.job={}", job.id())).is_empty());
}

/// Needs no Docker: the agent is pointed at a socket that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_docker_the_pack_registers_and_answers_unavailable() {
    let mesh = Mesh::start(&["nodocker"], HB);
    let log = std::fs::File::create(mesh.dir.path().join("agent-nodocker.log")).unwrap();
    let child = Command::new(bin())
        .args([
            "agent",
            "--server",
            &mesh.url,
            "--id",
            "nodocker",
            "--game-id",
            "g",
            "--env",
            "e",
            "--packs",
            "container",
        ])
        .arg("--tls-dir")
        .arg(mesh.certs())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting croupier agent");
    let _agent = Proc {
        child,
        name: "nodocker".into(),
    };
    mesh.wait_online(&["nodocker"]).await;
    let c = mesh.client("client-c1").await;

    let regs = c.registrations("g", "e", "container.list").await.unwrap();
    let reg = regs
        .registrations
        .iter()
        .find(|r| r.function_id == "container.list")
        .expect("container.list registered");
    let d = reg.function_descriptor.as_ref().unwrap();
    assert!(
        d.description
            .contains("Docker is unavailable on this agent")
            && d.description.contains("/nonexistent/docker.sock"),
        "{}",
        d.description
    );
    assert_eq!(d.category, "container");

    let r = c
        .invoke("container.list", json!({}), &opts())
        .await
        .unwrap();
    assert!(!r.success);
    assert_eq!(r.error_code, "UNAVAILABLE");
    assert!(
        r.error.starts_with("Docker is not running ("),
        "{}",
        r.error
    );
    let job = c
        .start_job("container.run", json!({"image": IMAGE}), &opts())
        .await
        .unwrap();
    let events = collect(&c, job.id()).await;
    let last = events.last().unwrap();
    assert_eq!(kind(last), EventType::Error, "{events:?}");
    assert_eq!(data(last)["code"], "UNAVAILABLE");
    // The rest of the agent works.
    let r = c.invoke("agent.ping", json!({}), &opts()).await.unwrap();
    assert!(r.success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_non_zero_fails_job_start_follow() {
    if !docker_ready() {
        return;
    }
    let (mesh, _agent, _c) = mesh().await;
    let run_follow = |cmd: Value| {
        let payload = json!({"image": IMAGE, "cmd": cmd}).to_string();
        mesh.cli(
            "client-c1",
            &[
                "job",
                "start",
                "container.run",
                "--payload",
                &payload,
                "--game-id",
                "g",
                "--env",
                "e",
                "--follow",
            ],
        )
    };
    let (code, out, err) = run_follow(json!(["sh", "-c", "exit 3"]));
    assert_eq!(
        code, 1,
        "like docker run, the command's failure is the CLI's: {out} {err}"
    );
    assert!(err.contains("its command exited with 3"), "{err}");
    let (code, out, err) = run_follow(json!(["true"]));
    assert_eq!(code, 0, "{out} {err}");
}
