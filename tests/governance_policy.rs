//! End-to-end governance with real processes: the admin policy (who reads whose jobs, who may
//! call what, only admins change it), two-person approvals (the requester never approves, an
//! approval runs the call exactly once, a rejection never runs it) and the audit trail (every
//! call of a burst recorded once, a tampered copy found by `croupier audit verify`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, bin, certs_cmd, opts};
use croupier_control::audit::chain;
use croupier_proto::function::v1::ListJobsRequest;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// Writes `text` to `name` in the mesh's directory and returns the path.
fn file(mesh: &Mesh, name: &str, text: &str) -> PathBuf {
    let path = mesh.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `croupier policy test` as admin-ops (its `--identity` is the identity tested, so the
/// certificate is named with `--cert`): (exit code, stdout).
fn policy_test(mesh: &Mesh, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(["policy", "test"])
        .args(args)
        .args(["--server", &mesh.url, "--cert", "admin-ops", "--tls-dir"])
        .arg(mesh.certs())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

/// Runs the CLI and parses its JSON answer, which must come with exit code 0.
fn cli_json(mesh: &Mesh, identity: &str, args: &[&str]) -> Value {
    let (code, out, err) = mesh.cli(identity, args);
    assert_eq!(code, 0, "{args:?} as {identity}: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// The audit records of the mesh's server, from the CLI, for a filter.
fn audit(mesh: &Mesh, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "list", "--json", "--limit", "5000"];
    args.extend(filter);
    let v = cli_json(mesh, "admin-ops", &args);
    v["records"].as_array().unwrap().clone()
}

const READ_POLICY: &str = r#"
[roles]
readers = ["client/c2"]

[[rule]]
name = "c3 may not call agent functions"
who = ["client/c3"]
actions = ["invoke", "job"]
functions = ["agent.*"]
effect = "deny"

[[rule]]
name = "readers read every job"
who = ["readers"]
actions = ["read"]

[[rule]]
name = "admins do everything"
who = ["admin"]
actions = ["*"]

[[rule]]
name = "everyone calls"
who = ["*"]
actions = ["invoke", "job"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decides_who_reads_and_calls_and_only_admins_change_it() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    certs_cmd(&mesh.certs(), "init", &["--client", "c2", "--client", "c3"]);
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;

    let c1 = mesh.client("client-c1").await;
    let c2 = mesh.client("client-c2").await;
    let job = c1
        .start_job("agent.countdown", json!({"steps": 1, "ms": 10}), &opts())
        .await
        .unwrap();
    let id = job.id().to_string();
    assert_eq!(
        c2.get_job(&id).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // No policy is stored: the built-in one applies.
    let got = cli_json(&mesh, "admin-ops", &["policy", "get", "--json"]);
    assert_eq!(got["stored"], false, "{got}");

    // A client cannot change the policy; the refusal says what is needed.
    let path = file(&mesh, "policy.toml", READ_POLICY);
    let path = path.to_str().unwrap();
    let (code, _, err) = mesh.cli("client-c1", &["policy", "put", path]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("admin certificate"), "{err}");
    // A policy that does not parse is refused and names the problem.
    let bad = file(
        &mesh,
        "bad.json",
        r#"{"rule": [{"who": ["*"], "actons": ["read"]}]}"#,
    );
    let (code, _, err) = mesh.cli("admin-ops", &["policy", "put", bad.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("actons"), "{err}");

    let put = cli_json(&mesh, "admin-ops", &["policy", "put", path, "--json"]);
    assert!(put["revision"].as_i64().unwrap() > 0, "{put}");
    let got = cli_json(&mesh, "admin-ops", &["policy", "get", "--json"]);
    assert_eq!(got["stored"], true);
    assert_eq!(got["policy"]["roles"]["readers"], json!(["client/c2"]));

    // The readers' role reads c1's job (get, list) but still cannot cancel it.
    assert_eq!(c2.get_job(&id).await.unwrap().job_id, id);
    let listed = c2.list_jobs(ListJobsRequest::default()).await.unwrap();
    assert!(listed.jobs.iter().any(|j| j.job_id == id));
    assert_eq!(
        c2.cancel_job(&id, "not mine").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // c3 may not call agent functions; the refusal names the rule. c1 still may.
    let c3 = mesh.client("client-c3").await;
    let err = c3
        .invoke("agent.ping", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("c3 may not call agent functions"),
        "{}",
        err.message()
    );
    c1.invoke("agent.ping", json!({}), &opts()).await.unwrap();

    // `policy test` explains the decision, and exits 1 on a denial.
    let (code, out) = policy_test(
        &mesh,
        &[
            "--identity",
            "client/c3",
            "--action",
            "invoke",
            "--function",
            "agent.ping",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("denied"), "{out}");
    assert!(out.contains("c3 may not call agent functions"), "{out}");
    let (code, out) = policy_test(
        &mesh,
        &["--identity", "client/c2", "--action", "read", "--json"],
    );
    assert_eq!(code, 0, "{out}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["rule"], r#"rule 2 ("readers read every job")"#, "{d}");
    assert_eq!(
        d["explanation"],
        r#"allowed read by rule 2 ("readers read every job")"#
    );
    assert_eq!(d["roles"], json!(["readers"]), "{d}");

    // Pipeline changes are for admins (the policy grants `pipelines` to no one else) and are
    // audited, refused or not.
    let (code, _, err) = mesh.cli("client-c2", &["pipeline", "delete", "nightly"]);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = mesh.cli("admin-ops", &["pipeline", "delete", "nightly"]);
    assert_eq!(code, 4, "{err}");
    let deletes: Vec<(String, String)> = audit(&mesh, &["--action", "delete_pipeline"])
        .iter()
        .map(|r| (r["who"].to_string(), r["outcome"].to_string()))
        .collect();
    assert_eq!(
        deletes,
        [
            (
                r#""spiffe://croupier/admin/ops""#.to_string(),
                r#""NOT_FOUND""#.to_string()
            ),
            (
                r#""spiffe://croupier/client/c2""#.to_string(),
                r#""PERMISSION_DENIED""#.to_string()
            ),
        ]
    );

    // Both policy writes, the refused ones included, are in the audit trail.
    let puts = audit(&mesh, &["--action", "put_policy"]);
    let outcomes: Vec<(&str, &str)> = puts
        .iter()
        .map(|r| (r["who"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("spiffe://croupier/admin/ops", "ok"),
            ("spiffe://croupier/admin/ops", "BAD_REQUEST"),
            ("spiffe://croupier/client/c1", "PERMISSION_DENIED"),
        ],
        "{puts:?}"
    );
}

const APPROVAL_POLICY: &str = r#"
[roles]
# c1 is a lead too, and still may not approve its own requests.
leads = ["client/lead", "client/lead2", "client/c1"]

[[rule]]
name = "clients' pings and countdowns need a lead"
who = ["client"]
actions = ["invoke", "job"]
functions = ["agent.ping", "agent.countdown"]
approval = { approvers = "leads", count = 1, ttl = "10m" }

[[rule]]
name = "leads approve"
who = ["leads"]
actions = ["approve"]

[[rule]]
name = "admins do everything"
who = ["admin"]
actions = ["*"]
"#;

/// The `calls` an `agent.ping` answer counts (the agent's executions so far).
fn calls(result: &Value) -> i64 {
    result["calls"]
        .as_i64()
        .unwrap_or_else(|| panic!("no calls in {result}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_need_another_person_and_run_the_call_exactly_once() {
    let mesh = Mesh::start(&["a1"], Duration::from_secs(5));
    certs_cmd(
        &mesh.certs(),
        "init",
        &["--client", "lead", "--client", "lead2"],
    );
    // A second certificate of c1's identity, from the same CA (another serial).
    let second = mesh.dir.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(mesh.certs().join(f), second.join(f)).unwrap();
    }
    certs_cmd(&second, "init", &["--client", "c1"]);
    assert_ne!(
        std::fs::read(second.join("client-c1.pem")).unwrap(),
        std::fs::read(mesh.certs().join("client-c1.pem")).unwrap()
    );
    let _a1 = mesh.agent("a1", &[]);
    mesh.wait_online(&["a1"]).await;
    let path = file(&mesh, "policy.toml", APPROVAL_POLICY);
    cli_json(
        &mesh,
        "admin-ops",
        &["policy", "put", path.to_str().unwrap(), "--json"],
    );

    // The call does not run: it is refused with the approval id in its details.
    let c1 = mesh.client("client-c1").await;
    let err = c1
        .invoke("agent.ping", json!({"ticket": 42}), &opts())
        .await
        .unwrap_err();
    let status = err;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "APPROVAL_REQUIRED");
    let id = info.metadata["approval_id"].clone();
    assert!(status.message().contains(&id), "{}", status.message());

    // Approvers see it pending, with the payload.
    let list = cli_json(
        &mesh,
        "client-lead",
        &["approval", "list", "--state", "pending", "--json"],
    );
    let listed = &list["approvals"][0];
    assert_eq!(listed["id"], id.as_str(), "{list}");
    assert_eq!(listed["payload"], json!({"ticket": 42}));
    assert_eq!(listed["requester"], "spiffe://croupier/client/c1");

    // The requester may not decide, with either of its certificates.
    let (code, _, err) = mesh.cli("client-c1", &["approval", "approve", &id, "--reason", "me"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("never decide on their own request"), "{err}");
    let out = Command::new(bin())
        .args([
            "approval", "approve", &id, "--reason", "me again", "--server", &mesh.url,
        ])
        .args(["--identity", "client-c1", "--tls-dir"])
        .arg(&second)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("never decide on their own request"), "{err}");

    // The lead approves: the call runs once, as c1, and its result is in the approval.
    let a = cli_json(
        &mesh,
        "client-lead",
        &[
            "approval",
            "approve",
            &id,
            "--reason",
            "ticket 42 checked",
            "--json",
        ],
    );
    assert_eq!(a["state"], "approved", "{a}");
    // The result is the requester's (and admins'): the approver does not see it.
    assert_eq!(a["result"], json!({}), "{a}");
    // A second decision is refused and runs nothing; who is not an approver may not decide.
    let (code, _, err) = mesh.cli(
        "client-lead2",
        &["approval", "approve", &id, "--reason", "again"],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("approved already"), "{err}");
    let (code, _, err) = mesh.cli(
        "admin-ops",
        &["approval", "approve", &id, "--reason", "admin"],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not among the approvers (leads)"), "{err}");
    let shown = cli_json(&mesh, "client-c1", &["approval", "show", &id, "--json"]);
    assert_eq!(shown["state"], "approved");
    assert_eq!(shown["result"]["payload"], json!({"ticket": 42}), "{shown}");
    assert_eq!(calls(&shown["result"]), 1, "{shown}");

    // A rejected request never runs, and its requester reads why.
    let err = c1
        .invoke("agent.ping", json!({}), &opts())
        .await
        .unwrap_err();
    let info = err.get_details_error_info().unwrap();
    let rejected = info.metadata["approval_id"].clone();
    let r = cli_json(
        &mesh,
        "client-lead",
        &[
            "approval",
            "reject",
            &rejected,
            "--reason",
            "no ticket",
            "--json",
        ],
    );
    assert_eq!(r["state"], "rejected", "{r}");
    let shown = cli_json(
        &mesh,
        "client-c1",
        &["approval", "show", &rejected, "--json"],
    );
    assert_eq!(shown["error_code"], "REJECTED", "{shown}");
    assert!(shown["error"].as_str().unwrap().contains("no ticket"));
    // Admins call without approval: the agent has run ping twice in all (the approved call and
    // this one), so neither the second decision nor the rejected request ran it.
    let admin = mesh.client("admin-ops").await;
    let direct: Value = admin
        .invoke_typed("agent.ping", &json!({}), &opts())
        .await
        .unwrap();
    assert_eq!(calls(&direct), 2, "{direct}");

    // A job needs approval the same way; the approval starts it, as c1's job.
    let (code, _, err) = mesh.cli(
        "client-c1",
        &[
            "job",
            "start",
            "agent.countdown",
            "--payload",
            r#"{"steps": 1, "ms": 10}"#,
            "--game-id",
            "g",
            "--env",
            "e",
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("needs approval"), "{err}");
    let pending = cli_json(
        &mesh,
        "client-lead",
        &["approval", "list", "--state", "pending", "--json"],
    );
    let job_approval = pending["approvals"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(pending["approvals"][0]["kind"], "job");
    let a = cli_json(
        &mesh,
        "client-lead",
        &[
            "approval",
            "approve",
            &job_approval,
            "--reason",
            "ok",
            "--json",
        ],
    );
    let job_id = a["job_id"].as_str().unwrap();
    assert!(!job_id.is_empty(), "{a}");
    let done = c1.job(job_id).wait().await.unwrap();
    assert_eq!(done.caller, "spiffe://croupier/client/c1");

    // The audit trail holds both identities of the approved call, and every decision.
    let records = audit(&mesh, &["--function", "agent.ping"]);
    let approved_call = records
        .iter()
        .find(|r| r["action"] == "invoke" && r["details"]["approval"]["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no approved invoke record in {records:?}"));
    assert_eq!(approved_call["who"], "spiffe://croupier/client/lead");
    assert_eq!(approved_call["on_behalf_of"], "spiffe://croupier/client/c1");
    let decisions: Vec<(&str, &str, &str)> = records
        .iter()
        .filter(|r| r["action"] == "approve" || r["action"] == "reject")
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["who"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    for want in [
        ("reject", "spiffe://croupier/client/lead", "ok"),
        ("approve", "spiffe://croupier/client/lead", "ok"),
        (
            "approve",
            "spiffe://croupier/client/c1",
            "PERMISSION_DENIED",
        ),
        (
            "approve",
            "spiffe://croupier/admin/ops",
            "PERMISSION_DENIED",
        ),
        (
            "approve",
            "spiffe://croupier/client/lead2",
            "FAILED_PRECONDITION",
        ),
    ] {
        assert!(decisions.contains(&want), "{want:?} not in {decisions:?}");
    }
}

/// The lines of the audit files in `dir` (oldest first) whose action is `action`.
fn count_action(log: &Path, action: &str) -> usize {
    let needle = format!("\"action\":\"{action}\"");
    chain::log_files(log)
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&needle))
                .count()
        })
        .sum()
}

/// `croupier audit verify FILE ARGS`: (exit code, stdout, stderr).
fn verify(mesh: &Mesh, file: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .arg(file)
        .args(args)
        .args([
            "--server",
            &mesh.url,
            "--identity",
            "admin-ops",
            "--tls-dir",
        ])
        .arg(mesh.certs())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_20000_calls_leaves_20000_verifiable_records_and_tampering_is_found() {
    const CALLS: usize = 20_000;
    // Small files, so the burst rotates the log many times.
    let mesh = Mesh::start_with_env(
        &["a1"],
        Duration::from_secs(5),
        &[
            ("CROUPIER_AUDIT__MAX_FILE_BYTES", "1048576"),
            ("CROUPIER_AUDIT__KEEP_FILES", "100"),
        ],
    );
    let _a1 = mesh.agent_with("a1", &[], &["--packs", "none"]);
    mesh.wait_online(&["a1"]).await;
    let client = mesh.client("client-c1").await;
    let started = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let client = client.clone();
            croupier_proto::task::spawn("burst", async move {
                for i in (w..CALLS).step_by(32) {
                    client
                        .invoke("agent.ping", json!({"i": i}), &opts())
                        .await
                        .unwrap_or_else(|e| panic!("call {i}: {e}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    eprintln!("{CALLS} calls in {:?}", started.elapsed());

    // Every call's record reaches the log: exactly one each.
    let log = mesh.dir.path().join("data").join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_action(&log, "invoke") < CALLS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_action(&log, "invoke"), CALLS);
    let files = chain::log_files(&log);
    assert!(
        files.len() > 3,
        "the burst should rotate the log: {files:?}"
    );

    // Once the writer is quiet, the server checkpoints the head it wrote last.
    let head = chain::verify(&files, None).unwrap().head;
    let deadline = Instant::now() + Duration::from_secs(15);
    let checkpoint = loop {
        let v = cli_json(
            &mesh,
            "admin-ops",
            &["audit", "list", "--limit", "1", "--json"],
        );
        if v["checkpoint"]["seq"] == head.seq || Instant::now() > deadline {
            break v["checkpoint"].clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(checkpoint["seq"], head.seq, "{checkpoint}");
    assert_eq!(checkpoint["hash"], head.hash.as_str());

    // The chain verifies across the rotated files, up to the head the server checkpointed.
    let (code, out, err) = verify(&mesh, &log, &["--ask-server"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("holds the checkpointed head"), "{out}");

    // Copies of the current file, tampered three ways: each is found, at its line.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<String> = text.lines().map(ToString::to_string).collect();
    assert!(lines.len() > 10);
    let tampered = mesh.dir.path().join("tampered.log");
    let mut modified = lines.clone();
    modified[5] = modified[5].replacen("client/c1", "client/c9", 1);
    assert_ne!(modified[5], lines[5]);
    let mut removed = lines.clone();
    removed.remove(5);
    let mut reordered = lines.clone();
    reordered.swap(5, 6);
    for (what, content) in [
        ("modified", modified),
        ("removed", removed),
        ("reordered", reordered),
    ] {
        std::fs::write(&tampered, content.join("\n") + "\n").unwrap();
        let (code, _, err) = verify(&mesh, &tampered, &[]);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(err.contains("tampered.log:6:"), "{what}: {err}");
    }
    // A cut tail verifies on its own, but not against the server's checkpoint.
    std::fs::write(&tampered, lines[..lines.len() - 3].join("\n") + "\n").unwrap();
    let (code, out, err) = verify(&mesh, &tampered, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = verify(&mesh, &tampered, &["--ask-server"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("records were removed from the end"), "{err}");
}
