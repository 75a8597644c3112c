//! The job manager over the embedded store with a fake link and tokio's paused clock: ordered
//! replay, acknowledgements, retention gaps, cancel, lost agents, and recovery from the store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{bed, bed_on, client};
use croupier_control::JobSink;
use croupier_control::fake::Reply;
use croupier_function::jobs::{JobRecord, JobStatus};
use croupier_function::{InvokeConfig, JobConfig};
use croupier_proto::control::v1::{Invoke, server_frame};
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_registry::keys;
use croupier_registry::store::Store;
use croupier_registry::store::embedded::EmbeddedStore;
use prost::Message;
use tokio_stream::StreamExt;

fn record(job_id: &str, agent: &str) -> JobRecord {
    JobRecord {
        job_id: job_id.into(),
        function_id: "j".into(),
        game_id: "g".into(),
        env: "e".into(),
        agent_id: agent.into(),
        caller: client().uri(),
        status: JobStatus::Pending,
        timeout_ms: 60_000,
        ..Default::default()
    }
}

fn invoke(job_id: &str) -> Invoke {
    Invoke {
        request_id: job_id.into(),
        function_id: "j".into(),
        job_id: job_id.into(),
        timeout_ms: 60_000,
        ..Default::default()
    }
}

fn ev(job_id: &str, seq: i64, kind: EventType) -> JobEvent {
    JobEvent {
        job_id: job_id.into(),
        r#type: kind as i32,
        message: format!("e{seq}"),
        seq,
        timestamp: 1,
        ..Default::default()
    }
}

async fn all_events(b: &common::Bed, job_id: &str, from: i64) -> Vec<(i64, EventType)> {
    let mut stream = b.jobs.subscribe(&client(), job_id, from).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        let e = e.unwrap();
        out.push((e.seq, EventType::try_from(e.r#type).unwrap()));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn events_are_replayed_in_order_and_acknowledged_once_stored() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    b.agent("a1", &["j"], |_| Reply::Never).await;
    b.jobs
        .create(record("job-1", "a1"), invoke("job-1"))
        .await
        .unwrap();
    assert_eq!(b.link.jobs().len(), 1, "the Invoke went down to a1");
    for (seq, kind) in [
        (1, EventType::Start),
        (2, EventType::Log),
        (3, EventType::Done),
    ] {
        b.jobs.event("a1", 1, ev("job-1", seq, kind)).await;
    }
    // A repeat after a reconnect is not a new event.
    b.jobs.event("a1", 2, ev("job-1", 2, EventType::Log)).await;
    assert_eq!(
        all_events(&b, "job-1", 1).await,
        [
            (1, EventType::Start),
            (2, EventType::Log),
            (3, EventType::Done)
        ]
    );
    b.link
        .wait_frames(|frames| {
            frames.iter().any(|(a, f)| {
                a == "a1" && matches!(&f.frame, Some(server_frame::Frame::Ack(ack)) if ack.seq == 3)
            })
        })
        .await;
    let r = b.jobs.get_job(&client(), "job-1").await.unwrap();
    assert_eq!(r.status, "completed");
}

#[tokio::test(start_paused = true)]
async fn events_past_the_count_retention_are_announced_with_a_gap() {
    let cfg = JobConfig {
        max_events: 3,
        ..JobConfig::default()
    };
    let b = bed(InvokeConfig::default(), cfg).await;
    b.agent("a1", &["j"], |_| Reply::Never).await;
    b.jobs
        .create(record("job-2", "a1"), invoke("job-2"))
        .await
        .unwrap();
    b.jobs
        .event("a1", 1, ev("job-2", 1, EventType::Start))
        .await;
    for seq in 2..10 {
        b.jobs
            .event("a1", 1, ev("job-2", seq, EventType::Log))
            .await;
        // Let the writer store them: only stored events may be dropped.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.jobs
        .event("a1", 1, ev("job-2", 10, EventType::Done))
        .await;
    let got = all_events(&b, "job-2", 1).await;
    assert_eq!(got[0], (0, EventType::Gap), "{got:?}");
    let seqs: Vec<i64> = got[1..].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [8, 9, 10]);
}

#[tokio::test(start_paused = true)]
async fn cancel_reaches_the_agent_and_a_lost_agent_ends_its_jobs() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    b.agent("a1", &["j"], |_| Reply::Never).await;
    b.jobs
        .create(record("job-3", "a1"), invoke("job-3"))
        .await
        .unwrap();
    b.jobs
        .event("a1", 1, ev("job-3", 1, EventType::Start))
        .await;
    let resp = b
        .jobs
        .cancel(&client(), "job-3", "no longer needed")
        .await
        .unwrap();
    assert!(resp.success);
    b.link
        .wait_frames(|frames| {
            frames.iter().any(|(_, f)| {
                matches!(&f.frame, Some(server_frame::Frame::Cancel(c)) if c.request_id == "job-3" && c.reason == "no longer needed")
            })
        })
        .await;
    // Someone else's cancel is refused.
    let other =
        croupier_registry::identity::Identity::new(croupier_registry::identity::Role::Client, "c2")
            .unwrap();
    assert!(b.jobs.cancel(&other, "job-3", "mine now").await.is_err());
    // The agent never answers the cancel and goes away.
    b.jobs.agent_gone("a1", "heartbeats missed");
    let got = all_events(&b, "job-3", 1).await;
    assert_eq!(got.last().unwrap().1, EventType::Error);
    let r = b.jobs.get_job(&client(), "job-3").await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.error_code.as_str()),
        ("failed", "AGENT_LOST")
    );
}

#[tokio::test(start_paused = true)]
async fn events_from_an_agent_that_does_not_run_the_job_are_ignored() {
    let b = bed(InvokeConfig::default(), JobConfig::default()).await;
    b.agent("a1", &["j"], |_| Reply::Never).await;
    b.agent("a2", &["j"], |_| Reply::Never).await;
    b.jobs
        .create(record("job-4", "a1"), invoke("job-4"))
        .await
        .unwrap();
    b.jobs.event("a2", 1, ev("job-4", 1, EventType::Done)).await;
    let r = b.jobs.get_job(&client(), "job-4").await.unwrap();
    assert_eq!(r.status, "pending");
}

#[tokio::test(start_paused = true)]
async fn a_stored_terminal_event_ends_the_job_after_a_restart_and_no_second_one_follows() {
    // What a crash between the two writes of an older version could leave: the record says
    // running, the stored events end with DONE.
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let mut rec = record("job-5", "a1");
    rec.status = JobStatus::Running;
    rec.last_seq = 1;
    store
        .put(&keys::job("job-5"), serde_json::to_vec(&rec).unwrap(), None)
        .await
        .unwrap();
    let mut chunk = Vec::new();
    for e in [
        ev("job-5", 1, EventType::Start),
        ev("job-5", 2, EventType::Done),
    ] {
        chunk.extend(e.encode_length_delimited_to_vec());
    }
    store
        .put(&keys::job_event_chunk("job-5", 1), chunk, None)
        .await
        .unwrap();
    let b = bed_on(store.clone(), InvokeConfig::default(), JobConfig::default()).await;
    // Long past the time a job waits for its agent.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let r = b.jobs.get_job(&client(), "job-5").await.unwrap();
    assert_eq!(r.status, "completed");
    assert_eq!(r.last_seq, 2);
    assert_eq!(
        all_events(&b, "job-5", 1).await,
        [(1, EventType::Start), (2, EventType::Done)]
    );
    // And the record in the store caught up.
    let stored: JobRecord =
        serde_json::from_slice(&store.get(&keys::job("job-5")).await.unwrap().unwrap().value)
            .unwrap();
    assert_eq!(stored.status, JobStatus::Completed);
}
