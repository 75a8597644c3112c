//! End-to-end: agents coming and going — a killed agent disappears and watchers see REMOVED, a
//! restarted agent registers again, goodbye removes at once, watches resume from a revision,
//! and the server drains in-flight calls on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, opts};
use croupier_proto::registry::v1::{EventType, RegistrationEvent, WatchRegistrationsRequest};
use serde_json::json;
use tonic::{Code, Streaming};

async fn next_event(s: &mut Streaming<RegistrationEvent>, timeout: Duration) -> RegistrationEvent {
    tokio::time::timeout(timeout, s.message())
        .await
        .expect("no watch event in time")
        .expect("watch failed")
        .expect("watch ended")
}

/// Reads events until one matches; returns it.
async fn until(
    s: &mut Streaming<RegistrationEvent>,
    timeout: Duration,
    want: impl Fn(&RegistrationEvent) -> bool,
) -> RegistrationEvent {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next_event(s, left).await;
        if want(&ev) {
            return ev;
        }
    }
}

/// Agent ids of the registration an event carries.
fn agent_ids(ev: RegistrationEvent) -> Vec<String> {
    ev.registration
        .map(|r| r.agents.into_iter().map(|a| a.agent_id).collect())
        .unwrap_or_default()
}

fn is(ev: &RegistrationEvent, t: EventType, agent: &str, function: &str) -> bool {
    ev.r#type == t as i32
        && ev.agent_id == agent
        && ev
            .registration
            .as_ref()
            .is_some_and(|r| r.function_id == function)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_disappears_and_restarted_agent_registers_again() {
    let hb = Duration::from_millis(500);
    let mesh = Mesh::start(&["a1", "a2"], hb);
    let a1 = mesh.agent("a1", &[]);
    let _a2 = mesh.agent("a2", &[]);
    mesh.wait_online(&["a1", "a2"]).await;
    let c = mesh.client("client-c1").await;

    let mut watch = c
        .watch(WatchRegistrationsRequest {
            function_id: "agent.ping".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let initial = until(&mut watch, Duration::from_secs(5), |e| {
        e.r#type == EventType::Added as i32
    })
    .await;
    assert_eq!(agent_ids(initial), vec!["a1", "a2"]);
    let synced = until(&mut watch, Duration::from_secs(5), |e| {
        e.r#type == EventType::Synced as i32
    })
    .await;

    // SIGKILL: no goodbye; the server notices the missed heartbeats (3 × 500 ms).
    a1.signal(9);
    let t = Instant::now();
    let removed = until(&mut watch, Duration::from_secs(10), |e| {
        is(e, EventType::Removed, "a1", "agent.ping")
    })
    .await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "removed after {took:?}, before the offline timeout"
    );
    assert!(removed.revision > synced.revision);
    assert!(
        agent_ids(removed).is_empty(),
        "a change carries only the agent concerned (none for a removal)"
    );
    let regs = c.registrations("g", "e", "agent.ping").await.unwrap();
    let ids: Vec<_> = regs.registrations[0]
        .agents
        .iter()
        .map(|a| a.agent_id.clone())
        .collect();
    assert_eq!(ids, vec!["a2"]);
    // Calls carry on, on the remaining agent; targeting the dead one says it is gone.
    let r = c.invoke("agent.ping", json!({}), &opts()).await.unwrap();
    assert_eq!(r.agent_id, "a2");
    let mut o = opts();
    o.target = "a1".into();
    o.routing = "targeted".into();
    assert_eq!(
        c.invoke("agent.ping", json!({}), &o)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Restart: it registers again and the watch sees it ADDED.
    let _a1 = mesh.agent("a1", &[]);
    until(&mut watch, Duration::from_secs(15), |e| {
        is(e, EventType::Added, "a1", "agent.ping")
    })
    .await;
    mesh.wait_online(&["a1"]).await;
    let r = c.invoke("agent.ping", json!({}), &o).await.unwrap();
    assert_eq!(r.agent_id, "a1");

    // Resume from a revision: the REMOVED and ADDED of a1 are replayed.
    let mut resumed = c
        .watch(WatchRegistrationsRequest {
            function_id: "agent.ping".into(),
            start_revision: synced.revision + 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let ev = until(&mut resumed, Duration::from_secs(5), |e| e.agent_id == "a1").await;
    assert_eq!(ev.r#type, EventType::Removed as i32);
    until(&mut resumed, Duration::from_secs(5), |e| {
        is(e, EventType::Added, "a1", "agent.ping")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_agent_gone_makes_calls_unavailable_and_goodbye_is_immediate() {
    // A long heartbeat: removal within seconds can only come from the goodbye.
    let mesh = Mesh::start(&["a1"], Duration::from_secs(20));
    let mut a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let c = mesh.client("client-c1").await;
    a1.signal(15);
    assert_eq!(
        a1.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        mesh.agent_log("a1")
    );
    mesh.wait_gone("a1", Duration::from_secs(3)).await;
    let e = c
        .invoke("agent.ping", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The function stays known, so this is not NOT_FOUND.
    let regs = c.registrations("g", "e", "agent.ping").await.unwrap();
    assert_eq!(regs.registrations.len(), 1);
    assert!(regs.registrations[0].agents.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls() {
    let mut mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let c = mesh.client("client-c1").await;
    let call = croupier_proto::task::spawn("sigterm_drains_in_flight_calls", {
        let c = c.clone();
        async move { c.invoke("agent.sleep", json!({"ms": 1500}), &opts()).await }
    });
    mesh.wait_in_flight("a1", 1).await;
    let server = mesh.server.as_mut().unwrap();
    server.signal(15);
    let r = call
        .await
        .unwrap()
        .expect("in-flight call completes during the drain");
    assert!(r.success, "{r:?}");
    let code = mesh
        .server
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", mesh.server_log());
    assert!(mesh.server_log().contains("draining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_descriptors_and_agents_come_back() {
    let mut mesh = Mesh::start(&["a1"], Duration::from_millis(500));
    let a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    // Stop the agent first, so only the store can bring the descriptor back.
    drop(a1);
    let addr = mesh.url.trim_start_matches("https://").to_string();
    mesh.server.as_mut().unwrap().signal(15);
    assert_eq!(
        mesh.server
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(10)),
        Some(0)
    );
    mesh.start_server(&addr);
    let c = mesh.client("client-c1").await;
    let regs = c.registrations("g", "e", "agent.sleep").await.unwrap();
    assert_eq!(
        regs.registrations.len(),
        1,
        "descriptor lost across restart"
    );
    let reg = &regs.registrations[0];
    assert!(
        reg.agents.is_empty(),
        "lease-attached agent record must not persist"
    );
    let schema = reg
        .function_descriptor
        .as_ref()
        .unwrap()
        .params_schema
        .as_ref()
        .unwrap();
    assert!(schema.fields.contains_key("required"));
    // A new agent process registers again and serves.
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let r = c.invoke("agent.ping", json!({}), &opts()).await.unwrap();
    assert!(r.success);
}
