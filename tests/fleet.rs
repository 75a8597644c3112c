//! End-to-end: the fleet through real `croupier server` and `croupier agent` processes over
//! mTLS, on the real dockerd:
//! - the node pack's inventory arrives with the registration and matches `/proc`; a Docker
//!   network created on the host adds a bridge NIC, which the agent notices and the server
//!   stores as a new version with a diff naming the NIC (and again when it goes);
//! - a container killed in Docker produces a `container.die` event with its exit code, seen live by
//!   a follower and replayed by `croupier events`; node state changes and agents coming and
//!   going are events too;
//! - the node pack's metric samples reach the server in batches, answer a range query (raw
//!   points, the figures as `/proc` has them), show in `croupier node metrics` and on the
//!   server's Prometheus endpoint; a crossed threshold is an event;
//! - an invalid inventory at registration is refused naming the field; invalid inventories and
//!   events on a tunnel become `inventory.invalid` / `event.refused` events, and the tunnel and
//!   every other agent carry on.

mod common;

use std::time::Duration;

use common::raw_agent::RawAgent;
use common::{IMAGE, Mesh, docker, docker_ready};
use croupier_proto::control::v1::{
    AgentFrame, CpuInfo, NodeEvent, NodeInventory, RegisterAgentRequest, StreamNodeEventsRequest,
    StreamNodeEventsResponse, agent_frame, control_service_client::ControlServiceClient,
};
use croupier_sdk::{Client, TlsFiles};
use serde_json::Value;
use tokio::time::Instant;
use tonic::Code;

const HB: Duration = Duration::from_secs(1);

/// Polls `f` until it returns Some, for at most `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The events `croupier events` prints as JSON for these arguments.
fn cli_events(mesh: &Mesh, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = mesh.cli("client-c1", &all);
    assert_eq!(code, 0, "croupier events: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A docker command run when dropped (removing what a test made, even when it fails).
struct Undo(Vec<String>);

impl Drop for Undo {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        let _ = docker(&args);
    }
}

#[tokio::test]
async fn inventory_arrives_with_the_registration_and_changes_are_versioned() {
    if !docker_ready() {
        return;
    }
    let mesh = Mesh::start(&["n1"], HB);
    let _agent = mesh.agent_with(
        "n1",
        &[],
        &["--packs", "node", "--inventory-interval", "1s"],
    );
    mesh.wait_online(&["n1"]).await;
    let client = mesh.client("client-c1").await;

    // Version 1 came with the registration, and says what /proc says.
    let first = client.node_resources("n1", false, None).await.unwrap();
    assert_eq!(first.versions.len(), 1);
    let v1 = &first.versions[0];
    let inv = v1.inventory.clone().unwrap();
    let logical = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(inv.cpu.unwrap().threads as usize, logical);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(inv.kernel.unwrap().release, release.trim());
    assert!(inv.nics.iter().any(|n| n.name == "lo"));
    assert!(!inv.runtimes.unwrap().docker.is_empty(), "Docker's version");

    // A network adds a bridge interface to the host: the agent sends the changed inventory.
    let name = format!("croupier-e2e-{}", std::process::id());
    let (ok, id, err) = docker(&["network", "create", &name]);
    assert!(ok, "docker network create: {err}");
    let net = Undo(vec!["network".into(), "rm".into(), name]);
    let bridge = format!("br-{}", &id[..12]);
    let v2 = until("inventory version 2", Duration::from_secs(30), || async {
        let r = client.node_resources("n1", true, None).await.unwrap();
        r.versions
            .iter()
            .find(|v| {
                v.inventory
                    .as_ref()
                    .is_some_and(|i| i.nics.iter().any(|n| n.name == bridge))
            })
            .map(|v| v.version)
    })
    .await;
    assert!(v2 > v1.version);
    let diff = client
        .node_resources("n1", false, Some((v1.version, v2)))
        .await
        .unwrap();
    let added: Vec<&str> = diff.changes.iter().map(|c| c.path.as_str()).collect();
    assert!(
        added.contains(&format!("nics[{bridge}].mac").as_str()),
        "{added:?}"
    );
    assert!(
        diff.changes
            .iter()
            .all(|c| c.before.is_empty() || !c.path.contains(&bridge))
    );

    // The network goes: another version without it.
    drop(net);
    let v3 = until("inventory version 3", Duration::from_secs(30), || async {
        let r = client.node_resources("n1", false, None).await.unwrap();
        let latest = r.versions.last()?;
        let gone = !latest
            .inventory
            .as_ref()
            .is_some_and(|i| i.nics.iter().any(|n| n.name == bridge));
        (latest.version > v2 && gone).then_some(latest.version)
    })
    .await;

    // The CLI: history, diff, JSON; and each change is an event.
    let (code, out, err) = mesh.cli(
        "client-c1",
        &[
            "node",
            "resources",
            "n1",
            "--diff",
            &v2.to_string(),
            &v3.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("nics[{bridge}]")), "{out}");
    let (code, out, err) = mesh.cli(
        "client-c1",
        &["node", "resources", "n1", "--history", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert!(json["versions"].as_array().unwrap().len() >= 3, "{json}");
    assert_eq!(
        json["versions"][0]["inventory"]["kernel"]["release"],
        release.trim()
    );
    let (code, _, err) = mesh.cli(
        "client-c1",
        &["node", "resources", "n1", "--diff", "1", "999"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no inventory version 999"), "{err}");
    let changed = cli_events(&mesh, &["--node", "n1", "--type", "inventory.changed"]);
    let versions: Vec<&str> = changed
        .iter()
        .map(|e| e["data"]["version"].as_str().unwrap())
        .collect();
    assert!(versions.contains(&v2.to_string().as_str()), "{changed:?}");
    assert!(versions.contains(&v3.to_string().as_str()), "{changed:?}");
}

#[tokio::test]
async fn a_container_killed_in_docker_is_a_die_event_with_its_exit_code() {
    if !docker_ready() {
        return;
    }
    let mesh = Mesh::start(&["c1"], HB);
    let agent = mesh.agent_with("c1", &[], &["--packs", "container"]);
    mesh.wait_online(&["c1"]).await;
    let client = mesh.client("client-c1").await;
    let mut live = client
        .node_events(StreamNodeEventsRequest {
            node_id: "c1".into(),
            r#type: "container.".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();

    let name = format!("croupier-e2e-{}-killed", std::process::id());
    let _rm = Undo(vec!["rm".into(), "-f".into(), name.clone()]);
    let (ok, id, err) = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "300"]);
    assert!(ok, "docker run: {err}");
    // Killed in Docker: SIGKILL, exit code 137.
    let (ok, _, err) = docker(&["kill", &name]);
    assert!(ok, "docker kill: {err}");
    let die = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let item: StreamNodeEventsResponse = live.message().await.unwrap().unwrap();
            let e = item.event.expect("no gap");
            if e.r#type == "container.die" && e.entity_id == id {
                return e;
            }
        }
    })
    .await
    .expect("a container.die event within 30 s");
    assert_eq!(die.data["exit_code"], "137");
    assert_eq!(die.status, "exited");
    assert_eq!(die.node_id, "c1");
    assert_eq!((die.game_id.as_str(), die.env.as_str()), ("g", "e"));

    // Replayed by the CLI, start first, then die.
    let events = cli_events(&mesh, &["--node", "c1", "--type", "container."]);
    let mine: Vec<&str> = events
        .iter()
        .filter(|e| e["entity_id"] == id.as_str())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let (start, die_at) = (
        mine.iter().position(|t| *t == "container.start"),
        mine.iter().position(|t| *t == "container.die"),
    );
    assert!(start.is_some() && start < die_at, "{mine:?}");

    // A state change and the agent coming and going are events too.
    let (code, _, err) = mesh.cli(
        "admin-ops",
        &[
            "node",
            "state",
            "c1",
            "maintenance",
            "--reason",
            "disk swap",
        ],
    );
    assert_eq!(code, 0, "{err}");
    agent.signal(9);
    let offline = until("agent.offline", Duration::from_secs(20), || async {
        let events = cli_events(&mesh, &["--node", "c1", "--type", "agent.offline"]);
        events.into_iter().next()
    })
    .await;
    assert_eq!(offline["status"], "offline");
    let all = cli_events(&mesh, &["--node", "c1"]);
    let state = all
        .iter()
        .find(|e| e["type"] == "node.state")
        .expect("a node.state event");
    assert_eq!(state["status"], "maintenance");
    assert_eq!(state["data"]["reason"], "disk swap");
    assert!(all.iter().any(|e| e["type"] == "agent.online"));
    // Seqs increase through the log.
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test]
async fn metric_samples_have_a_history_and_thresholds_are_events() {
    let mesh = Mesh::start(&["m1"], HB);
    let _agent = mesh.agent_with(
        "m1",
        &["tier=test"],
        &[
            "--packs",
            "node",
            "--metrics-interval",
            "500ms",
            "--metrics-batch",
            "1s",
            // Any machine uses more than 1 % of its memory: crossed on the first sample (the
            // others off, whatever this machine's CPU and disks are doing).
            "--thresholds",
            "memory=1,cpu=0,disk=0",
        ],
    );
    mesh.wait_online(&["m1"]).await;
    let client = mesh.client("client-c1").await;
    let series = until("four samples", Duration::from_secs(30), || async {
        let r = client.node_metrics("m1", 0, &[]).await.ok()?;
        let cpu = r.series.iter().find(|s| s.name == "cpu.percent")?;
        (cpu.points.len() >= 4).then_some(r)
    })
    .await;
    let by_name = |n: &str| series.series.iter().find(|s| s.name == n).unwrap();
    let cpu = by_name("cpu.percent");
    assert!(cpu.points.iter().all(|p| (0.0..=100.0).contains(&p.value)));
    assert!(
        cpu.points
            .windows(2)
            .all(|w| w[0].timestamp < w[1].timestamp)
    );
    // Raw points: min = max = value, all newer than raw_since.
    assert!(
        cpu.points
            .iter()
            .all(|p| p.min == p.value && p.max == p.value)
    );
    assert!(cpu.points.iter().all(|p| p.timestamp >= series.raw_since));
    // memory.used_bytes against /proc/meminfo (MemTotal - MemAvailable), within 25 %.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |k: &str| -> f64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    let used = (kib("MemTotal:") - kib("MemAvailable:")) * 1024.0;
    let reported = by_name("memory.used_bytes").points.last().unwrap().value;
    assert!(
        (reported - used).abs() / used < 0.25,
        "memory.used_bytes {reported} vs /proc {used}"
    );
    assert!(
        series.series.iter().any(|s| s.name.starts_with("net.")),
        "per-interface metrics"
    );
    // A prefix selects; the CLI shows the table and JSON.
    let only = client
        .node_metrics("m1", 0, &["memory.".into()])
        .await
        .unwrap();
    assert!(only.series.iter().all(|s| s.name.starts_with("memory.")));
    let (code, out, err) = mesh.cli("client-c1", &["node", "metrics", "m1", "--metric", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cpu.percent"), "{out}");
    let (code, out, err) = mesh.cli(
        "client-c1",
        &["node", "metrics", "m1", "--since", "5m", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert!(json["series"].as_array().unwrap().len() >= 5, "{json}");

    // The threshold: crossed once, told as an event.
    let crossed = cli_events(&mesh, &["--node", "m1", "--type", "threshold.crossed"]);
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert_eq!(crossed[0]["entity_id"], "memory.percent");
    assert_eq!(crossed[0]["data"]["threshold"], "1");

    // Per label: an assignment's config of node.metrics raises the threshold; memory is
    // below it now, which clears the crossing.
    let (code, _, err) = mesh.cli(
        "admin-ops",
        &[
            "assign",
            "set",
            "thresholds",
            "--function",
            "node.metrics",
            "--game-id",
            "g",
            "--env",
            "e",
            "--selector",
            "tier=test",
            "--config",
            "threshold.memory=99",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cleared = until("threshold.cleared", Duration::from_secs(20), || async {
        cli_events(&mesh, &["--node", "m1", "--type", "threshold.cleared"])
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(cleared["entity_id"], "memory.percent");
    assert_eq!(cleared["data"]["threshold"], "99");

    // Prometheus: the latest value per node and metric.
    let text = common::scrape(mesh.metrics.as_deref().unwrap());
    assert!(
        text.lines().any(|l| l.starts_with("croupier_node_metric{")
            && l.contains("metric=\"cpu.percent\"")
            && l.contains("node=\"m1\"")),
        "no croupier_node_metric for m1 in the scrape"
    );
    // A node with no history here is a clear NOT_FOUND.
    let e = client.node_metrics("nobody", 0, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("no metrics of node"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn running_containers_have_their_cpu_and_memory_in_the_samples() {
    if !docker_ready() {
        return;
    }
    let name = format!("croupier-e2e-{}-idle", std::process::id());
    let _rm = Undo(vec!["rm".into(), "-f".into(), name.clone()]);
    let (ok, _, err) = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "300"]);
    assert!(ok, "docker run: {err}");
    let mesh = Mesh::start(&["k1"], HB);
    let _agent = mesh.agent_with(
        "k1",
        &[],
        &[
            "--packs",
            "node",
            "--metrics-interval",
            "1s",
            "--metrics-batch",
            "1s",
        ],
    );
    mesh.wait_online(&["k1"]).await;
    let client = mesh.client("client-c1").await;
    let memory = format!("container.{name}.memory_bytes");
    let r = until(
        "the container's memory",
        Duration::from_secs(30),
        || async {
            let r = client
                .node_metrics("k1", 0, &["container.".into()])
                .await
                .ok()?;
            r.series
                .iter()
                .any(|s| s.name == memory && !s.points.is_empty())
                .then_some(r)
        },
    )
    .await;
    let mem = r.series.iter().find(|s| s.name == memory).unwrap();
    assert!(mem.points.iter().all(|p| p.value > 0.0), "{mem:?}");
    let cpu = format!("container.{name}.cpu_percent");
    assert!(r.series.iter().any(|s| s.name == cpu), "{:?}", r.series);
    let running = client
        .node_metrics("k1", 0, &["containers.running".into()])
        .await
        .unwrap();
    assert!(running.series[0].points.last().unwrap().value >= 1.0);
    // node.metrics carries the latest periodic sample.
    let mut o = common::opts();
    o.routing = "targeted".into();
    o.target = "k1".into();
    let m = client
        .invoke("node.metrics", serde_json::json!({}), &o)
        .await
        .unwrap();
    assert!(m.success, "{}", m.error);
    let m = croupier_proto::json::opt_struct_to_json(m.result.as_ref());
    assert!(
        m["latest_sample"]["values"][&memory].as_f64().unwrap() > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn bad_inventories_and_events_are_refused_and_told() {
    let mesh = Mesh::start(&["a1", "a2"], HB);
    let client = mesh.client("client-c1").await;

    // At registration: refused, naming the fields.
    let pem = TlsFiles::from_dir(&mesh.certs(), "agent-a1")
        .load()
        .unwrap();
    let channel = croupier_sdk::tls::connect(&mesh.url, &pem).await.unwrap();
    let mut control = ControlServiceClient::new(channel);
    let bad = NodeInventory {
        node_type: "mainframe".into(),
        hostname: "h".into(),
        cpu: Some(CpuInfo {
            threads: 0,
            arch: "x86_64".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = control
        .register_agent(RegisterAgentRequest {
            agent_id: "a1".into(),
            game_id: "g".into(),
            env: "e".into(),
            inventory: Some(bad.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for field in [
        "node_type is \"mainframe\"",
        "cpu.threads is 0",
        "memory is missing",
    ] {
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }

    // On a tunnel: told as events; the tunnel goes on serving.
    let raw = RawAgent::connect(&mesh, "a2", vec![]).await;
    let send = |frame| {
        let tx = raw.tx.clone();
        async move { tx.send(AgentFrame { frame: Some(frame) }).await.unwrap() }
    };
    send(agent_frame::Frame::Inventory(Box::new(bad))).await;
    send(agent_frame::Frame::NodeEvent(NodeEvent {
        r#type: "Not A Type".into(),
        ..Default::default()
    }))
    .await;
    send(agent_frame::Frame::NodeEvent(NodeEvent {
        r#type: "game.match_over".into(),
        node_id: "someone-else".into(),
        entity_id: "match-7".into(),
        message: "match 7 over".into(),
        ..Default::default()
    }))
    .await;
    let events = until("the three events", Duration::from_secs(10), || async {
        let ev = node_events(&client, "a2").await;
        (ev.len() >= 3).then_some(ev)
    })
    .await;
    let of = |t: &str| events.iter().find(|e| e.r#type == t).cloned();
    let invalid = of("inventory.invalid").expect("inventory.invalid");
    assert!(invalid.message.contains("node_type"), "{}", invalid.message);
    let refused = of("event.refused").expect("event.refused");
    assert!(
        refused.message.contains("[a-z0-9._-]"),
        "{}",
        refused.message
    );
    // The agent cannot speak for another node.
    let own = of("game.match_over").expect("the agent's own event");
    assert_eq!(own.node_id, "a2");
    assert_eq!(own.entity_id, "match-7");
    mesh.wait_online(&["a2"]).await;
    let e = client.node_resources("a2", false, None).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("reported no inventory"),
        "{}",
        e.message()
    );

    // Agents do not read the fleet.
    let agent = Client::connect(&mesh.url, &TlsFiles::from_dir(&mesh.certs(), "agent-a1"))
        .await
        .unwrap();
    let e = agent.node_resources("a2", false, None).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

/// Every event of `node` this server has, replayed from seq 1.
async fn node_events(client: &Client, node: &str) -> Vec<NodeEvent> {
    let mut s = client
        .node_events(StreamNodeEventsRequest {
            node_id: node.into(),
            from_seq: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(item) = s.message().await.unwrap() {
        out.extend(item.event);
    }
    out
}
