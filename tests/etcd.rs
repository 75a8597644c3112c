//! End-to-end on etcd: a `croupier server --store etcd` serves calls and jobs, keeps them across
//! its own restart (the data is in etcd), keeps invoking known agents while etcd is down while
//! writes fail with a clear `UNAVAILABLE`, and recovers when etcd returns.

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, opts};
use croupier_registry::store::conformance::etcd_or_skip;
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_etcd_serves_keeps_state_and_survives_an_etcd_outage() {
    let Some(mut etcd) = etcd_or_skip().await else {
        return;
    };
    let endpoint = etcd.endpoint.clone();
    let mut mesh = Mesh::start_with(
        &["a1", "a2"],
        Duration::from_secs(2),
        &[],
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoint,
            "--etcd-namespace",
            "/e2e",
        ],
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let r = client
        .invoke("agent.ping", json!({"n": 1}), &opts())
        .await
        .unwrap();
    assert!(r.success, "{r:?}");
    let job = client
        .start_job("agent.countdown", json!({"steps": 3, "ms": 10}), &opts())
        .await
        .unwrap();
    assert_eq!(job.wait().await.unwrap().status, "completed");

    // The server restarts: job records and events come back from etcd; the agent re-registers.
    let addr = mesh.url.trim_start_matches("https://").to_string();
    let mut server = mesh.server.take().unwrap();
    server.signal(9);
    server.wait_exit(Duration::from_secs(10));
    drop(server);
    mesh.start_server(&addr);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    // The job ended before the kill, but its end may not have been stored yet: then the agent
    // reports it again with its unacknowledged events, and it ends completed all the same.
    let record = client.job(job.id()).wait().await.unwrap();
    assert_eq!(record.status, "completed", "{record:?}");
    assert_eq!(record.last_seq, 8);
    let mut events = client.job_events(job.id(), 0).await.unwrap();
    let mut seqs = Vec::new();
    while let Some(e) = events.message().await.unwrap() {
        seqs.push(e.seq);
    }
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());

    // etcd goes away: calls to known agents go on; writes fail clearly.
    etcd.kill();
    let r = client
        .invoke("agent.ping", json!({"n": 2}), &opts())
        .await
        .unwrap();
    assert!(r.success, "invocations do not read the store: {r:?}");
    let err = client
        .start_job("agent.countdown", json!({"steps": 1}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("etcd"), "{err:?}");
    // A registration cannot be stored either.
    let agent = mesh.client("agent-a2").await;
    let err = agent
        .control_service()
        .register_agent(croupier_proto::control::v1::RegisterAgentRequest {
            agent_id: "a2".into(),
            game_id: "g".into(),
            env: "e".into(),
            functions: vec!["x.y".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("etcd"), "{err:?}");
    // Longer than the offline timeout (3 × 2 s): the agent heartbeats and holds its tunnel, so
    // it stays online although its lease cannot be refreshed.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let r = client
        .invoke("agent.ping", json!({"n": 3}), &opts())
        .await
        .unwrap();
    assert!(r.success, "{r:?}");

    // etcd returns: jobs start again.
    etcd.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        match client
            .start_job("agent.countdown", json!({"steps": 1}), &opts())
            .await
        {
            Ok(j) => break j,
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(job.wait().await.unwrap().status, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_jobs_through_another_replica_reach_the_owner() {
    let Some(etcd) = etcd_or_skip().await else {
        return;
    };
    let endpoint = etcd.endpoint.clone();
    let store_args = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoint,
        "--etcd-namespace",
        "/two",
    ];
    // Every process exports its spans to one OTLP receiver.
    let (spans, otlp) = common::otlp::receiver().await;
    let mut args = store_args.to_vec();
    args.extend(["--server-id", "a", "--otlp-endpoint", &otlp]);
    let mesh = Mesh::start_with(&["a1"], Duration::from_secs(2), &[], &args);
    let mut b_args = store_args.to_vec();
    b_args.extend(["--server-id", "b", "--otlp-endpoint", &otlp]);
    let (_b, b_url, b_metrics) = mesh.spawn_server_with_metrics("127.0.0.1:0", "server-b", &b_args);
    let _a1 = mesh.agent_with("a1", &[], &["--otlp-endpoint", &otlp]); // its tunnel is on a
    mesh.wait_online(&["a1"]).await;

    let tls = croupier_sdk::TlsFiles::from_dir(&mesh.certs(), "client-c1");
    let via_b = croupier_sdk::Client::connect(&b_url, &tls).await.unwrap();
    // b learns about a1 and server a from etcd.
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match via_b
            .invoke("agent.ping", json!({"via": "b"}), &opts())
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "b never reached a1: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(r.success, "{r:?}");
    assert_eq!(r.agent_id, "a1");
    assert_eq!(
        croupier_proto::json::opt_struct_to_json(r.result.as_ref())["payload"]["via"],
        "b"
    );
    // b counted and timed the forward.
    let text = common::scrape(b_metrics.as_deref().unwrap());
    let ok = common::sample(&text, "croupier_forwarded_calls_total{outcome=\"ok\"}");
    assert!(ok >= Some(1.0), "{text}");
    assert_eq!(
        common::sample(
            &text,
            "croupier_forwarded_call_duration_seconds_count{outcome=\"ok\"}"
        ),
        ok
    );
    // One trace across both replicas and the agent: b's span, its route, the forward, a's span
    // (the forward's child), a's route, the handler.
    let parent = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01";
    let traced = croupier_proto::trace::scope(parent.to_string(), async {
        via_b.invoke("agent.ping", json!({}), &opts()).await
    })
    .await
    .unwrap();
    assert!(traced.success, "{traced:?}");
    let got = spans
        .chain_of("5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7", 6)
        .await;
    assert_eq!(
        got,
        [
            "InvokeFunction",
            "route",
            "forward",
            "InvokeFunction",
            "route",
            "handler"
        ]
    );

    // b lists a1 as online and says that server a holds its tunnel, in the API and the CLI.
    let agents = via_b.agents("", "").await.unwrap();
    let a1 = agents.iter().find(|a| a.agent_id == "a1").unwrap();
    assert!(a1.online, "{a1:?}");
    assert_eq!(a1.owner, "a");
    let out = std::process::Command::new(common::bin())
        .args(["agents", "--server", &b_url, "--tls-dir"])
        .arg(mesh.certs())
        .args(["--identity", "client-c1"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("SERVER"), "{table}");
    let row = table.lines().find(|l| l.starts_with("a1 ")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[3..5], &["online", "a"], "{table}");

    // A job started through b runs on a1 (owned by a); b streams, reads and cancels it.
    let job = via_b
        .start_job("agent.countdown", json!({"steps": 1000, "ms": 50}), &opts())
        .await
        .unwrap();
    let mut stream = job.events(0).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.seq, 1);
    let record = via_b.get_job(job.id()).await.unwrap();
    assert_eq!(record.agent_id, "a1");
    let resp = job.cancel("from b").await.unwrap();
    assert!(resp.success, "{resp:?}");
    let mut last = first;
    while let Some(e) = stream.message().await.unwrap() {
        assert_eq!(e.seq, last.seq + 1, "no gap, no duplicate");
        last = e;
    }
    assert_eq!(
        last.r#type,
        croupier_proto::function::v1::EventType::Cancelled as i32
    );
    assert_eq!(last.message, "from b");
    // The caller is the original client, not server b.
    let record = via_b.get_job(job.id()).await.unwrap();
    assert_eq!(record.caller, "spiffe://croupier/client/c1");
    assert_eq!(record.status, "cancelled");

    // The same idempotency key through both replicas at once executes once.
    let via_a = mesh.client("client-c1").await;
    let mut keyed = opts();
    keyed.idempotency_key = "both-replicas".into();
    let payload = json!({"order": 7});
    let (ra, rb) = tokio::join!(
        via_a.invoke("agent.ping", payload.clone(), &keyed),
        via_b.invoke("agent.ping", payload.clone(), &keyed),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let calls = |r: &croupier_proto::function::v1::InvokeFunctionResponse| {
        croupier_proto::json::opt_struct_to_json(r.result.as_ref())["calls"].clone()
    };
    assert_eq!(calls(&ra), calls(&rb), "one execution, one stored outcome");
    let after = via_a
        .invoke("agent.ping", json!({}), &opts())
        .await
        .unwrap();
    assert_eq!(
        calls(&after).as_u64().unwrap(),
        calls(&ra).as_u64().unwrap() + 1,
        "the keyed pair ran the handler once"
    );

    // A node state set through b reaches the agent on a (a relays it), and b reports it
    // applied from the acknowledgement a recorded.
    let admin_b = croupier_sdk::Client::connect(
        &b_url,
        &croupier_sdk::TlsFiles::from_dir(&mesh.certs(), "admin-ops"),
    )
    .await
    .unwrap();
    let r = admin_b
        .set_node_state(
            "a1",
            croupier_proto::common::v1::NodeState::Maintenance,
            "via b",
        )
        .await
        .unwrap();
    assert_eq!(r.delivery, "applied", "{r:?}");
    assert!(r.record.unwrap().applied_at > 0);
    // The events live on a, which holds the agent.
    let (code, events, err) = mesh.cli(
        "client-c1",
        &["events", "--json", "--node", "a1", "--type", "node.state."],
    );
    assert_eq!(code, 0, "{err}");
    assert!(events.contains("node.state.applied"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_moves_the_agent_and_its_running_job_to_another_replica() {
    let Some(etcd) = etcd_or_skip().await else {
        return;
    };
    let endpoint = etcd.endpoint.clone();
    let store = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoint,
        "--etcd-namespace",
        "/fo",
    ];
    let mut a_args = store.to_vec();
    a_args.extend(["--server-id", "a"]);
    let mut mesh = Mesh::start_with(&["a1"], Duration::from_secs(1), &[], &a_args);
    let mut b_args = store.to_vec();
    b_args.extend(["--server-id", "b"]);
    let (_b, b_url) = mesh.spawn_server("127.0.0.1:0", "server-b", &b_args);
    let servers = format!("{},{b_url}", mesh.url);
    let _a1 = mesh.agent_on(&servers, "a1", &[], &[]);
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

    // The owner dies; the agent fails over to b, which adopts the job.
    let mut a = mesh.server.take().unwrap();
    a.signal(9);
    a.wait_exit(Duration::from_secs(10));
    let tls = croupier_sdk::TlsFiles::from_dir(&mesh.certs(), "client-c1");
    let via_b = croupier_sdk::Client::connect(&b_url, &tls).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = seen.last().unwrap().seq + 1;
    'follow: loop {
        assert!(
            Instant::now() < deadline,
            "job never finished via b: seen {}",
            seen.len()
        );
        let Ok(mut stream) = via_b.job_events(&job_id, next).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    next = e.seq + 1;
                    seen.push(e);
                }
                Ok(None) => break 'follow,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'follow;
                }
            }
        }
    }
    let seqs: Vec<i64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=122).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        seen.last().unwrap().r#type,
        croupier_proto::function::v1::EventType::Done as i32
    );
    let record = via_b.get_job(&job_id).await.unwrap();
    assert_eq!(record.status, "completed");
    let agents = via_b.agents("", "").await.unwrap();
    let a1 = agents.iter().find(|a| a.agent_id == "a1").unwrap();
    assert_eq!(a1.owner, "b", "the agent now belongs to b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_member_of_a_three_member_etcd_changes_nothing_for_callers() {
    use croupier_registry::store::conformance::EtcdCluster;
    let mut cluster = match EtcdCluster::start(3).await {
        Ok(c) => c,
        Err(e) if std::env::var("CROUPIER_REQUIRE_ETCD").as_deref() == Ok("1") => {
            panic!("etcd is required (CROUPIER_REQUIRE_ETCD=1): {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let endpoints = cluster.endpoints();
    let mesh = Mesh::start_with(
        &["a1"],
        Duration::from_secs(2),
        &[],
        &["--store", "etcd", "--etcd-endpoints", &endpoints],
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 40, "ms": 50}), &opts())
        .await
        .unwrap();

    cluster.members[0].kill();
    // Calls, new jobs and the running job carry on.
    for i in 0..5 {
        let r = client
            .invoke("agent.ping", json!({ "i": i }), &opts())
            .await
            .unwrap();
        assert!(r.success, "{r:?}");
    }
    let second = client
        .start_job("agent.countdown", json!({"steps": 2}), &opts())
        .await
        .unwrap();
    assert_eq!(second.wait().await.unwrap().status, "completed");
    let record = job.wait().await.unwrap();
    assert_eq!(record.status, "completed");
    assert_eq!(record.last_seq, 82);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_talks_to_etcd_over_tls_with_a_client_certificate() {
    use croupier_registry::store::conformance::EtcdProcess;
    // etcd uses the mesh's CA and server certificate; the server presents a client one.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    common::certs(&certs, &["a1"]);
    let etcd = match EtcdProcess::start_tls(&certs).await {
        Ok(e) => e,
        Err(e) if std::env::var("CROUPIER_REQUIRE_ETCD").as_deref() == Ok("1") => {
            panic!("etcd is required (CROUPIER_REQUIRE_ETCD=1): {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    assert!(etcd.endpoint.starts_with("https://"));
    let ca = certs.join("ca.pem");
    let cert = certs.join("client-c1.pem");
    let key = certs.join("client-c1.key");
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let mesh = Mesh::start_with(
        &["a1"],
        Duration::from_secs(2),
        &[],
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--etcd-ca",
            ca,
            "--etcd-cert",
            cert,
            "--etcd-key",
            key,
        ],
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 2}), &opts())
        .await
        .unwrap();
    assert_eq!(job.wait().await.unwrap().status, "completed");

    // Without a client certificate etcd refuses, and the server says so at startup.
    let out = std::process::Command::new(common::bin())
        .args(["server", "--listen", "127.0.0.1:0", "--store", "etcd"])
        .args(["--etcd-endpoints", &etcd.endpoint, "--etcd-ca", ca])
        .arg("--tls-dir")
        .arg(mesh.certs())
        .arg("--data-dir")
        .arg(dir.path().join("d2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd"), "{err}");
}
