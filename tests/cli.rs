//! End-to-end: `croupier dev` and the CLI as a user runs them.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Proc, bin};

fn croupier(args: &[&str], tls_dir: &std::path::Path, url: &str) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .args(["--server", url, "--tls-dir"])
        .arg(tls_dir)
        .output()
        .expect("running croupier");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dev_mode_serves_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["dev", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stderr(Stdio::null());
    let (dev, url, banner) = common::start_dev(cmd, Duration::from_secs(30));
    assert!(
        !url.is_empty() && banner.contains("croupier invoke agent.ping"),
        "{banner}"
    );
    let certs = dir.path().join("certs");
    // The banner says where the metrics are, and they are there.
    let metrics = banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("metrics:      http://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics line: {banner}"));
    let (status, text) = common::gateway::http(metrics, "GET", "/metrics", None, "");
    assert_eq!(status, 200);
    assert!(
        text.contains("croupier_agents_online{game=\"default\",env=\"dev\",state=\"normal\"} 1"),
        "{text}"
    );
    // The banner comes once the agent is online and lists every function it serves.
    let (code, out, _) = croupier(&["functions", "--json"], &certs, &url);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let count = listed["registrations"].as_array().map_or(0, Vec::len);
    assert!(count > 5, "{listed}");
    assert!(
        banner.contains(&format!("serving {count} functions")) && banner.contains("container.run"),
        "{banner}"
    );
    // A second dev on the same home fails at once and says who holds it.
    let mut second = Command::new(bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "a second dev on one home hangs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("another croupier dev")
            && err.contains(&format!("by process {}", dev.child.id()))
            && err.contains("CROUPIER_HOME"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("mesh is up"),
        "the second dev printed the banner"
    );

    // The agent connects on its own; poll until ping works.
    let mut last = (0, String::new(), String::new());
    for _ in 0..200 {
        last = croupier(
            &[
                "invoke",
                "agent.ping",
                "--payload",
                r#"{"hello":"world"}"#,
                "--json",
            ],
            &certs,
            &url,
        );
        if last.0 == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(last.0, 0, "{last:?}");
    let v: serde_json::Value = serde_json::from_str(last.1.trim()).unwrap();
    assert_eq!(v["agent_id"], "dev-agent");
    assert_eq!(v["result"]["payload"]["hello"], "world");

    let (code, out, _) = croupier(&["agents"], &certs, &url);
    assert_eq!(code, 0);
    assert!(out.contains("dev-agent") && out.contains("online"), "{out}");
    let (code, out, _) = croupier(&["functions", "--json"], &certs, &url);
    assert_eq!(code, 0);
    assert!(out.contains("agent.sleep"), "{out}");

    // Error paths: the server refused it (exit 4), with the gRPC status on stderr.
    let (code, _, err) = croupier(
        &["invoke", "agent.sleep", "--payload", r#"{"ms":"x"}"#],
        &certs,
        &url,
    );
    assert_eq!(code, 4);
    assert!(
        err.contains("InvalidArgument") && err.contains("/ms"),
        "{err}"
    );
    let (code, _, err) = croupier(
        &["invoke", "agent.ping", "--payload", "not json"],
        &certs,
        &url,
    );
    assert_eq!(code, 2, "a payload that is not JSON is a usage error");
    assert!(err.contains("not valid JSON"), "{err}");

    // The admin identity is picked by itself for node state.
    let (code, out, err) = croupier(
        &[
            "node",
            "state",
            "dev-agent",
            "maintenance",
            "--reason",
            "test",
        ],
        &certs,
        &url,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("maintenance") && out.contains("spiffe://croupier/admin/admin"),
        "{out}"
    );
    let (code, _, err) = croupier(&["invoke", "agent.ping"], &certs, &url);
    assert_eq!(code, 4, "no agent: the server answered");
    assert!(
        err.contains("Unavailable") && err.contains("maintenance"),
        "{err}"
    );

    // Durations as the config writes them; a passed deadline is the server's answer (exit 4).
    node_normal(&certs, &url);
    let (code, _, err) = croupier(
        &[
            "invoke",
            "agent.sleep",
            "--payload",
            r#"{"ms":5000}"#,
            "--timeout",
            "300ms",
            "--game-id",
            "default",
        ],
        &certs,
        &url,
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("DeadlineExceeded"), "{err}");
    // --payload @- reads stdin.
    let mut child = Command::new(bin())
        .args([
            "invoke",
            "agent.ping",
            "--payload",
            "@-",
            "--server",
            &url,
            "--tls-dir",
        ])
        .arg(&certs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"from":"stdin"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stdin"), "{text}");

    // describe: one function in full; functions marks jobs.
    let (code, out, err) = croupier(&["describe", "agent.countdown"], &certs, &url);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("job (croupier job start)")
            && out.contains("params schema")
            && out.contains("steps"),
        "{out}"
    );
    assert!(out.contains("dev-agent online"), "{out}");
    let (code, _, err) = croupier(&["describe", "agent.nope"], &certs, &url);
    assert_eq!(code, 4);
    assert!(
        err.contains("agent.countdown"),
        "the registered names are listed: {err}"
    );
    let (_, out, _) = croupier(&["functions"], &certs, &url);
    let row = out
        .lines()
        .find(|l| l.starts_with("agent.countdown"))
        .unwrap_or_default();
    assert!(row.contains("job"), "{out}");

    // Ctrl-C while following: the job goes on, and the CLI says how to follow it again.
    let follower = Command::new(bin())
        .args([
            "job",
            "start",
            "agent.countdown",
            "--payload",
            r#"{"steps":100,"ms":100}"#,
        ])
        .args(["--follow", "--json", "--server", &url, "--tls-dir"])
        .arg(&certs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follower = Proc {
        child: follower,
        name: "follower".into(),
    };
    std::thread::sleep(Duration::from_millis(1500));
    follower.signal(2);
    let out = std::mem::replace(&mut follower.child, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("goes on") && err.contains("croupier job watch"),
        "{err}"
    );
    let first = String::from_utf8_lossy(&out.stdout);
    let job_id = first
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["job_id"].as_str().map(str::to_string))
        .expect("the followed events name the job");
    let (code, out, _) = croupier(&["job", "get", &job_id, "--json"], &certs, &url);
    assert_eq!(code, 0);
    assert!(
        out.contains("running"),
        "the job goes on after Ctrl-C: {out}"
    );
    let _ = croupier(&["job", "cancel", &job_id], &certs, &url);

    // SIGTERM: a clean exit.
    dev.signal(15);
    let mut dev = dev;
    assert_eq!(dev.wait_exit(Duration::from_secs(15)), Some(0));
}

/// Sets dev-agent back to normal (an earlier step put it in maintenance).
fn node_normal(certs: &std::path::Path, url: &str) {
    let (code, _, err) = croupier(
        &[
            "node",
            "state",
            "dev-agent",
            "normal",
            "--reason",
            "test done",
        ],
        certs,
        url,
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn exit_codes_tell_unreachable_usage_and_local_problems_apart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(bin())
        .args(["certs", "init", "--client", "c1", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Nothing listens on a port just freed: unreachable, with what to do.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let (code, _, err) = croupier(&["agents"], &certs, &url);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("Is a Croupier server running there"), "{err}");
    // A plaintext address is a usage error.
    let (code, _, err) = croupier(&["agents"], &certs, &format!("http://127.0.0.1:{port}"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("use https://"), "{err}");
    // Missing certificates are a local problem.
    let (code, _, err) = croupier(&["agents"], &dir.path().join("nowhere"), &url);
    assert_eq!(code, 6, "{err}");
    // A node state that does not exist is a usage error, found before any connection.
    let (code, _, err) = croupier(&["node", "state", "a1", "asleep"], &certs, &url);
    assert_eq!(code, 2, "{err}");
    // A bad flag is clap's usage error.
    let (code, _, _) = croupier(&["invoke", "f", "--timeout", "soon"], &certs, &url);
    assert_eq!(code, 2);
}

#[test]
fn completions_and_version_are_printed() {
    let out = Command::new(bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("croupier") && script.contains("complete"),
        "{script}"
    );
    let out = Command::new(bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with("croupier ") && version.contains('(') && version.contains(')'),
        "{version}"
    );
}

/// Parses the one JSON object a `--json` command prints.
fn one_object((code, out, err): (i32, String, String)) -> serde_json::Value {
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of JSON: {out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(v.is_object(), "an object: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_has_one_shape_and_people_read_times_and_agents() {
    let mesh = common::Mesh::start(&["a1", "a2"], Duration::from_secs(2));
    let _a1 = mesh.agent("a1", &[]);
    let a2 = mesh.agent("a2", &[]);
    mesh.wait_online(&["a1", "a2"]).await;

    // The server says what it runs.
    let (code, out, err) = mesh.cli("client-c1", &["version"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("client  croupier ") && out.contains("server  croupier "),
        "{out}"
    );
    assert!(out.contains("embedded store, up since 20"), "{out}");
    let v = one_object(mesh.cli("client-c1", &["version", "--json"]));
    assert_eq!(v["server"]["store"], "embedded");
    assert_eq!(v["server"]["version"], v["client"]["version"]);
    assert_eq!(v["server"]["commit"], v["client"]["commit"]);

    // Lists sit under a plural key.
    let v = one_object(mesh.cli("client-c1", &["agents", "--json"]));
    let ids: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a2"]);

    let v = one_object(mesh.cli(
        "admin-ops",
        &[
            "node",
            "state",
            "a1",
            "maintenance",
            "--reason",
            "disk",
            "--json",
        ],
    ));
    assert_eq!(v["state"], "maintenance");
    assert_eq!(v["reason"], "disk");
    assert!(v["actor"].as_str().unwrap().contains("ops"), "{v}");
    assert!(v["changed_at"].as_i64().unwrap() > 0, "{v}");
    mesh.cli("admin-ops", &["node", "state", "a1", "normal"]);

    let file = mesh.dir.path().join("p.toml");
    std::fs::write(
        &file,
        "id = \"hello\"\n[[steps]]\nname = \"ping\"\nfunction = \"agent.ping\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let put = one_object(mesh.cli("admin-ops", &["pipeline", "put", file, "--json"]));
    assert_eq!(put["id"], "hello");
    let list = one_object(mesh.cli("client-c1", &["pipeline", "list", "--json"]));
    assert_eq!(list["pipelines"][0]["steps"][0]["function"], "agent.ping");
    let got = one_object(mesh.cli("client-c1", &["pipeline", "get", "hello", "--json"]));
    assert_eq!(got["id"], "hello");
    let deleted = one_object(mesh.cli("admin-ops", &["pipeline", "delete", "hello", "--json"]));
    assert_eq!(deleted["deleted"], true);

    let certs = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["certs", "init", "--client", "x", "--json", "--dir"])
        .arg(certs.path())
        .output()
        .unwrap();
    let v = one_object((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ));
    assert!(
        v["written"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("client-x.pem")),
        "{v}"
    );

    // Human times are RFC 3339 with their age, not epoch milliseconds.
    let started = one_object(mesh.cli(
        "client-c1",
        &[
            "job",
            "start",
            "agent.countdown",
            "--payload",
            r#"{"steps": 1, "ms": 1}"#,
            "--game-id",
            "g",
            "--env",
            "e",
            "--json",
        ],
    ));
    let job = started["job_id"].as_str().unwrap().to_string();
    let (code, out, err) = mesh.cli("client-c1", &["job", "get", &job]);
    assert_eq!(code, 0, "{err}");
    let created = out.lines().find(|l| l.starts_with("created_at")).unwrap();
    assert!(
        created.contains("T") && created.contains("Z (") && created.ends_with("ago)"),
        "{out}"
    );

    // `watch` names the agent that went, not the (empty) agent list of the delta.
    let mut watch = Command::new(bin())
        .args([
            "watch",
            "--function",
            "agent.ping",
            "--server",
            &mesh.url,
            "--tls-dir",
        ])
        .arg(mesh.certs())
        .args(["--identity", "client-c1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = croupier::child::lines(watch.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut wait_for = |what: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {what} line after {seen:?}"));
        seen.push(line.clone());
        if line.contains(what) {
            return line;
        }
    };
    let initial = wait_for("ADDED");
    assert!(initial.contains("agents=[a1,a2]"), "{initial}");
    wait_for("SYNCED");
    a2.signal(libc::SIGTERM);
    let removed = wait_for("REMOVED");
    assert!(
        removed.contains("agent=a2") && !removed.contains("agents=[]"),
        "{removed}"
    );
    watch.kill().unwrap();
    let _ = watch.wait();
}
