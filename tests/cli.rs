//! End-to-end: `croupier dev` and the CLI as a user runs them.

mod common;

use std::io::{BufRead, BufReader};
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
    let mut child = Command::new(bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let dev = Proc {
        child,
        name: "dev".into(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = String::new();
    let mut banner = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if let Some(rest) = line.trim_start().strip_prefix("server:") {
            url = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        !url.is_empty() && banner.contains("croupier invoke agent.ping"),
        "{banner}"
    );
    let certs = dir.path().join("certs");

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

    // Error paths: exit code 2 with the gRPC status on stderr.
    let (code, _, err) = croupier(
        &["invoke", "agent.sleep", "--payload", r#"{"ms":"x"}"#],
        &certs,
        &url,
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("InvalidArgument") && err.contains("/ms"),
        "{err}"
    );
    let (code, _, err) = croupier(
        &["invoke", "agent.ping", "--payload", "not json"],
        &certs,
        &url,
    );
    assert_ne!(code, 0);
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
    assert_eq!(code, 2);
    assert!(
        err.contains("Unavailable") && err.contains("maintenance"),
        "{err}"
    );

    // SIGTERM: a clean exit.
    dev.signal(15);
    let mut dev = dev;
    assert_eq!(dev.wait_exit(Duration::from_secs(15)), Some(0));
}
