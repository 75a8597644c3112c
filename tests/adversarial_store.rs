//! End-to-end: the embedded store of a real `croupier server` under damage, crashes and
//! backups. A damaged log stops the server with where the damage is and what to run, `croupier
//! store check` reports it, `croupier store repair` makes the server start again and keeps the
//! original; a SIGKILL during a flood of writes leaves a store that opens with every
//! acknowledged write; `croupier store backup` of a running server, restored into a fresh data
//! dir, serves the same descriptors, pipelines and node states.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mesh, bin};
use croupier_proto::common::v1::{FunctionDescriptor, NodeState};
use croupier_proto::function::v1::{
    ListPipelinesRequest, PipelineStep, PipelineTemplate, PutPipelineRequest,
    RegisterFunctionRequest,
};
use croupier_sdk::{Client, TlsFiles};

const HB: Duration = Duration::from_secs(2);

fn store_log(data: &Path) -> PathBuf {
    data.join("store").join("store.log")
}

/// Runs `croupier store ARGS`.
fn store_cmd(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("store")
        .args(args)
        .output()
        .expect("running croupier store")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `text` without terminal colour codes.
fn without_colours(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn template(id: &str) -> PipelineTemplate {
    PipelineTemplate {
        id: id.into(),
        description: format!("pipeline {id}"),
        steps: vec![PipelineStep {
            name: "ping".into(),
            function_id: "agent.ping".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn put_pipeline(admin: &Client, id: &str) -> Result<(), tonic::Status> {
    admin
        .function_service()
        .put_pipeline(PutPipelineRequest {
            template: Some(template(id)),
        })
        .await
        .map(|_| ())
}

async fn pipelines(client: &Client) -> BTreeSet<String> {
    client
        .function_service()
        .list_pipelines(ListPipelinesRequest {})
        .await
        .unwrap()
        .into_inner()
        .templates
        .into_iter()
        .map(|t| t.id)
        .collect()
}

async fn register(admin: &Client, id: &str) {
    admin
        .function_service()
        .register_function(RegisterFunctionRequest {
            game_id: "g".into(),
            env: "e".into(),
            function_descriptor: Some(FunctionDescriptor {
                id: id.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

async fn functions(client: &Client) -> BTreeSet<String> {
    client
        .functions("g", "e")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect()
}

/// Stops the mesh's server with SIGTERM and waits for it to exit.
fn stop(mesh: &mut Mesh) {
    let mut server = mesh.server.take().expect("a running server");
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_exit(Duration::from_secs(20)).is_some(),
        "the server stops on SIGTERM"
    );
}

/// Starts `croupier server` on `data` expecting it to refuse: its exit code and stderr.
fn server_refuses(mesh: &Mesh, data: &Path) -> (Option<i32>, String) {
    let log = mesh.dir.path().join("refused.log");
    let child = Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--tls-dir")
        .arg(mesh.certs())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = common::Proc {
        child,
        name: "refused".into(),
    };
    let code = proc.wait_exit(Duration::from_secs(30));
    (code, std::fs::read_to_string(&log).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_the_server_until_store_repair_and_check_says_where() {
    let mut mesh = Mesh::start(&["n1"], HB);
    let data = mesh.dir.path().join("data");
    let admin = mesh.client("admin-ops").await;
    register(&admin, "player.ban").await;
    admin
        .set_node_state("n1", NodeState::Maintenance, "before the damage")
        .await
        .unwrap();
    for id in ["p-1", "p-2", "p-damaged", "p-after"] {
        put_pipeline(&admin, id).await.unwrap();
    }
    stop(&mut mesh);

    // Damage the record of a pipeline: one changed character in its value.
    let log = store_log(&data);
    let mut bytes = std::fs::read(&log).unwrap();
    let text_log = String::from_utf8(bytes.clone()).unwrap();
    let start = text_log.find("/croupier/pipelines/p-damaged").unwrap();
    let line_start = text_log[..start].rfind('\n').map_or(0, |n| n + 1);
    let line_no = text_log[..line_start].matches('\n').count() + 1;
    let value_at = start + text_log[start..].find("\"value\":\"").unwrap() + 12;
    bytes[value_at] = if bytes[value_at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&log, &bytes).unwrap();
    assert!(
        line_start + text_log[line_start..].find('\n').unwrap() + 1 < bytes.len(),
        "the damaged record is not the last one"
    );

    let (code, stderr) = server_refuses(&mesh, &data);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    for needle in [
        format!("{} line {line_no} (byte {line_start})", log.display()),
        "checksum mismatch".to_string(),
        format!("croupier store check --data-dir {}", data.display()),
        format!("croupier store repair --data-dir {}", data.display()),
        "left the file untouched".to_string(),
    ] {
        assert!(stderr.contains(&needle), "missing {needle:?} in: {stderr}");
    }
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "the log is untouched");

    let d = data.to_str().unwrap();
    let out = store_cmd(&["check", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("CORRUPT"), "{report}");
    assert!(
        report.contains(&format!("line {line_no} (byte {line_start})")),
        "{report}"
    );
    assert!(report.contains("croupier store repair"), "{report}");
    let out = store_cmd(&["check", "--data-dir", d, "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["corruption"]["line"], line_no);
    assert_eq!(json["corruption"]["offset"], line_start);
    assert!(
        json["readable_after_damage"].as_u64().unwrap() >= 1,
        "{json}"
    );

    let out = store_cmd(&["repair", "--data-dir", d]);
    assert!(out.status.success(), "{}", text(&out));
    let repaired = text(&out);
    assert!(repaired.contains("kept the original as"), "{repaired}");
    assert!(
        repaired.contains("/croupier/pipelines/p-damaged")
            && repaired.contains("/croupier/pipelines/p-after"),
        "the report names what was dropped: {repaired}"
    );
    let backups: Vec<PathBuf> = std::fs::read_dir(data.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bak"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        std::fs::read(&backups[0]).unwrap(),
        bytes,
        "the original is kept"
    );
    let out = store_cmd(&["check", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    mesh.start_server("127.0.0.1:0");
    let client = mesh.client("client-c1").await;
    assert_eq!(
        pipelines(&client).await,
        BTreeSet::from(["p-1".to_string(), "p-2".to_string()]),
        "what came before the damage is served; the damaged record and what followed are gone"
    );
    assert!(functions(&client).await.contains("player.ban"));
    // The node state survived too: a registering agent shows it.
    let _n1 = mesh.agent_with("n1", &[], &["--packs", "none"]);
    mesh.wait_online(&["n1"]).await;
    let agents = client.agents("g", "e").await.unwrap();
    let n1 = agents.iter().find(|a| a.agent_id == "n1").unwrap();
    let state = n1.node_state.as_ref().unwrap();
    assert_eq!(state.state, NodeState::Maintenance as i32);
    assert_eq!(state.reason, "before the damage");
}

/// Puts pipelines `{prefix}-{n}` from `writers` tasks until `stop`; returns the acknowledged ids.
fn flood(
    admin: &Client,
    prefix: &'static str,
    writers: usize,
    stop: tokio_util::sync::CancellationToken,
) -> (
    Arc<Mutex<BTreeSet<String>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let tasks = (0..writers)
        .map(|w| {
            let (admin, acked, stop) = (admin.clone(), acked.clone(), stop.clone());
            croupier_proto::task::spawn("flood", async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                for n in 0..5_000 {
                    if stop.is_cancelled() || Instant::now() > deadline {
                        return;
                    }
                    let id = format!("{prefix}-{w}-{n}");
                    match put_pipeline(&admin, &id).await {
                        Ok(()) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    (acked, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_flood_of_writes_leaves_a_store_with_every_acknowledged_write() {
    let mut mesh = Mesh::start(&[], HB);
    let data = mesh.dir.path().join("data");
    for round in 0..3 {
        let admin = mesh.client("admin-ops").await;
        let stop = tokio_util::sync::CancellationToken::new();
        let (acked, tasks) = flood(&admin, ["a", "b", "c"][round], 4, stop.clone());
        let started = Instant::now();
        while acked.lock().unwrap().len() < 150 && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let server = mesh.server.take().unwrap();
        server.signal(libc::SIGKILL);
        drop(server);
        stop.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= 150,
            "round {round}: only {} writes",
            acked.len()
        );

        let out = store_cmd(&["check", "--data-dir", data.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", text(&out));
        mesh.start_server("127.0.0.1:0");
        let client = mesh.client("client-c1").await;
        let stored = pipelines(&client).await;
        let lost: Vec<&String> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost: {lost:?}"
        );
    }

    // A kill in the middle of an append: the unfinished record is dropped and reported.
    let server = mesh.server.take().unwrap();
    server.signal(libc::SIGKILL);
    drop(server);
    let log = store_log(&data);
    let text_log = std::fs::read_to_string(&log).unwrap();
    let last_seq: u64 = text_log
        .lines()
        .last()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let torn = format!(
        "0badc0de {} {{\"op\":\"put\",\"key\":\"/croupier/pipelines/torn\",\"va",
        last_seq + 1
    );
    std::fs::write(&log, format!("{text_log}{torn}")).unwrap();
    let out = store_cmd(&["check", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("torn tail"), "{}", text(&out));
    mesh.start_server("127.0.0.1:0");
    let warned = without_colours(&mesh.server_log());
    assert!(
        warned.contains("dropping an unfinished last record")
            && warned.contains("/croupier/pipelines/torn")
            && warned.contains(&format!("dropped_bytes={}", torn.len())),
        "{warned}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text_log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_running_server_restores_into_a_fresh_dir_that_serves_the_same_state() {
    let mesh = Mesh::start(&["n1", "n2"], HB);
    let data = mesh.dir.path().join("data");
    let admin = mesh.client("admin-ops").await;
    for id in ["player.ban", "player.kick", "match.start"] {
        register(&admin, id).await;
    }
    admin
        .set_node_state("n1", NodeState::Maintenance, "restored with the backup")
        .await
        .unwrap();
    admin
        .set_node_state("n2", NodeState::Disabled, "broken disk")
        .await
        .unwrap();
    for n in 0..20 {
        put_pipeline(&admin, &format!("base-{n}")).await.unwrap();
    }
    let functions_before = functions(&admin).await;

    // Back up while writers keep going.
    let stop = tokio_util::sync::CancellationToken::new();
    let (acked, tasks) = flood(&admin, "live", 3, stop.clone());
    while acked.lock().unwrap().len() < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_before_backup = acked.lock().unwrap().clone();
    let backup = mesh.dir.path().join("backups/store.backup");
    let out = store_cmd(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("running store"), "{}", text(&out));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let acked_all = acked.lock().unwrap().clone();

    // Restoring over the running server's data dir is refused.
    let out = store_cmd(&[
        "restore",
        "--data-dir",
        data.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "a held data dir is a local problem (exit 6)"
    );
    assert!(text(&out).contains("is locked"), "{}", text(&out));

    let fresh = mesh.dir.path().join("data-restored");
    let out = store_cmd(&[
        "restore",
        "--data-dir",
        fresh.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let (_restored, url) = mesh.spawn_server("127.0.0.1:0", "restored", &[]);
    let client = Client::connect(&url, &TlsFiles::from_dir(&mesh.certs(), "admin-ops"))
        .await
        .unwrap();
    assert_eq!(functions(&client).await, functions_before);
    let restored = pipelines(&client).await;
    let base: BTreeSet<String> = (0..20).map(|n| format!("base-{n}")).collect();
    assert!(base.is_subset(&restored), "{restored:?}");
    let live: BTreeSet<String> = restored.difference(&base).cloned().collect();
    assert!(
        acked_before_backup.is_subset(&live),
        "writes acknowledged before the backup are in it"
    );
    assert!(
        live.is_subset(&acked_all),
        "nothing but what was written: {:?}",
        live.difference(&acked_all).collect::<Vec<_>>()
    );
    // The snapshot is a prefix: each writer's ids are contiguous from 0.
    for w in 0..3 {
        let ns: BTreeSet<usize> = live
            .iter()
            .filter_map(|id| id.strip_prefix(&format!("live-{w}-")))
            .map(|n| n.parse().unwrap())
            .collect();
        if let Some(&max) = ns.iter().next_back() {
            assert_eq!(ns.len(), max + 1, "writer {w}: a gap in {ns:?}");
        }
    }

    // Node states: n1 registers in maintenance, n2 is refused as disabled.
    let _n1 = mesh.agent_on(&url, "n1", &[], &["--packs", "none"]);
    let _n2 = mesh.agent_on(&url, "n2", &[], &["--packs", "none"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = client.agents("g", "e").await.unwrap();
        if let Some(n1) = agents.iter().find(|a| a.agent_id == "n1" && a.online) {
            let state = n1.node_state.as_ref().unwrap();
            assert_eq!(state.state, NodeState::Maintenance as i32);
            assert_eq!(state.reason, "restored with the backup");
            assert!(
                !agents.iter().any(|a| a.agent_id == "n2"),
                "a disabled node is refused"
            );
            break;
        }
        assert!(Instant::now() < deadline, "n1 did not register: {agents:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mesh.agent_log("n2").contains("disabled") {
        assert!(
            Instant::now() < deadline,
            "n2 was not told it is disabled: {}",
            mesh.agent_log("n2")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
