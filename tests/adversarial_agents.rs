//! Adversarial agents: an agent cannot touch what it does not own, nor exhaust what others
//! share (descriptors, schemas, job event memory, registration and status sizes, the logs).

mod common;

use std::time::Duration;

use common::raw_agent::{RawAgent, descriptor};
use common::{Mesh, opts};
use croupier_proto::common::v1::{AuthConfig, FunctionDescriptor};
use croupier_proto::control::v1::{Goodbye, HeartbeatRequest, agent_frame};
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_proto::json::{json_to_struct, struct_to_json};
use croupier_proto::registry::v1::GetRegistrationsRequest;
use serde_json::json;
use tonic::Code;

fn guarded(id: &str, roles: &[&str]) -> FunctionDescriptor {
    FunctionDescriptor {
        auth: Some(AuthConfig {
            allowed_roles: roles.iter().map(std::string::ToString::to_string).collect(),
            sensitive_fields: vec!["password".into()],
            ..Default::default()
        }),
        ..descriptor(id)
    }
}

async fn descriptor_of(mesh: &Mesh, id: &str) -> Option<FunctionDescriptor> {
    let c = mesh.client("client-c1").await;
    let regs = c.registrations("g", "e", id).await.unwrap();
    regs.registrations
        .into_iter()
        .find(|r| r.function_id == id)
        .and_then(|r| r.function_descriptor)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cannot_rewrite_a_descriptor_another_live_agent_declared() {
    let mesh = Mesh::start(&["a1", "a2"], Duration::from_millis(500));
    let a1 = RawAgent::connect(&mesh, "a1", vec![guarded("vault.get", &["admin"])]).await;

    // a2 declares the same function wide open: refused, naming the owner.
    let err = RawAgent::try_connect(&mesh, "a2", vec![guarded("vault.get", &[])])
        .await
        .err()
        .expect("the open re-declaration is refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("live agent a1"), "{}", err.message());
    // RegisterFunction from a2's certificate is refused too (a2 is not even registered).
    let a2c = mesh.client("agent-a2").await;
    let err = a2c
        .register_function("g", "e", guarded("vault.get", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The descriptor still guards the function.
    let d = descriptor_of(&mesh, "vault.get").await.unwrap();
    assert_eq!(d.auth.unwrap().allowed_roles, vec!["admin".to_string()]);
    let c1 = mesh.client("client-c1").await;
    let err = c1
        .invoke("vault.get", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // An admin's descriptor wins over what any agent declares, and an admin can delete it.
    let admin = mesh.client("admin-ops").await;
    admin
        .register_function("g", "e", guarded("vault.get", &["admin", "client"]))
        .await
        .unwrap();
    drop(a1);
    mesh.wait_gone("a1", Duration::from_secs(10)).await;
    let _a2 = RawAgent::connect(&mesh, "a2", vec![guarded("vault.get", &[])]).await;
    let d = descriptor_of(&mesh, "vault.get").await.unwrap();
    assert_eq!(
        d.auth.unwrap().allowed_roles,
        vec!["admin".to_string(), "client".to_string()],
        "an agent overwrote the admin's descriptor"
    );
    let err = c1.delete_function("g", "e", "vault.get").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(admin.delete_function("g", "e", "vault.get").await.unwrap());
    let (code, out, err) = mesh.cli(
        "admin-ops",
        &[
            "function",
            "delete",
            "vault.get",
            "--game-id",
            "g",
            "--env",
            "e",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("had no descriptor"), "{out}");
}

/// `d0 = allOf[$ref d1, $ref d1]`, … : a few hundred bytes that double with every link.
fn doubling_chain(links: usize) -> serde_json::Value {
    let mut defs = serde_json::Map::new();
    for i in 0..links {
        let next = format!("#/$defs/d{}", i + 1);
        defs.insert(
            format!("d{i}"),
            json!({"allOf": [{"$ref": next}, {"$ref": next, "type": "object"}]}),
        );
    }
    defs.insert(format!("d{links}"), json!({"type": "object"}));
    json!({"$defs": defs, "$ref": "#/$defs/d0"})
}

#[tokio::test(flavor = "multi_thread")]
async fn pathological_schemas_are_refused_when_registered() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    let bad = FunctionDescriptor {
        params_schema: Some(json_to_struct(&doubling_chain(30))),
        ..descriptor("slow.fn")
    };
    let err = RawAgent::try_connect(&mesh, "a1", vec![bad.clone()])
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("params_schema of slow.fn")
            && err.message().contains("subschema evaluations"),
        "{}",
        err.message()
    );
    let admin = mesh.client("admin-ops").await;
    let err = admin.register_function("g", "e", bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A backtracking pattern is checked in linear time: a 5000-character near miss answers fast.
    let redos = FunctionDescriptor {
        params_schema: Some(json_to_struct(&json!({
            "type": "object",
            "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}
        }))),
        ..descriptor("name.fn")
    };
    let _a1 = RawAgent::connect(&mesh, "a1", vec![redos]).await;
    let c1 = mesh.client("client-c1").await;
    let started = std::time::Instant::now();
    let err = c1
        .invoke(
            "name.fn",
            json!({"name": format!("{}b", "a".repeat(5000))}),
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validation_past_its_budget_fails_fast_and_other_functions_go_on() {
    let mesh = Mesh::start_with_env(
        &["a1", "a2"],
        Duration::from_secs(5),
        &[("CROUPIER_LIMITS__SCHEMA_BUDGET", "2ms")],
    );
    let schema = json!({
        "type": "object",
        "additionalProperties": {"type": "string", "pattern": "^[a-z]+[0-9]*$", "minLength": 1}
    });
    let d = FunctionDescriptor {
        params_schema: Some(json_to_struct(&schema)),
        ..descriptor("big.fn")
    };
    let _a1 = RawAgent::connect(&mesh, "a1", vec![d]).await;
    let _agent = mesh.agent("a2", &[]);
    let c1 = mesh.client("client-c1").await;
    let big: serde_json::Map<String, serde_json::Value> = (0..200_000)
        .map(|i| (format!("k{i}"), json!(format!("v{i}"))))
        .collect();
    let err = c1
        .invoke("big.fn", serde_json::Value::Object(big), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too costly"), "{}", err.message());
    // Now even a small payload is refused at once, until the descriptor changes.
    let err = c1
        .invoke("big.fn", json!({"k": "v"}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Other functions are not affected.
    let _ = mesh.wait_online(&["a2"]).await;
    let r = c1
        .invoke(
            "agent.ping",
            json!({}),
            &croupier_sdk::CallOptions {
                routing: "targeted".into(),
                target: "a2".into(),
                ..opts()
            },
        )
        .await
        .unwrap();
    assert!(r.success);
}

fn event(job_id: &str, seq: i64, kind: EventType, data: serde_json::Value) -> JobEvent {
    JobEvent {
        job_id: job_id.into(),
        r#type: kind as i32,
        message: format!("event {seq}"),
        seq,
        // The agent's clock says 1970: retention must not trust it.
        timestamp: 1,
        data: Some(json_to_struct(&data)),
        ..Default::default()
    }
}

/// Floods one job with 60 events of 8 MiB (each past the 1 MiB event limit), then 150 of
/// 900 KiB (under it, 130 MiB together: past the 16 MiB a job keeps), then ends it. Returns the
/// job and its last seq.
async fn flood(
    raw: &mut RawAgent,
    c1: &croupier_sdk::Client,
    function: &str,
) -> (croupier_sdk::JobHandle, i64) {
    let job = c1.start_job(function, json!({}), &opts()).await.unwrap();
    let inv = raw.next_invoke(Duration::from_secs(10)).await;
    assert_eq!(inv.job_id, job.id());
    let huge = "x".repeat(8 * 1024 * 1024);
    let large = "y".repeat(900 * 1024);
    let mut seq = 0;
    for i in 0..210 {
        seq += 1;
        let blob = if i < 60 { &huge } else { &large };
        raw.event(event(
            job.id(),
            seq,
            EventType::Log,
            json!({ "blob": blob }),
        ))
        .await;
    }
    seq += 1;
    raw.event(event(job.id(), seq, EventType::Done, json!({"ok": true})))
        .await;
    (job, seq)
}

/// The job event bytes the server says it keeps in memory, from its metrics port, once it has
/// stored everything it received (waits up to 10 s for that).
async fn event_bytes_retained(mesh: &Mesh) -> u64 {
    let port = mesh.metrics.as_deref().expect("the server's metrics port");
    let sample = |text: &str, state: &str| -> u64 {
        let series = format!("croupier_job_event_bytes{{state=\"{state}\"}}");
        common::sample(text, &series).unwrap_or_else(|| panic!("no {series} in {text}")) as u64
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::scrape(port);
        if sample(&text, "unstored") == 0 {
            return sample(&text, "retained");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events left unstored: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_event_flood_stays_within_the_byte_budgets() {
    let mesh = Mesh::start(&["raw"], Duration::from_secs(5));
    let mut raw = RawAgent::connect(
        &mesh,
        "raw",
        vec![descriptor("flood.job"), descriptor("flood2.job")],
    )
    .await;
    mesh.wait_online(&["raw"]).await;
    let c1 = mesh.client("client-c1").await;
    let before = mesh.server_rss_mib();
    // Two floods of 610 MiB each. The server's own count of the event bytes it holds stays
    // within the budgets (16 MiB per job; what is not stored yet is bounded by backpressure),
    // and its memory follows, loosely: the allocator's leftovers make RSS figures noisy.
    let (job, seq) = flood(&mut raw, &c1, "flood.job").await;
    let record = job.wait().await.unwrap();
    assert_eq!(record.status, "completed");
    let first = mesh.server_rss_mib();
    let held = event_bytes_retained(&mesh).await;
    let (job2, _) = flood(&mut raw, &c1, "flood2.job").await;
    assert_eq!(job2.wait().await.unwrap().status, "completed");
    let second = mesh.server_rss_mib();
    let held2 = event_bytes_retained(&mesh).await;
    eprintln!(
        "server RSS: {before} MiB before, {first} MiB after one flood, {second} after two; \
         event bytes retained: {held} after one, {held2} after two"
    );
    // Each job keeps at most 16 MiB (the first may linger in memory while the second runs).
    assert!(
        held <= 16 << 20,
        "{held} event bytes retained after one flood"
    );
    assert!(held2 <= 32 << 20, "{held2} event bytes retained after two");
    // Keeping what was sent would be past 750 MiB.
    assert!(second < 450, "server RSS grew to {second} MiB");

    // A late subscriber sees a gap for what was dropped, then the rest, in order.
    let mut stream = c1.job_events(job.id(), 1).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, EventType::Gap as i32, "{first:?}");
    let mut last = 0;
    while let Some(e) = stream.message().await.unwrap() {
        assert!(e.seq > last);
        assert!(e.received_at > 1_000_000_000_000, "{e:?}");
        last = e.seq;
    }
    assert_eq!(last, seq);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_age_by_the_servers_clock_and_a_huge_event_keeps_its_place() {
    let mesh = Mesh::start(&["raw"], Duration::from_secs(5));
    let mut raw = RawAgent::connect(&mesh, "raw", vec![descriptor("old.job")]).await;
    mesh.wait_online(&["raw"]).await;
    let c1 = mesh.client("client-c1").await;
    let job = c1.start_job("old.job", json!({}), &opts()).await.unwrap();
    raw.next_invoke(Duration::from_secs(10)).await;
    raw.event(event(job.id(), 1, EventType::Start, json!({})))
        .await;
    raw.event(event(
        job.id(),
        2,
        EventType::Log,
        json!({"blob": "z".repeat(2 << 20)}),
    ))
    .await;
    raw.event(event(job.id(), 3, EventType::Progress, json!({})))
        .await;
    // Past the sweeper's next pass (every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut stream = c1.job_events(job.id(), 1).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        got.push(e);
    }
    let seqs: Vec<i64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3],
        "events with an old agent timestamp were dropped"
    );
    assert_eq!(got[0].timestamp, 1, "the agent's time is kept as data");
    let data = struct_to_json(got[1].data.as_ref().unwrap());
    assert_eq!(data["code"], "EVENT_TOO_LARGE", "{data}");
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_and_status_sizes_are_bounded_and_lists_are_paged() {
    let mesh = Mesh::start_with_env(
        &["raw", "raw2"],
        Duration::from_secs(5),
        &[
            ("CROUPIER_LIMITS__MAX_FUNCTIONS_PER_SCOPE", "20"),
            ("CROUPIER_LIMITS__MAX_MESSAGE_BYTES", "32768"),
        ],
    );
    let many = |n: usize, prefix: &str| -> Vec<FunctionDescriptor> {
        (0..n)
            .map(|i| FunctionDescriptor {
                description: "d".repeat(1000),
                ..descriptor(&format!("{prefix}.f{i:03}"))
            })
            .collect()
    };
    let err = RawAgent::try_connect(&mesh, "raw", many(25, "too"))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_functions_per_scope"),
        "{}",
        err.message()
    );
    let mut raw = RawAgent::connect(&mesh, "raw", many(20, "ok")).await;

    // 20 registrations of ~1 KiB do not fit in one answer of a 32 KiB limit (16 KiB of it for
    // the page): they come in pages.
    let mut registry =
        croupier_proto::registry::v1::registry_service_client::RegistryServiceClient::new(
            croupier_sdk::tls::connect(
                &mesh.url,
                &croupier_sdk::TlsFiles::from_dir(&mesh.certs(), "client-c1")
                    .load()
                    .unwrap(),
            )
            .await
            .unwrap(),
        );
    let (mut token, mut pages, mut seen) = (String::new(), 0, 0);
    loop {
        let page = registry
            .get_registrations(GetRegistrationsRequest {
                game_id: "g".into(),
                env: "e".into(),
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen += page.registrations.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, 20);
    assert!(pages >= 2, "one page of {seen}");
    let c1 = mesh.client("client-c1").await;
    assert_eq!(c1.functions("g", "e").await.unwrap().len(), 20);
    let err = registry
        .get_registrations(GetRegistrationsRequest {
            page_token: "not-a-token!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A status map past its limit (16 KiB) is refused; the agent list stays readable.
    let status = [("blob".to_string(), "s".repeat(20_000))]
        .into_iter()
        .collect();
    let err = raw
        .control
        .heartbeat(HeartbeatRequest {
            agent_id: "raw".into(),
            session_id: raw.session_id.clone(),
            status,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_status_bytes"),
        "{}",
        err.message()
    );
    let agents = c1.agents("", "").await.unwrap();
    assert_eq!(agents.len(), 1);

    // The same heartbeat over the tunnel ends the tunnel with the same error.
    let status = [("blob".to_string(), "s".repeat(20_000))]
        .into_iter()
        .collect();
    raw.send(agent_frame::Frame::Heartbeat(HeartbeatRequest {
        agent_id: "raw".into(),
        status,
        ..Default::default()
    }))
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match raw.rx.message().await {
                Ok(Some(_)) => {}
                other => break other,
            }
        }
    })
    .await
    .expect("the tunnel did not end");
    let err = ended.expect_err("the tunnel ended without an error");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_status_bytes"),
        "{}",
        err.message()
    );
    // The server and the registration carry on.
    assert_eq!(c1.agents("", "").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_terminals_cannot_be_injected() {
    let mesh = Mesh::start(&["raw"], Duration::from_secs(5));
    let pem = croupier_sdk::TlsFiles::from_dir(&mesh.certs(), "agent-raw")
        .load()
        .unwrap();
    let mut control =
        croupier_proto::control::v1::control_service_client::ControlServiceClient::new(
            croupier_sdk::tls::connect(&mesh.url, &pem).await.unwrap(),
        );
    control
        .register_agent(croupier_proto::control::v1::RegisterAgentRequest {
            agent_id: "raw".into(),
            game_id: "g".into(),
            env: "e".into(),
            functions: vec!["x.y".into()],
            labels: [(
                "zone".to_string(),
                "\u{1b}[2J\u{1b}[31mred\nFAKE".to_string(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (code, out, err) = mesh.cli("client-c1", &["agents"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains('\u{1b}'),
        "raw escape sequence printed: {out:?}"
    );
    assert!(out.contains("\\u{1b}[2J"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("FAKE")), "{out}");

    // A node-state reason with a newline cannot forge a log line.
    let admin = mesh.client("admin-ops").await;
    admin
        .set_node_state(
            "raw",
            croupier_proto::common::v1::NodeState::Maintenance,
            "fix\nINFO forged line",
        )
        .await
        .unwrap();
    let long = "r".repeat(5000);
    let err = admin
        .set_node_state("raw", croupier_proto::common::v1::NodeState::Normal, &long)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nor can a goodbye.
    drop(control);
    let raw = RawAgent::connect(&mesh, "raw", vec![descriptor("x.y")]).await;
    raw.send(agent_frame::Frame::Goodbye(Goodbye {
        reason: "bye\nERROR forged by the agent".into(),
    }))
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !mesh.server_log().contains("agent said goodbye") {
        assert!(std::time::Instant::now() < deadline, "no goodbye logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = mesh.server_log();
    for forged in ["INFO forged line", "ERROR forged by the agent"] {
        assert!(
            !log.lines().any(|l| l.trim_start().starts_with(forged)),
            "a forged line reached the log:\n{log}"
        );
    }
    assert!(log.contains("bye\\nERROR forged"), "{log}");
    assert!(log.contains("fix\\nINFO forged"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_keeps_digests_and_short_excerpts() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    let c1 = mesh.client("client-c1").await;
    let big = json!({ "blob": "b".repeat(9_900_000), "password": "hunter2" });
    for _ in 0..20 {
        let err = c1
            .invoke("no.such.fn", big.clone(), &opts())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let path = mesh.dir.path().join("data/audit.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 20 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit records missing: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size < 200 * 1024,
        "20 calls grew the audit log to {size} bytes"
    );
    let rec: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let p = &rec["details"]["payload"];
    assert_eq!(p["sha256"].as_str().unwrap().len(), 64, "{rec}");
    assert_eq!(p["truncated"], true, "{rec}");
    assert!(p["bytes"].as_u64().unwrap() > 9_900_000);
}
