//! Shared pieces of the distributed test bed (`tests/testbed_compose.rs`, `tests/netfaults.rs`):
//! the `CROUPIER_REQUIRE_TESTBED` switch, running commands, free ports, timing, and what the
//! fault scenarios check (pings counted by the agent, job event sequences).

use std::process::Command;
use std::time::{Duration, Instant};

use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_sdk::{CallOptions, Client, RetryPolicy};
use serde_json::json;

/// True when `CROUPIER_REQUIRE_TESTBED=1`: a missing tool (docker-compose, debootstrap,
/// `ip netns`, `tc`) fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("CROUPIER_REQUIRE_TESTBED").as_deref() == Ok("1")
}

/// Checks that `what` is usable (`ok`); when it is not, panics under
/// `CROUPIER_REQUIRE_TESTBED=1` and otherwise prints why and returns false (the test skips).
pub fn ready(what: &str, ok: Result<(), String>) -> bool {
    match ok {
        Ok(()) => true,
        Err(why) if required() => {
            panic!("{what}: required (CROUPIER_REQUIRE_TESTBED=1) but not usable: {why}")
        }
        Err(why) => {
            eprintln!(
                "skipping: {what} not usable ({why}); set CROUPIER_REQUIRE_TESTBED=1 to fail instead"
            );
            false
        }
    }
}

/// Runs `program args…`: (success, stdout, stderr).
pub fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    match Command::new(program).args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("cannot run {program}: {e}")),
    }
}

/// Runs `program args…`, which must succeed; returns its stdout.
pub fn must(program: &str, args: &[&str]) -> String {
    let (ok, out, err) = run(program, args);
    assert!(ok, "{program} {args:?} failed: {err}{out}");
    out
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it returns `Some`, at most `timeout`; returns the value and how
/// long it took, or None.
pub async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> Option<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints one timing line of the test bed's report (collected by scripts/testbed.sh).
pub fn report(scenario: &str, what: &str, took: Duration) {
    eprintln!(
        "TESTBED-TIMING {scenario}: {what} {:.2} s",
        took.as_secs_f64()
    );
}

/// Options targeting `agent` in game g, env e, with a 5 s deadline.
pub fn to(agent: &str) -> CallOptions {
    CallOptions::new()
        .game("g")
        .env("e")
        .target(agent)
        .timeout(Duration::from_secs(5))
}

/// `agent.ping` on `agent`: Ok(the agent's count of pings served) or the status.
pub async fn ping(client: &Client, agent: &str, opts: CallOptions) -> Result<i64, tonic::Status> {
    let r = client.invoke("agent.ping", json!({}), &opts).await?;
    assert!(r.success, "ping {agent}: {r:?}");
    let out = croupier_proto::json::opt_struct_to_json(r.result.as_ref());
    assert_eq!(out["agent_id"], agent, "{out}");
    Ok(out["calls"].as_i64().unwrap())
}

/// Agents listed online by `client`.
pub async fn online(client: &Client) -> Vec<String> {
    client
        .agents("g", "e")
        .await
        .map(|a| {
            a.into_iter()
                .filter(|a| a.online)
                .map(|a| a.agent_id)
                .collect()
        })
        .unwrap_or_default()
}

pub async fn wait_online(client: &Client, agents: &[&str], timeout: Duration) -> Duration {
    let found = poll(timeout, || async {
        let on = online(client).await;
        agents
            .iter()
            .all(|a| on.iter().any(|o| o == a))
            .then_some(())
    })
    .await;
    let Some(((), took)) = found else {
        panic!(
            "{agents:?} not online after {timeout:?}: {:?}",
            online(client).await
        );
    };
    took
}

/// Every event of a finished job, from the store.
pub async fn events(client: &Client, job: &str) -> Vec<JobEvent> {
    let mut stream = client.job_events(job, 0).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        out.push(e);
    }
    out
}

pub fn kind(e: &JobEvent) -> EventType {
    EventType::try_from(e.r#type).unwrap()
}

pub fn terminal(e: &JobEvent) -> bool {
    matches!(
        kind(e),
        EventType::Done | EventType::Error | EventType::Cancelled
    )
}

/// Starts `agent.countdown` on `agent` without the SDK's retries, expecting a refusal: how long
/// the server took to answer, and its status.
pub async fn job_refused(client: &Client, agent: &str) -> (Duration, tonic::Status) {
    // A deadline well past the store's slowest refusal (about 19 s), so the server's answer
    // arrives first.
    let once = client
        .clone()
        .with_retry_policy(RetryPolicy::none())
        .with_default_timeout(Duration::from_secs(60));
    let t = Instant::now();
    let r = once
        .start_job("agent.countdown", json!({"steps": 1}), &to(agent))
        .await;
    match r {
        Ok(job) => panic!("job {} started", job.id()),
        Err(e) => (t.elapsed(), e),
    }
}

/// Asserts seqs 1, 2, 3… each once, START first and exactly one terminal event, last.
pub fn assert_once_in_order(evs: &[JobEvent]) {
    let seqs: Vec<i64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=evs.len() as i64).collect::<Vec<_>>(), "seqs");
    assert_eq!(evs.first().map(kind), Some(EventType::Start));
    let ends: Vec<usize> = (0..evs.len()).filter(|&i| terminal(&evs[i])).collect();
    assert_eq!(
        ends,
        vec![evs.len() - 1],
        "one terminal event, last: {evs:?}"
    );
}
