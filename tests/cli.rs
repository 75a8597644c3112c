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
