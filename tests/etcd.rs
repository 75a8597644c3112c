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
        &["a1"],
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
    let record = client.get_job(job.id()).await.unwrap();
    assert_eq!(record.status, "completed");
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
