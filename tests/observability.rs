//! The server's HTTP port for machines, checked against the real thing: Debian's Prometheus
//! scrapes a running server (and its agent's effects), and the counts it stores are the calls
//! made; `promtool check metrics` accepts the exposition; health and readiness answer without a
//! client certificate.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::http;
use common::{Mesh, opts};
use serde_json::{Value, json};

/// Whether `prometheus` and `promtool` are here: required with `CROUPIER_REQUIRE_PROMETHEUS=1`
/// (scripts/test.sh sets it), else a missing one skips the test with a message.
fn prometheus_present() -> bool {
    let ok = ["prometheus", "promtool"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        assert!(
            std::env::var("CROUPIER_REQUIRE_PROMETHEUS").as_deref() != Ok("1"),
            "prometheus and promtool are required (CROUPIER_REQUIRE_PROMETHEUS=1); install \
             Debian's prometheus package"
        );
        eprintln!(
            "skipped: prometheus/promtool not installed (set CROUPIER_REQUIRE_PROMETHEUS=1 to fail)"
        );
    }
    ok
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prometheus scraping `targets` every second; returns it and its address.
fn start_prometheus(dir: &Path, targets: &[&str]) -> (common::Proc, String) {
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: croupier\n    static_configs:\n      - targets: [{targets}]\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus");
    (
        common::Proc {
            child,
            name: "prometheus".into(),
        },
        addr,
    )
}

/// The value of an instant query's single series (None while it has none).
fn query(prom: &str, q: &str) -> Option<f64> {
    // Prometheus may not listen yet.
    std::net::TcpStream::connect(prom).ok()?;
    let path = format!("/api/v1/query?query={}", urlencode(q));
    let (status, body) = http(prom, "GET", &path, None, "");
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    result.first()?["value"][1].as_str()?.parse().ok()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until `q` has the value `want` in Prometheus.
async fn until_value(prom: &str, q: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = query(prom, q);
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{q}: {got:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_what_the_server_did() {
    if !prometheus_present() {
        return;
    }
    let mesh = Mesh::start(&["a1"], Duration::from_secs(1));
    let metrics = mesh
        .metrics
        .clone()
        .expect("the server announces its metrics port");
    let agent_port = format!("127.0.0.1:{}", free_port());
    let _a1 = mesh.agent_with(
        "a1",
        &[],
        &["--packs", "none", "--http-listen", &agent_port],
    );
    mesh.wait_online(&["a1"]).await;
    // The agent's port: ready while its tunnel is open.
    assert_eq!(http(&agent_port, "GET", "/readyz", None, "").0, 200);

    // Health and readiness need no client certificate; nothing else is served.
    assert_eq!(
        http(&metrics, "GET", "/healthz", None, ""),
        (200, "ok\n".into())
    );
    assert_eq!(http(&metrics, "GET", "/readyz", None, "").0, 200);
    assert_eq!(http(&metrics, "POST", "/metrics", None, "").0, 405);
    assert_eq!(http(&metrics, "GET", "/admin", None, "").0, 404);

    let (_prom, prom) = start_prometheus(mesh.dir.path(), &[&metrics, &agent_port]);
    until_value(
        &prom,
        "croupier_agents_online{game=\"g\",env=\"e\",state=\"normal\"}",
        1.0,
    )
    .await;

    // Five calls that work and one that fails on its payload.
    let client = mesh.client("client-c1").await;
    for i in 0..5 {
        client
            .invoke("agent.ping", json!({"i": i}), &opts())
            .await
            .unwrap();
    }
    let err = client
        .invoke("agent.sleep", json!({"ms": "soon"}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    until_value(
        &prom,
        "croupier_invocations_total{game=\"g\",env=\"e\",function=\"agent.ping\",outcome=\"ok\"}",
        5.0,
    )
    .await;
    until_value(
        &prom,
        "croupier_invocations_total{function=\"agent.sleep\",outcome=\"INVALID_ARGUMENT\"}",
        1.0,
    )
    .await;
    until_value(
        &prom,
        "croupier_rpc_total{rpc=\"FunctionService/InvokeFunction\",code=\"INVALID_ARGUMENT\"}",
        1.0,
    )
    .await;
    // A repeated idempotent call is a replay.
    let mut keyed = opts();
    keyed.idempotency_key = "k1".into();
    for _ in 0..2 {
        client
            .invoke("agent.sleep", json!({"ms": 1}), &keyed)
            .await
            .unwrap();
    }
    until_value(&prom, "croupier_idempotency_total{result=\"replay\"}", 1.0).await;
    let job = client
        .start_job("agent.countdown", json!({"steps": 1, "ms": 10}), &opts())
        .await
        .unwrap();
    job.wait().await.unwrap();
    until_value(
        &prom,
        "croupier_jobs_ended_total{outcome=\"completed\"}",
        1.0,
    )
    .await;
    // Waiting for the job followed its events live: their delivery was timed; the follower
    // is gone now.
    assert!(
        query(&prom, "croupier_job_event_delivery_seconds_count").is_some_and(|n| n >= 1.0),
        "no job event delivery timed"
    );
    until_value(&prom, "croupier_job_subscribers", 0.0).await;
    // A running job is counted while it runs.
    let long = client
        .start_job("agent.countdown", json!({"steps": 1000, "ms": 50}), &opts())
        .await
        .unwrap();
    until_value(&prom, "croupier_jobs_running", 1.0).await;
    long.cancel("counted").await.unwrap();
    long.wait().await.unwrap();
    until_value(&prom, "croupier_jobs_running", 0.0).await;
    // An open registry watch is counted, with what it was sent (one ADDED per function, SYNCED).
    let mut watch = client
        .watch_registrations(Default::default())
        .await
        .unwrap();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        first.r#type,
        croupier_proto::registry::v1::EventType::Added as i32
    );
    until_value(&prom, "croupier_registry_watches_open", 1.0).await;
    assert!(
        query(&prom, "croupier_registry_watch_events_total").is_some_and(|n| n >= 2.0),
        "watch events not counted"
    );
    drop(watch);
    until_value(&prom, "croupier_registry_watches_open", 0.0).await;
    assert!(
        query(
            &prom,
            "croupier_store_operation_duration_seconds_count{backend=\"embedded\",op=\"put\"}"
        )
        .is_some_and(|n| n > 0.0)
    );
    until_value(&prom, "croupier_tunnels_open", 1.0).await;
    // The agent counts what it ran.
    until_value(
        &prom,
        "croupier_agent_calls_total{function=\"agent.ping\",outcome=\"ok\"}",
        5.0,
    )
    .await;
    until_value(&prom, "croupier_agent_tunnel_up", 1.0).await;
    until_value(&prom, "croupier_ready", 1.0).await;
    assert!(query(&prom, "process_resident_memory_bytes").is_some_and(|b| b > 1e6));

    // The exposition is valid for promtool (it reads it on stdin).
    let (status, text) = http(&metrics, "GET", "/metrics", None, "");
    assert_eq!(status, 200);
    let (_, agent_text) = http(&agent_port, "GET", "/metrics", None, "");
    assert!(agent_text.contains("croupier_agent_calls_total"));
    check_dashboard(&prom);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let mesh = Mesh::start_with_env(
        &["a1"],
        Duration::from_secs(1),
        &[("CROUPIER_LOG_FORMAT", "json")],
    );
    let _a1 = mesh.agent_env("a1", &[("CROUPIER_LOG_FORMAT", "json")]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    client
        .invoke("agent.ping", json!({"secret": "hunter2"}), &opts())
        .await
        .unwrap();
    for (who, log) in [
        ("server", mesh.server_log()),
        ("agent", mesh.agent_log("a1")),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{who}: {log}");
        for line in &lines {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {line}"));
            for key in ["timestamp", "level", "target", "message"] {
                assert!(v.get(key).is_some(), "{who}: no {key} in {line}");
            }
        }
        // No payloads in logs.
        assert!(!log.contains("hunter2"), "{who}: {log}");
    }
    let registered = mesh
        .agent_log("a1")
        .lines()
        .chain(mesh.server_log().lines())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|v| v["message"] == "agent registered" && v["agent_id"] == "a1");
    assert!(
        registered,
        "the registration is logged with agent_id as a field"
    );
}

/// The names of every metric the server defines (a counter that never moved is not exported
/// yet, so the exposition alone does not list them all).
fn defined_metrics() -> Vec<&'static str> {
    use croupier_control::metrics as c;
    use croupier_function::metrics as f;
    vec![
        croupier::metrics::RPC_SECONDS,
        croupier::metrics::RPC_TOTAL,
        croupier::metrics::AGENTS_ONLINE,
        croupier::metrics::READY,
        c::LIMITS_HIT,
        c::AUDIT_RECORDS,
        c::AUDIT_LOST,
        c::AUDIT_WRITE_FAILURES,
        c::AGENT_REGISTRATIONS,
        c::AGENT_EXPIRATIONS,
        c::HEARTBEAT_DELAY,
        c::TUNNEL_EVENTS,
        c::TUNNELS_OPEN,
        c::CALLS_IN_FLIGHT,
        f::INVOCATIONS,
        f::INVOCATION_SECONDS,
        f::JOBS_STARTED,
        f::JOBS_ENDED,
        f::JOB_SECONDS,
        f::JOB_EVENTS,
        f::IDEMPOTENCY,
        f::FORWARDED,
        f::FORWARD_SECONDS,
        f::JOB_EVENT_BYTES,
        f::JOBS_RUNNING,
        f::JOB_SUBSCRIBERS,
        f::JOB_DELIVERY_SECONDS,
        f::JOB_GAPS,
        f::PIPELINES,
        f::PIPELINE_RUNS,
        croupier_registry::metrics::WATCHES_OPEN,
        croupier_registry::metrics::WATCH_EVENTS,
        croupier_registry::store::metered::STORE_SECONDS,
        croupier_registry::store::metered::STORE_ERRORS,
    ]
}

/// Every query of the shipped Grafana dashboard is valid PromQL for this Prometheus, and every
/// `croupier_*` metric it reads is one the server defines.
fn check_dashboard(prom: &str) {
    let defined = defined_metrics();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/croupier.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$game", ".*")
                .replace("$env", ".*")
        })
        .collect();
    assert!(exprs.len() > 10);
    for expr in &exprs {
        let (status, body) = http(
            prom,
            "GET",
            &format!("/api/v1/query?query={}", urlencode(expr)),
            None,
            "",
        );
        assert_eq!(status, 200, "{expr}: {body}");
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("croupier_"));
        for name in names {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                defined.contains(&base),
                "the dashboard reads {name}, which is not a metric of the server"
            );
        }
    }
}

#[test]
fn the_shipped_prometheus_config_and_alert_rules_are_valid() {
    if !prometheus_present() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every metric the rules use is one the server exports.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for name in [
        "croupier_ready",
        "croupier_agents_online",
        "croupier_invocations_total",
        "croupier_jobs_ended_total",
        "croupier_store_errors_total",
        "croupier_audit_write_failures_total",
        "croupier_audit_records_lost_total",
    ] {
        assert!(rules.contains(name), "{name}");
        let defined = [
            croupier::metrics::READY,
            croupier::metrics::AGENTS_ONLINE,
            croupier_function::metrics::INVOCATIONS,
            croupier_function::metrics::JOBS_ENDED,
            croupier_registry::store::metered::STORE_ERRORS,
            croupier_control::metrics::AUDIT_WRITE_FAILURES,
            croupier_control::metrics::AUDIT_LOST,
        ];
        assert!(
            defined.contains(&name),
            "{name} is not a metric of the server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_calls_errors_latency_and_agents() {
    let mesh = Mesh::start(&["a1", "a2"], Duration::from_secs(1));
    common::certs_cmd(
        &mesh.certs(),
        "init",
        &["--client", "other", "--scope", "h/*"],
    );
    let _a1 = mesh.agent_with("a1", &[], &["--packs", "none"]);
    let _a2 = mesh.agent_with("a2", &[], &["--packs", "none"]);
    mesh.wait_online(&["a1", "a2"]).await;
    let client = mesh.client("client-c1").await;
    for i in 0..10 {
        client
            .invoke("agent.ping", json!({"i": i}), &opts())
            .await
            .unwrap();
    }
    let mut slow = opts();
    slow.timeout = Some(Duration::from_millis(200));
    let err = client
        .invoke("agent.sleep", json!({"ms": 5000}), &slow)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");

    let stats = |identity: &str, function: &str| -> Value {
        let (code, out, err) = mesh.cli(identity, &["stats", function, "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let ping = stats("client-c1", "agent.ping");
    assert_eq!(ping["server_id"], "server");
    let s = &ping["stats"][0];
    assert_eq!(s["function_id"], "agent.ping");
    assert_eq!(s["total"]["calls"], 10);
    assert_eq!(s["total"]["errors"], 0);
    assert_eq!(s["total"]["success_rate"], 1.0);
    assert_eq!(s["last_minute"]["calls"], 10);
    assert!(s["total"]["p99_ms"].as_f64().unwrap() > 0.0, "{s}");
    let per_agent: u64 = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(per_agent, 10, "{s}");
    assert_eq!(s["agents"].as_array().unwrap().len(), 2, "lb spreads: {s}");

    let sleep = stats("client-c1", "agent.sleep");
    let s = &sleep["stats"][0];
    assert_eq!(
        (s["total"]["calls"].as_u64(), s["total"]["errors"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .starts_with("DEADLINE_EXCEEDED"),
        "{s}"
    );
    // A client scoped to another game sees none of it; the table form names the server.
    assert_eq!(stats("client-other", "agent.ping")["stats"], json!([]));
    let (code, out, err) = mesh.cli("client-c1", &["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("agent.ping") && out.contains("agent.sleep"),
        "{out}"
    );
    assert!(err.contains("server server's view"), "{err}");

    // `functions --stats` puts the same counts next to each function.
    let (code, out, err) = mesh.cli("client-c1", &["functions", "--stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stats_server_id"], "server");
    let of = |f: &str| -> Value {
        v["registrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["function_id"] == f)
            .unwrap_or_else(|| panic!("{f} not in {v}"))["stats"]
            .clone()
    };
    assert_eq!(of("agent.ping")["total"]["calls"], 10, "{v}");
    assert_eq!(of("agent.sleep")["total"]["errors"], 1, "{v}");
    assert_eq!(of("agent.countdown")["total"]["calls"], 0, "{v}");
    let (code, out, err) = mesh.cli("client-c1", &["functions", "--stats"]);
    assert_eq!(code, 0, "{err}");
    let ping = out.lines().find(|l| l.starts_with("agent.ping")).unwrap();
    assert!(ping.split_whitespace().any(|c| c == "10"), "{out}");
    assert!(out.lines().next().unwrap().contains("P50/P99 MS"), "{out}");
}

/// Invokes `t.echo` through the raw function service with `traceparent` (or none); the raw agent
/// answers. Returns the traceparent the agent got and the one the response carried.
async fn traced_call(
    mesh: &Mesh,
    agent: &mut common::raw_agent::RawAgent,
    traceparent: Option<&str>,
) -> (String, String) {
    let client = mesh.client("client-c1").await;
    let mut req = tonic::Request::new(croupier_proto::function::v1::InvokeFunctionRequest {
        game_id: "g".into(),
        env: "e".into(),
        function_id: "t.echo".into(),
        payload: Some(croupier_proto::json::json_to_struct(&json!({}))),
        options: None,
    });
    if let Some(tp) = traceparent {
        req.metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    let mut svc = client.function_service();
    let call = croupier_proto::task::spawn("call", async move { svc.invoke_function(req).await });
    let inv = agent.next_invoke(Duration::from_secs(10)).await;
    agent.answer(&inv.request_id, json!({"ok": true})).await;
    let resp = call.await.unwrap().unwrap();
    let returned = resp
        .metadata()
        .get("traceparent")
        .expect("the response carries the trace context")
        .to_str()
        .unwrap()
        .to_string();
    (inv.traceparent, returned)
}

fn trace_of(tp: &str) -> &str {
    croupier_proto::trace::trace_id(tp).unwrap_or_else(|| panic!("not a traceparent: {tp:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_goes_from_caller_to_handler_and_into_the_audit_log() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    let mut agent = common::raw_agent::RawAgent::connect(
        &mesh,
        "a1",
        vec![common::raw_agent::descriptor("t.echo")],
    )
    .await;

    // A caller's trace goes on to the agent and comes back: the same trace, with the server's
    // span in the answer and the route span's given to the agent, each a span of its own.
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (at_agent, returned) = traced_call(&mesh, &mut agent, Some(sent)).await;
    assert_eq!(trace_of(&returned), trace_of(sent));
    assert_eq!(trace_of(&at_agent), trace_of(sent));
    let spans = [&sent[36..52], &returned[36..52], &at_agent[36..52]];
    assert!(
        spans[0] != spans[1] && spans[1] != spans[2] && spans[0] != spans[2],
        "{spans:?}"
    );

    // A caller without one gets a new trace, returned to it and given to the agent.
    let (at_agent, returned) = traced_call(&mesh, &mut agent, None).await;
    assert_eq!(trace_of(&at_agent), trace_of(&returned));
    assert_ne!(trace_of(&returned), trace_of(sent));

    // Both calls are found in the audit log by their trace ids.
    let (code, out, err) = mesh.cli(
        "admin-ops",
        &["audit", "list", "--action", "invoke", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let traces: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["trace_id"].as_str())
        .collect();
    assert_eq!(traces, [trace_of(&returned), trace_of(sent)], "{out}");
}
