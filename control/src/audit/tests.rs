use super::chain::{Head, verify};
use super::*;
use serde_json::json;

#[test]
fn masks_sensitive_fields_at_any_depth() {
    let p =
        json!({"player": "p1", "token": "secret", "auth": {"token": "s2"}, "l": [{"token": 1}]});
    assert_eq!(
        mask(&p, &["token".to_string()]),
        json!({"player": "p1", "token": "***", "auth": {"token": "***"}, "l": [{"token": "***"}]})
    );
}

#[test]
fn a_summary_holds_a_digest_and_a_bounded_excerpt() {
    let p = json!({"blob": "x".repeat(10_000), "password": "hunter2"});
    let (s, cut) = payload_summary(&p, &["password".into()], 100);
    assert!(cut);
    assert_eq!(s["truncated"], true);
    assert!(s["excerpt"].as_str().unwrap().len() <= 100);
    assert_eq!(s["sha256"].as_str().unwrap().len(), 64);
    assert!(s["bytes"].as_u64().unwrap() > 10_000);
    let (s, cut) = payload_summary(&json!({"password": "hunter2"}), &["password".into()], 100);
    assert!(!cut);
    assert!(!s["excerpt"].as_str().unwrap().contains("hunter2"), "{s}");
}

async fn read_until(path: &Path, want: impl Fn(&str) -> bool) -> String {
    for _ in 0..300 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if want(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never matched", path.display());
}

fn record(n: usize) -> AuditRecord {
    AuditRecord::new(
        "spiffe://croupier/admin/ops",
        "set_node_state",
        format!("a{n}"),
    )
    .details(json!({"state": "maintenance"}))
}

async fn write_records(path: &Path, n: usize) {
    let before = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count();
    let log = AuditLog::to_file(path).await.unwrap();
    for i in 0..n {
        log.record(record(i)).await;
    }
    read_until(path, |t| t.lines().count() >= before + n).await;
}

#[tokio::test]
async fn writes_sealed_chained_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_records(&path, 3).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["action"], "set_node_state");
    assert_eq!(lines[0]["details"]["state"], "maintenance");
    assert_eq!(lines[0]["prev"], chain::GENESIS);
    assert_eq!(lines[1]["prev"], lines[0]["hash"]);
    assert_eq!(lines[2]["seq"], 3);
    let v = verify(std::slice::from_ref(&path), None).unwrap();
    assert_eq!((v.records, v.first_seq, v.head.seq), (3, 1, 3));
    // A restarted server carries the chain on.
    write_records(&path, 5).await;
    assert_eq!(verify(&[path], None).unwrap().head.seq, 8);
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A name, a change to the lines, and what verify must say.
type Case = (
    &'static str,
    Box<dyn FnOnce(&mut Vec<String>)>,
    &'static str,
);

#[tokio::test]
async fn verify_names_the_first_modified_removed_or_reordered_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_records(&path, 6).await;
    let good = std::fs::read_to_string(&path).unwrap();
    let head = verify(std::slice::from_ref(&path), None).unwrap().head;
    let cases: [Case; 4] = [
        (
            "modified",
            Box::new(|l| l[2] = l[2].replace("\"a2\"", "\"a9\"")),
            ":3: record seq 3 was modified",
        ),
        (
            "removed",
            Box::new(|l| drop(l.remove(3))),
            ":4: record seq 5 does not follow record seq 3",
        ),
        (
            "reordered",
            Box::new(|l| l.swap(1, 2)),
            ":2: record seq 3 does not follow record seq 1",
        ),
        (
            "resealed",
            Box::new(|l| {
                // Change a record and recompute its own hash: the next record still finds it.
                let body = l[1]
                    .rsplit_once(",\"hash\"")
                    .unwrap()
                    .0
                    .replace("\"a1\"", "\"a7\"")
                    + "}";
                l[1] = chain::seal(&body).0;
            }),
            ":3: record seq 3 does not follow record seq 2",
        ),
    ];
    for (what, change, want) in cases {
        std::fs::write(&path, &good).unwrap();
        rewrite(&path, change);
        let err = verify(std::slice::from_ref(&path), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
    // A cut tail verifies on its own, but not against the checkpointed head.
    std::fs::write(&path, &good).unwrap();
    rewrite(&path, |l| l.truncate(4));
    verify(std::slice::from_ref(&path), None).unwrap();
    let err = verify(std::slice::from_ref(&path), Some(&head))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ends at record seq 4 but the server checkpointed seq 6"),
        "{err}"
    );
    let forged = Head {
        seq: 2,
        hash: "ab".repeat(32),
    };
    let err = verify(&[path], Some(&forged)).unwrap_err().to_string();
    assert!(err.contains("not the one the server checkpointed"), "{err}");
}

#[tokio::test]
async fn rotates_by_size_keeps_the_newest_files_and_the_chain_runs_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let opts = AuditOptions {
        max_file_bytes: 4096,
        keep_files: 2,
        ..Default::default()
    };
    let log = AuditLog::to_file_with(&path, opts, None).await.unwrap();
    for n in 0..200 {
        log.record(record(n)).await;
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let rotated = dir.path().join("audit.log.2");
    read_until(&rotated, |t| !t.is_empty()).await;
    assert!(!dir.path().join("audit.log.3").exists());
    for f in ["audit.log.1", "audit.log.2"] {
        let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
        assert!(len < 4096 + 64 * 1024, "{f}: {len}");
        verify(&[dir.path().join(f)], None).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let files = chain::log_files(&path);
    assert_eq!(files.last().unwrap(), &path);
    assert_eq!(files.len(), 3);
    let v = verify(&files, None).unwrap();
    assert!(v.first_seq > 1, "the oldest files were rotated away");
}

#[tokio::test]
async fn a_burst_larger_than_the_queue_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::to_file(&path).await.unwrap();
    let n = QUEUE * 3;
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            croupier_proto::task::spawn("audit-burst", async move {
                for i in 0..n / 4 {
                    log.record(record(t * n + i)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    read_until(&path, |t| t.lines().count() >= n).await;
    assert_eq!(verify(&[path], None).unwrap().records, n as u64);
    assert_eq!(log.counts().0, 0);
}

#[tokio::test]
async fn a_log_that_cannot_be_written_refuses_audited_actions() {
    if !Path::new("/dev/full").exists() {
        panic!("this test needs /dev/full");
    }
    let log = AuditLog::to_file(Path::new("/dev/full")).await.unwrap();
    assert!(log.admit().is_ok());
    log.record(record(1)).await;
    let mut refused = None;
    for _ in 0..100 {
        if let Err(e) = log.admit() {
            refused = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = refused.expect("admit never refused");
    assert!(
        why.contains("cannot be written") && why.contains("audit.fail_closed"),
        "{why}"
    );
    let open = AuditLog {
        opts: AuditOptions {
            fail_closed: false,
            ..AuditOptions::default()
        },
        ..log.clone()
    };
    assert!(open.admit().is_ok());
}

#[tokio::test]
async fn the_head_is_checkpointed_and_a_cut_tail_is_recorded_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let store: Arc<dyn Store> = Arc::new(
        croupier_registry::store::embedded::EmbeddedStore::open(&dir.path().join("store")).unwrap(),
    );
    let cp = Checkpoint {
        store: store.clone(),
        key: "/croupier-audit/heads/s1".into(),
    };
    {
        let log = AuditLog::to_file_with(&path, AuditOptions::default(), Some(cp.clone()))
            .await
            .unwrap();
        for i in 0..5 {
            log.record(record(i)).await;
        }
        read_until(&path, |t| t.lines().count() >= 5).await;
    }
    let mut stored = None;
    for _ in 0..100 {
        if let Some(kv) = store.get(&cp.key).await.unwrap() {
            let h: Head = serde_json::from_slice(&kv.value).unwrap();
            if h.seq == 5 {
                stored = Some(h);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = stored.expect("head 5 never checkpointed");
    rewrite(&path, |l| l.truncate(3));
    let _log = AuditLog::to_file_with(&path, AuditOptions::default(), Some(cp))
        .await
        .unwrap();
    let text = read_until(&path, |t| t.contains("audit_tail_missing")).await;
    assert!(text.contains(&format!("\"seq\":{}", stored.seq)), "{text}");
}
