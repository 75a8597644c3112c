//! The deploy files run: `deploy/compose/compose.yaml` brought up with Debian's `docker-compose`
//! on the image `scripts/testbed-image.sh` builds without a registry (Croupier, etcd and
//! Prometheus from one local Debian base): 3 etcd members, 2 servers, 3 agents, 2 gateways and
//! Prometheus. Calls go through each server to every agent (forwarded when the other server
//! holds it), a job runs, an agent is scaled to 0 and back, Prometheus scrapes both servers, and
//! `docker-compose down -v` leaves no container, network or volume behind.
//!
//! Needs docker and docker-compose; under `CROUPIER_REQUIRE_TESTBED=1` (scripts/test.sh) a
//! missing one fails the test.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::testbed::{free_port, poll, ready, report, run};
use croupier_proto::function::v1::EventType;
use croupier_sdk::{CallOptions, Client, TlsFiles};
use serde_json::json;

const IMAGE: &str = "croupier-test/croupier:latest";

/// A compose project, torn down (`down -v`) when dropped.
struct Project {
    name: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    down: bool,
}

impl Project {
    fn compose(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new("docker-compose")
            .args(["--ansi", "never", "-p", &self.name, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("running docker-compose");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn must(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.compose(args);
        assert!(
            ok,
            "docker-compose {args:?} failed: {err}{out}\n{}",
            self.logs()
        );
        out
    }

    fn logs(&self) -> String {
        let (_, out, _) = self.compose(&["logs", "--tail", "30"]);
        out
    }

    /// What of this project Docker still has: containers, networks, volumes.
    fn leftovers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for kind in [
            &["ps", "-a", "-q"][..],
            &["network", "ls", "-q"],
            &["volume", "ls", "-q"],
        ] {
            let mut args = kind.to_vec();
            args.extend(["--filter", &filter]);
            let (_, out, _) = run("docker", &args);
            left.extend(out.lines().map(|l| format!("{} {l}", kind[0])));
        }
        left
    }

    fn down(&mut self) {
        self.must(&["down", "-v", "--remove-orphans", "-t", "5"]);
        self.down = true;
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.down {
            eprintln!("compose logs:\n{}", self.logs());
            let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "1"]);
        }
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tools() -> Result<(), String> {
    let (ok, _, err) = run("docker", &["info"]);
    if !ok {
        return Err(format!("docker info: {err}"));
    }
    let (ok, _, err) = run("docker-compose", &["version"]);
    if !ok {
        return Err(format!("docker-compose version: {err}"));
    }
    Ok(())
}

fn opts(target: &str) -> CallOptions {
    CallOptions::new()
        .game("demo")
        .env("prod")
        .target(target)
        .timeout(Duration::from_secs(10))
}

async fn online(client: &Client) -> BTreeSet<String> {
    client
        .agents("demo", "prod")
        .await
        .map(|agents| {
            agents
                .into_iter()
                .filter(|a| a.online)
                .map(|a| a.agent_id)
                .collect()
        })
        .unwrap_or_default()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_runs_serves_scales_and_leaves_nothing_behind() {
    if !ready("docker and docker-compose", tools()) {
        return;
    }
    let t0 = Instant::now();
    // The image: built from the binary under test on the local Debian base.
    let (ok, out, err) = run(
        repo().join("scripts/testbed-image.sh").to_str().unwrap(),
        &["--bin", &common::bin(), "--tag", IMAGE],
    );
    assert!(ok, "scripts/testbed-image.sh failed: {err}{out}");
    eprintln!("{out}");
    report("compose", "image ready after", t0.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_s = certs.to_str().unwrap();
    common::certs_cmd(
        &certs,
        "init",
        &[
            "--agent", "node-1", "--agent", "node-2", "--agent", "node-3", "--agent", "gw-1",
            "--agent", "gw-2", "--client", "ops", "--admin", "ops", "--host", "server-a", "--host",
            "server-b",
        ],
    );
    // The containers run as uid 65532: the bind-mounted files must be readable by it.
    common::testbed::must("chmod", &["-R", "a+rX", certs_s]);

    let (port_a, port_b, port_prom) = (free_port(), free_port(), free_port());
    let (gw1_metrics, gw2_metrics) = (free_port(), free_port());
    let mut env: Vec<(String, String)> = vec![
        ("CROUPIER_IMAGE", IMAGE.to_string()),
        ("CROUPIER_ETCD_IMAGE", IMAGE.to_string()),
        ("CROUPIER_PROMETHEUS_IMAGE", IMAGE.to_string()),
        ("CROUPIER_CERTS_DIR", certs_s.to_string()),
        ("CROUPIER_PORT_A", port_a.to_string()),
        ("CROUPIER_PORT_B", port_b.to_string()),
        ("CROUPIER_PORT_PROMETHEUS", port_prom.to_string()),
        ("CROUPIER_PORT_GATEWAY", free_port().to_string()),
        ("CROUPIER_PORT_GATEWAY_METRICS", gw1_metrics.to_string()),
        ("CROUPIER_PORT_GATEWAY_PUSH", free_port().to_string()),
        ("CROUPIER_PORT_GATEWAY2", free_port().to_string()),
        ("CROUPIER_PORT_GATEWAY2_METRICS", gw2_metrics.to_string()),
        ("CROUPIER_PORT_GATEWAY2_PUSH", free_port().to_string()),
        (
            "CROUPIER_GATEWAY_AUTH__HMAC_KEY",
            "dGVzdGJlZC1rZXktdGVzdGJlZC1rZXktdGVzdGJlZC0=".into(),
        ),
        ("CROUPIER_GATEWAY_PUSH_TOKEN", "testbed-push-token".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.push(("COMPOSE_HTTP_TIMEOUT".into(), "120".into()));
    let mut project = Project {
        name: format!("croupierbed{}", std::process::id()),
        file: repo().join("deploy/compose/compose.yaml"),
        env,
        down: false,
    };

    let t_up = Instant::now();
    project.must(&["up", "-d"]);
    let services: BTreeSet<String> = project
        .must(&["ps", "--services"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        services,
        set(&[
            "etcd-0",
            "etcd-1",
            "etcd-2",
            "server-a",
            "server-b",
            "node-1",
            "node-2",
            "node-3",
            "gw-1",
            "gw-2",
            "prometheus"
        ])
    );

    let tls = TlsFiles::from_dir(&certs, "client-ops");
    let url_a = format!("https://127.0.0.1:{port_a}");
    let url_b = format!("https://127.0.0.1:{port_b}");
    let all = set(&["gw-1", "gw-2", "node-1", "node-2", "node-3"]);
    let mut clients = Vec::new();
    for url in [&url_a, &url_b] {
        let got = poll(Duration::from_secs(120), || async {
            let client = Client::connect(url, &tls).await.ok()?;
            (online(&client).await == all).then_some(client)
        })
        .await;
        let Some((client, _)) = got else {
            panic!("{url} never listed {all:?} online\n{}", project.logs());
        };
        clients.push(client);
    }
    report("compose", "up until every agent online", t_up.elapsed());

    // Every agent through each server: the server that does not hold the agent forwards.
    for (server, client) in ["server-a", "server-b"].iter().zip(&clients) {
        let info = client.server_info().await.unwrap();
        assert_eq!(info.server_id, *server, "{info:?}");
        for agent in ["node-1", "node-2", "node-3"] {
            let r = client
                .invoke("agent.ping", json!({"via": server}), &opts(agent))
                .await
                .unwrap_or_else(|e| panic!("ping {agent} via {server}: {e:?}"));
            assert!(r.success, "{r:?}");
            let out = croupier_proto::json::opt_struct_to_json(r.result.as_ref());
            assert_eq!(out["agent_id"], agent, "{out}");
            assert_eq!(out["payload"]["via"], *server, "{out}");
        }
    }

    // A job through server-b on node-1, with every event once and in order.
    let job = clients[1]
        .start_job(
            "agent.countdown",
            json!({"steps": 3, "ms": 50}),
            &opts("node-1"),
        )
        .await
        .unwrap();
    let record = job.wait().await.unwrap();
    assert_eq!(record.status, "completed", "{record:?}");
    let mut events = clients[0].job_events(job.id(), 0).await.unwrap();
    let mut seen = Vec::new();
    while let Some(e) = events.message().await.unwrap() {
        seen.push((e.seq, EventType::try_from(e.r#type).unwrap()));
    }
    assert_eq!(
        seen.first().map(|e| e.1),
        Some(EventType::Start),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(|e| e.1), Some(EventType::Done), "{seen:?}");
    let seqs: Vec<i64> = seen.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seen.len() as i64).collect::<Vec<_>>());

    // Scale node-3 down: it says goodbye and leaves at once; calls to it fail UNAVAILABLE.
    let t_down = Instant::now();
    project.must(&["up", "-d", "--scale", "node-3=0", "--no-recreate"]);
    let left = set(&["gw-1", "gw-2", "node-1", "node-2"]);
    for client in &clients {
        let gone = poll(Duration::from_secs(30), || async {
            (online(client).await == left).then_some(())
        })
        .await;
        assert!(
            gone.is_some(),
            "node-3 still listed: {:?}",
            online(client).await
        );
    }
    report(
        "compose",
        "node-3 scaled to 0 until unlisted on both servers",
        t_down.elapsed(),
    );
    let err = clients[0]
        .invoke("agent.ping", json!({}), &opts("node-3"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::NotFound),
        "{err:?}"
    );
    let t_up3 = Instant::now();
    project.must(&["up", "-d", "--scale", "node-3=1", "--no-recreate"]);
    for client in &clients {
        let back = poll(Duration::from_secs(60), || async {
            (online(client).await == all).then_some(())
        })
        .await;
        assert!(
            back.is_some(),
            "node-3 did not come back\n{}",
            project.logs()
        );
    }
    report(
        "compose",
        "node-3 scaled to 1 until online on both servers",
        t_up3.elapsed(),
    );
    let r = clients[1]
        .invoke("agent.ping", json!({}), &opts("node-3"))
        .await
        .unwrap();
    assert!(r.success, "{r:?}");

    // Both gateways are ready (their /readyz on the published metrics ports).
    for port in [gw1_metrics, gw2_metrics] {
        let addr = format!("127.0.0.1:{port}");
        let ready = poll(Duration::from_secs(30), || {
            let addr = addr.clone();
            async move {
                let (status, _) = tokio::task::spawn_blocking(move || {
                    common::gateway::http(&addr, "GET", "/readyz", None, "")
                })
                .await
                .ok()?;
                (status == 200).then_some(())
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "gateway on {addr} not ready\n{}",
            project.logs()
        );
    }

    // Prometheus (Debian's, from the same image) scrapes both servers.
    let prom = format!("127.0.0.1:{port_prom}");
    let scraped = poll(Duration::from_secs(90), || {
        let prom = prom.clone();
        async move {
            let (status, body) = tokio::task::spawn_blocking(move || {
                common::gateway::http(&prom, "GET", "/api/v1/query?query=up", None, "")
            })
            .await
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let up: BTreeSet<String> = v["data"]["result"]
                .as_array()?
                .iter()
                .filter(|r| r["value"][1] == "1")
                .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_string))
                .collect();
            (status == 200 && up == set(&["server-a:9464", "server-b:9464"])).then_some(())
        }
    })
    .await;
    assert!(
        scraped.is_some(),
        "prometheus never saw both servers up\n{}",
        project.logs()
    );

    // Down with volumes: nothing of the project is left.
    let t_teardown = Instant::now();
    project.down();
    let left = project.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    report("compose", "down -v", t_teardown.elapsed());
    report("compose", "whole test", t0.elapsed());
}
