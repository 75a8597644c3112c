//! The embedded store never loses data silently: damage anywhere but a torn last write makes the
//! open fail with `Corrupt` (naming the file, line and byte offset) and leaves the file as it
//! was; a torn last write is dropped and reported; version 1 logs still open; a `write_all`
//! batch is all or nothing across a crash; `check`, `repair`, `backup` and `restore` do what the
//! CLI promises.

use std::path::Path;
use std::time::Duration;

use croupier_registry::store::embedded::{
    self, EmbeddedOptions, EmbeddedStore, RepairMode, TornTail,
};
use croupier_registry::store::{Corruption, KeyValue, Store, StoreError, WriteOp};

fn kv(key: &str, value: &[u8], create: i64, modified: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
        lease: 0,
    }
}

fn log_path(dir: &Path) -> std::path::PathBuf {
    dir.join("store.log")
}

fn read_log(dir: &Path) -> Vec<u8> {
    std::fs::read(log_path(dir)).unwrap()
}

/// A closed store with a few dozen persisted keys, overwrites, deletes and lease keys.
async fn populated(dir: &Path) -> Vec<KeyValue> {
    let store = EmbeddedStore::open(dir).unwrap();
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    for i in 0..40 {
        store
            .put(
                &format!("/croupier/functions/g/e/f{i:02}"),
                format!("{{\"id\":\"f{i}\",\"description\":\"function number {i}\"}}").into_bytes(),
                None,
            )
            .await
            .unwrap();
        if i % 5 == 0 {
            store
                .put(
                    &format!("/croupier/agents/g/e/a{i}"),
                    b"a".to_vec(),
                    Some(lease),
                )
                .await
                .unwrap();
        }
        if i % 7 == 0 {
            store
                .put(
                    &format!("/croupier/nodes/n{i}"),
                    b"maintenance".to_vec(),
                    None,
                )
                .await
                .unwrap();
        }
    }
    store.delete("/croupier/functions/g/e/f03").await.unwrap();
    store
        .write_all(vec![
            WriteOp::put(
                "/croupier-events/jobs/j1/00000000000000000001",
                b"ev".to_vec(),
            ),
            WriteOp::put("/croupier/jobs/j1", b"{\"status\":\"running\"}".to_vec()),
        ])
        .await
        .unwrap();
    let mut persisted = store.range("/croupier").await.unwrap().kvs;
    persisted.retain(|kv| kv.lease == 0);
    persisted
}

fn expect_corrupt(dir: &Path) -> Corruption {
    let before = read_log(dir);
    let err = EmbeddedStore::open(dir).expect_err("a damaged log must not open");
    let corruption = match err {
        StoreError::Corrupt(c) => *c,
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert_eq!(corruption.path, log_path(dir));
    let message = StoreError::Corrupt(Box::new(corruption.clone())).to_string();
    assert!(
        message.contains("store.log line")
            && message.contains(&format!("(byte {})", corruption.offset)),
        "{message}"
    );
    assert_eq!(read_log(dir), before, "the damaged log is left untouched");
    assert!(
        !dir.join("store.log.tmp").exists() && std::fs::read_dir(dir).unwrap().count() == 2,
        "nothing else was written"
    );
    let report = embedded::check(dir).unwrap();
    assert_eq!(report.corruption.as_ref(), Some(&corruption));
    corruption
}

/// Offsets of the starts of the log's lines.
fn line_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(
        bytes
            .iter()
            .enumerate()
            .filter(|(i, b)| **b == b'\n' && i + 1 < bytes.len())
            .map(|(i, _)| i + 1),
    );
    starts
}

#[tokio::test]
async fn zeros_over_the_second_half_are_corruption_not_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let mut bytes = read_log(dir.path());
    let half = bytes.len() / 2;
    bytes[half..].fill(0);
    std::fs::write(log_path(dir.path()), &bytes).unwrap();
    let c = expect_corrupt(dir.path());
    let start = line_starts(&bytes)
        .into_iter()
        .rfind(|&s| s <= half)
        .unwrap();
    assert_eq!(c.offset, start as u64, "{c}");
    assert!(c.reason.contains("not a write cut short"), "{c}");

    // Zeros from a line boundary on, too.
    let mut bytes = read_log(dir.path());
    bytes[start..].fill(0);
    std::fs::write(log_path(dir.path()), &bytes).unwrap();
    assert_eq!(expect_corrupt(dir.path()).offset, start as u64);
}

#[tokio::test]
async fn random_bytes_in_the_middle_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let original = read_log(dir.path());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20 {
        let mut bytes = original.clone();
        let at = bytes.len() / 3 + round * 37;
        for b in &mut bytes[at..at + 64] {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        std::fs::write(log_path(dir.path()), &bytes).unwrap();
        let c = expect_corrupt(dir.path());
        assert!(c.offset as usize <= at, "round {round}: {c}");
    }
}

#[tokio::test]
async fn a_flipped_character_in_any_line_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let original = read_log(dir.path());
    let starts = line_starts(&original);
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(original.len(), |&s| s) - 1;
        for at in [start, (start + end) / 2, end - 1] {
            let mut bytes = original.clone();
            bytes[at] ^= 0x02;
            std::fs::write(log_path(dir.path()), &bytes).unwrap();
            let c = expect_corrupt(dir.path());
            assert_eq!(
                (c.line, c.offset),
                (n + 1, start as u64),
                "byte {at} flipped: {c}"
            );
        }
    }
}

#[tokio::test]
async fn a_deleted_line_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let original = read_log(dir.path());
    let starts = line_starts(&original);
    // Every line but the last (a missing last record is one that was never written).
    for n in 0..starts.len() - 1 {
        let mut bytes = original[..starts[n]].to_vec();
        bytes.extend_from_slice(&original[starts[n + 1]..]);
        std::fs::write(log_path(dir.path()), &bytes).unwrap();
        let c = expect_corrupt(dir.path());
        assert_eq!(c.offset, starts[n] as u64, "line {} deleted: {c}", n + 1);
        if n > 0 {
            assert!(c.reason.contains("missing"), "{c}");
        }
    }
}

#[tokio::test]
async fn a_reordered_pair_of_lines_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let original = read_log(dir.path());
    let starts = line_starts(&original);
    for n in 0..starts.len() - 1 {
        let end = starts.get(n + 2).map_or(original.len(), |&s| s);
        let mut bytes = original[..starts[n]].to_vec();
        bytes.extend_from_slice(&original[starts[n + 1]..end]);
        bytes.extend_from_slice(&original[starts[n]..starts[n + 1]]);
        bytes.extend_from_slice(&original[end..]);
        std::fs::write(log_path(dir.path()), &bytes).unwrap();
        let c = expect_corrupt(dir.path());
        assert_eq!(
            c.offset,
            starts[n] as u64,
            "lines {} and {} swapped: {c}",
            n + 1,
            n + 2
        );
    }
}

#[tokio::test]
async fn a_torn_last_line_opens_with_the_previous_state_and_reports_the_drop() {
    let dir = tempfile::tempdir().unwrap();
    let before = populated(dir.path()).await;
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .put(
                "/croupier/pipelines/last",
                b"never acknowledged".to_vec(),
                None,
            )
            .await
            .unwrap();
    }
    let full = read_log(dir.path());
    let last = *line_starts(&full).last().unwrap();
    for cut in [last + 1, last + 9, last + 30, full.len() - 1] {
        std::fs::write(log_path(dir.path()), &full[..cut]).unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store.range("/croupier").await.unwrap().kvs,
            before,
            "cut at {cut}"
        );
        let torn: TornTail = store.open_report().torn_tail.clone().expect("reported");
        assert_eq!(
            (torn.offset, torn.bytes),
            (last as u64, (cut - last) as u64)
        );
        if cut == full.len() - 1 {
            // Everything but the newline: the whole record is readable.
            assert_eq!(torn.keys, ["/croupier/pipelines/last"]);
            assert!(torn.revision.is_some() && torn.seq.is_some(), "{torn:?}");
        }
        assert!(torn.to_string().contains("unfinished record"), "{torn}");
        drop(store);
        assert_eq!(
            read_log(dir.path()),
            full[..last],
            "cut back to the last good record"
        );
    }
}

#[tokio::test]
async fn a_torn_tail_that_says_the_wrong_record_number_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path()).await;
    let bytes = read_log(dir.path());
    let starts = line_starts(&bytes);
    // A copy of an earlier line's beginning at the end: not what the next write would be.
    let mut damaged = bytes.clone();
    damaged.extend_from_slice(&bytes[starts[3]..starts[3] + 20]);
    std::fs::write(log_path(dir.path()), &damaged).unwrap();
    let c = expect_corrupt(dir.path());
    assert!(c.reason.contains("comes next"), "{c}");
}

const V1_LOG: &str = r#"{"op":"header","format":"croupier-embedded-store","version":1}
{"op":"put","key":"/a","value":"MQ==","create_revision":1,"mod_revision":1}
{"op":"put","key":"/b","value":"Mg==","create_revision":2,"mod_revision":2}
{"op":"put","key":"/a","value":"Mw==","create_revision":1,"mod_revision":4}
{"op":"delete","key":"/b","revision":5}
{"op":"put","key":"/c","value":"NA==","create_revision":6,"mod_revision":6}
{"op":"revision","revision":9}
"#;

/// What an earlier build's compaction wrote: header, revision, then the keys in key order.
const V1_COMPACTED_LOG: &str = r#"{"op":"header","format":"croupier-embedded-store","version":1}
{"op":"revision","revision":20}
{"op":"put","key":"/a","value":"MQ==","create_revision":3,"mod_revision":17}
{"op":"put","key":"/b","value":"Mg==","create_revision":2,"mod_revision":2}
{"op":"put","key":"/c","value":"Mw==","create_revision":20,"mod_revision":20}
{"op":"put","key":"/b","value":"NA==","create_revision":2,"mod_revision":21}
"#;

#[tokio::test]
async fn version_1_logs_still_open_and_are_converted() {
    for (text, keys, revision) in [
        (V1_LOG, vec![("/a", "3", 1, 4), ("/c", "4", 6, 6)], 9),
        (
            V1_COMPACTED_LOG,
            vec![("/a", "1", 3, 17), ("/b", "4", 2, 21), ("/c", "3", 20, 20)],
            21,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(log_path(dir.path()), text).unwrap();
        assert_eq!(embedded::check(dir.path()).unwrap().format_version, Some(1));
        let expected: Vec<KeyValue> = keys
            .iter()
            .map(|(k, v, c, m)| kv(k, v.as_bytes(), *c, *m))
            .collect();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            assert_eq!(store.range("/").await.unwrap().kvs, expected);
            assert_eq!(store.current_revision().await.unwrap(), revision);
            let kept = store.open_report().converted_from_v1.clone().unwrap();
            assert_eq!(
                std::fs::read_to_string(kept).unwrap(),
                text,
                "the v1 log is kept"
            );
            assert_ne!(read_log(dir.path())[0], b'{', "the log is version 2 now");
            store.put("/d", b"5".to_vec(), None).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.open_report().converted_from_v1, None);
        assert_eq!(
            store.range("/").await.unwrap().kvs.len(),
            expected.len() + 1
        );
        assert_eq!(
            store.get("/d").await.unwrap().unwrap().mod_revision,
            revision + 1
        );
        assert_eq!(embedded::check(dir.path()).unwrap().format_version, Some(2));
    }

    // A torn last line of a version 1 log is dropped too; damage in it is refused.
    let dir = tempfile::tempdir().unwrap();
    let torn = format!("{V1_LOG}{{\"op\":\"put\",\"key\":\"/t\",\"va");
    std::fs::write(log_path(dir.path()), &torn).unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().torn_tail.as_ref().unwrap().keys, ["/t"]);
    assert_eq!(store.get("/t").await.unwrap(), None);
    drop(store);
    for damaged in [
        V1_LOG.replace("\"/b\",\"revision\":5", "\"/b\",\"revision\":3"),
        V1_LOG.replace("{\"op\":\"put\",\"key\":\"/b\"", "\0\0\0\0\0\0\0\0\0"),
        // Without the put it deletes.
        V1_LOG.replace(
            "{\"op\":\"put\",\"key\":\"/b\",\"value\":\"Mg==\",\"create_revision\":2,\"mod_revision\":2}\n",
            "",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(log_path(dir.path()), &damaged).unwrap();
        let c = expect_corrupt(dir.path());
        assert!(c.line >= 3, "{c}");
    }
}

#[tokio::test]
async fn a_write_all_batch_is_all_or_nothing_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("/jobs/old", b"old".to_vec(), None).await.unwrap(); // 1
        let r = store
            .write_all(vec![
                WriteOp::put("/events/j/1", b"chunk".to_vec()),
                WriteOp::put("/jobs/j", b"record".to_vec()),
                WriteOp::delete("/jobs/old"),
            ])
            .await
            .unwrap();
        assert_eq!(r, 4, "one revision per change, consecutive");
    }
    let full = read_log(dir.path());
    let last = *line_starts(&full).last().unwrap();
    // A crash anywhere inside the batch's record leaves none of it.
    for cut in (last + 1..full.len()).step_by(7).chain([full.len() - 1]) {
        let crashed = tempfile::tempdir().unwrap();
        std::fs::write(log_path(crashed.path()), &full[..cut]).unwrap();
        let store = EmbeddedStore::open(crashed.path()).unwrap();
        assert!(store.open_report().torn_tail.is_some(), "cut at {cut}");
        assert_eq!(
            store.get("/events/j/1").await.unwrap(),
            None,
            "cut at {cut}"
        );
        assert_eq!(store.get("/jobs/j").await.unwrap(), None, "cut at {cut}");
        assert!(
            store.get("/jobs/old").await.unwrap().is_some(),
            "cut at {cut}"
        );
        assert_eq!(store.current_revision().await.unwrap(), 1);
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        store
            .get("/events/j/1")
            .await
            .unwrap()
            .unwrap()
            .mod_revision,
        2
    );
    assert_eq!(store.get("/jobs/j").await.unwrap().unwrap().mod_revision, 3);
    assert_eq!(store.get("/jobs/old").await.unwrap(), None);
}

#[tokio::test]
async fn repair_keeps_the_prefix_or_every_readable_record_and_a_copy_of_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let before = populated(dir.path()).await;
    let original = read_log(dir.path());
    let starts = line_starts(&original);
    let damaged_line = starts.len() - 4;
    let mut bytes = original.clone();
    bytes[starts[damaged_line] + 15] ^= 0x04;
    std::fs::write(log_path(dir.path()), &bytes).unwrap();
    let check = embedded::check(dir.path()).unwrap();
    assert!(check.is_corrupt());
    assert_eq!(check.readable_after_damage, 3);
    assert_eq!(check.damaged_lines.len(), 1);
    assert_eq!(check.damaged_lines[0].line, damaged_line + 1);

    let salvage_dir = tempfile::tempdir().unwrap();
    std::fs::write(log_path(salvage_dir.path()), &bytes).unwrap();

    let report = embedded::repair(dir.path(), RepairMode::Prefix).unwrap();
    let backup = report.backup.clone().unwrap();
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        bytes,
        "the original is kept"
    );
    assert!(
        backup
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("store.log.")
    );
    assert_eq!(report.kept_records, damaged_line);
    assert_eq!(report.dropped_readable_records, 3);
    assert_eq!(report.dropped_lines.len(), 1);
    assert_eq!(
        report.dropped_bytes,
        (bytes.len() - starts[damaged_line]) as u64
    );
    assert!(!report.dropped_keys.is_empty());
    assert!(report.to_string().contains("kept the original"), "{report}");
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let kept = store.range("/croupier").await.unwrap().kvs;
    assert!(
        kept.len() < before.len()
            && kept
                .iter()
                .all(|kv| before.contains(kv) || kv.key.ends_with("f03"))
    );
    assert!(
        store.current_revision().await.unwrap()
            >= before.iter().map(|kv| kv.mod_revision).max().unwrap(),
        "revisions keep rising past what was dropped"
    );
    drop(store);
    let again = embedded::repair(dir.path(), RepairMode::Prefix).unwrap();
    assert_eq!(again.backup, None, "an intact log is left alone");

    // Salvage keeps the readable records after the damage too.
    let report = embedded::repair(salvage_dir.path(), RepairMode::Salvage).unwrap();
    assert_eq!(report.dropped_lines.len(), 1);
    assert_eq!(report.dropped_readable_records, 0);
    let store = EmbeddedStore::open(salvage_dir.path()).unwrap();
    let salvaged = store.range("/croupier").await.unwrap().kvs;
    assert!(salvaged.len() >= kept.len());
    assert!(
        store.get("/croupier/jobs/j1").await.unwrap().is_some(),
        "the last batch survives"
    );
    // Refused while a store has the dir open.
    let err = embedded::repair(salvage_dir.path(), RepairMode::Salvage).unwrap_err();
    assert!(err.to_string().contains("is locked"), "{err}");
}

#[tokio::test]
async fn backup_reads_a_running_store_and_restore_installs_it_keeping_the_previous_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(
        dir.path(),
        EmbeddedOptions::default().with_log_compaction_min_records(30),
    )
    .unwrap();
    for i in 0..50 {
        store
            .put(&format!("/k/{}", i % 10), format!("{i}").into_bytes(), None)
            .await
            .unwrap();
    }
    let expected = store.range("/").await.unwrap().kvs;
    // A half-written record at the end, as a concurrent append would look.
    std::fs::OpenOptions::new()
        .append(true)
        .open(log_path(dir.path()))
        .map(|mut f| std::io::Write::write_all(&mut f, b"0123abcd 99"))
        .unwrap()
        .unwrap();
    let file = out.path().join("nested/backup.log");
    let report = embedded::backup(dir.path(), &file).unwrap();
    assert!(report.live);
    assert_eq!(report.unfinished_bytes, 11);
    assert_eq!((report.keys, report.revision), (10, 50));
    assert!(report.to_string().contains("running store"), "{report}");

    let err = embedded::restore(dir.path(), &file).unwrap_err();
    assert!(err.to_string().contains("is locked"), "{err}");
    let err = embedded::backup(dir.path(), &log_path(dir.path())).unwrap_err();
    assert!(
        err.to_string().contains("write the backup elsewhere"),
        "{err}"
    );
    assert_eq!(store.range("/").await.unwrap().kvs, expected);
    drop(store);

    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("store");
    let restored = embedded::restore(&target, &file).unwrap();
    assert_eq!(restored.previous, None);
    let store = EmbeddedStore::open(&target).unwrap();
    assert_eq!(store.range("/").await.unwrap().kvs, expected);
    assert_eq!(store.current_revision().await.unwrap(), 50);
    store.put("/after", b"x".to_vec(), None).await.unwrap();
    drop(store);

    let restored = embedded::restore(&target, &file).unwrap();
    let previous = restored.previous.expect("the replaced log is kept");
    assert!(
        std::fs::read_to_string(previous)
            .unwrap()
            .contains("/after")
    );
    assert_eq!(
        restored.revision, 51,
        "revisions never go back in a data dir"
    );
    let store = EmbeddedStore::open(&target).unwrap();
    assert_eq!(store.get("/after").await.unwrap(), None);
    drop(store);

    // A cut or damaged backup is refused before anything is touched.
    let bytes = std::fs::read(&file).unwrap();
    let cut = out.path().join("cut.log");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let before = read_log(&target);
    let err = embedded::restore(&target, &cut).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("cut off"), "{err}");
    assert_eq!(read_log(&target), before);
}
