//! The `Store` conformance suite against [`EmbeddedStore`] (in memory, and through `run_all` with
//! a data dir), plus what only the embedded backend promises: contiguous revisions, persistence
//! of non-lease keys across reopen, recovery from a torn log, log compaction, leases on paused
//! time, lagged watchers that never block writers, and a clean shutdown.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use croupier_registry::store::conformance::run_all;
use croupier_registry::store::embedded::{EmbeddedOptions, EmbeddedStore};
use croupier_registry::store::{
    CasOutcome, EventKind, Expect, Store, StoreError, WatchEvent, WatchStream,
};
use futures::StreamExt;

mod conformance {
    use super::*;

    croupier_registry::store_conformance_tests!(|| async {
        Arc::new(EmbeddedStore::in_memory()) as Arc<dyn Store>
    });
}

/// The whole suite once more, on stores persisting to a fresh data dir each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_data_dir() {
    let dirs = Arc::new(Mutex::new(Vec::new()));
    run_all(|| {
        let dirs = dirs.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            dirs.lock().unwrap().push(dir);
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
}

use croupier_registry::store::conformance::kv;

/// The next item of a watch, failing on a timeout or the end of the stream.
async fn next_item(watch: &mut WatchStream) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a watch item within 5s")
        .expect("the watch goes on")
}

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    next_item(watch).await.expect("a watch event")
}

fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("store.log")).unwrap()
}

fn append_to_log(dir: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("store.log"))
        .unwrap();
    file.write_all(bytes).unwrap();
}

#[tokio::test]
async fn revisions_are_contiguous_and_a_lease_end_takes_one_per_key() {
    let store = EmbeddedStore::in_memory();
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.put("/a", b"1".to_vec(), None).await.unwrap(), 1);
    assert_eq!(store.put("/b", b"2".to_vec(), None).await.unwrap(), 2);
    assert_eq!(store.delete("/a").await.unwrap(), Some(3));
    assert_eq!(store.delete("/a").await.unwrap(), None);
    assert_eq!(
        store
            .compare_and_put("/b", Expect::Absent, b"x".to_vec(), None)
            .await
            .unwrap(),
        CasOutcome::Conflict(Some(kv("/b", b"2", 2, 2)))
    );
    assert_eq!(
        store.current_revision().await.unwrap(),
        3,
        "no-ops and conflicts take no revision"
    );

    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        store.put("/l/b", b"b".to_vec(), Some(lease)).await.unwrap(),
        4
    );
    assert_eq!(
        store.put("/l/a", b"a".to_vec(), Some(lease)).await.unwrap(),
        5
    );
    assert_eq!(
        store.put("/l/c", b"c".to_vec(), Some(lease)).await.unwrap(),
        6
    );
    let mut watch = store.watch("/l/", 0).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    for (key, revision) in [("/l/a", 7), ("/l/b", 8), ("/l/c", 9)] {
        let event = next_event(&mut watch).await;
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv.key, key);
        assert_eq!(event.revision(), revision);
        assert_eq!(event.prev.as_ref().map(|p| p.lease), Some(lease));
    }
    assert_eq!(store.current_revision().await.unwrap(), 9);
}

#[tokio::test]
async fn persistence_keeps_non_lease_keys_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.data_dir().as_deref(), Some(dir.path()));
        store.put("/a", b"v1".to_vec(), None).await.unwrap(); // 1
        store.put("/a", b"v2".to_vec(), None).await.unwrap(); // 2
        store
            .put("/b", vec![0, 159, 146, 150, 255], None)
            .await
            .unwrap(); // 3
        store.put("/gone", b"x".to_vec(), None).await.unwrap(); // 4
        store.delete("/gone").await.unwrap(); // 5
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        store
            .put("/leased", b"l".to_vec(), Some(lease))
            .await
            .unwrap(); // 6
        store.put("/was-free", b"f".to_vec(), None).await.unwrap(); // 7
        store
            .put("/was-free", b"now leased".to_vec(), Some(lease))
            .await
            .unwrap(); // 8
        store.put("/c", b"c".to_vec(), None).await.unwrap(); // 9
        store
            .put("/leased2", b"l".to_vec(), Some(lease))
            .await
            .unwrap(); // 10
        store.current_revision().await.unwrap()
    };
    assert_eq!(last, 10);

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("/a").await.unwrap(), Some(kv("/a", b"v2", 1, 2)));
    assert_eq!(
        store.get("/b").await.unwrap(),
        Some(kv("/b", &[0, 159, 146, 150, 255], 3, 3))
    );
    assert_eq!(store.get("/gone").await.unwrap(), None);
    assert_eq!(
        store.get("/leased").await.unwrap(),
        None,
        "lease keys are not persisted"
    );
    assert_eq!(store.get("/leased2").await.unwrap(), None);
    assert_eq!(
        store.get("/was-free").await.unwrap(),
        None,
        "a key that moved onto a lease does not come back"
    );
    let all: Vec<_> = store
        .range("")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(all, ["/a", "/b", "/c"]);
    assert_eq!(
        store.current_revision().await.unwrap(),
        last,
        "a clean close records the revision, lease writes included"
    );
    assert_eq!(
        store.put("/d", b"d".to_vec(), None).await.unwrap(),
        last + 1
    );

    match store.watch("", 1).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (1, last + 1));
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("history from before a restart cannot be replayed"),
    }
    let mut watch = store.watch("", last + 1).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await.kv,
        kv("/d", b"d", last + 1, last + 1)
    );
}

/// A copy of the log taken while the store is open is what a crash leaves behind: the revision
/// continues from the last persisted write.
#[tokio::test]
async fn after_a_crash_revisions_continue_above_the_last_persisted_one() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.put("/a", b"1".to_vec(), None).await.unwrap(); // 1
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store.put("/b", b"2".to_vec(), None).await.unwrap(); // 2
    store.put("/l", b"l".to_vec(), Some(lease)).await.unwrap(); // 3
    std::fs::copy(
        dir.path().join("store.log"),
        crashed.path().join("store.log"),
    )
    .unwrap();
    drop(store);

    let store = EmbeddedStore::open(crashed.path()).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 2);
    assert_eq!(store.get("/b").await.unwrap(), Some(kv("/b", b"2", 2, 2)));
    assert_eq!(store.get("/l").await.unwrap(), None);
    assert_eq!(store.put("/c", b"3".to_vec(), None).await.unwrap(), 3);
}

#[tokio::test]
async fn a_data_dir_is_opened_once_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.put("/a", b"1".to_vec(), None).await.unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("is locked"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );

    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn a_closed_store_still_held_unlocks_its_dir_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    store.put("/a", b"1".to_vec(), None).await.unwrap();
    let held = store.clone();
    store.close().await;
    let err = held.put("/b", b"2".to_vec(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("closed"), "{err}");
    assert_eq!(held.get("/a").await.unwrap().unwrap().value, b"1");
    // Another process (here: another open) gets the dir while the old value lives.
    let again = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(again.get("/a").await.unwrap().unwrap().value, b"1");
    assert_eq!(again.get("/b").await.unwrap(), None);
}

#[tokio::test]
async fn a_torn_last_line_is_ignored_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("/a", b"1".to_vec(), None).await.unwrap();
        store.put("/b", b"2".to_vec(), None).await.unwrap();
        store.put("/torn", b"3".to_vec(), None).await.unwrap();
    }
    // A crash in the middle of writing the last record.
    let log = dir.path().join("store.log");
    let full = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(full - 10)
        .unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("/a").await.unwrap(), Some(kv("/a", b"1", 1, 1)));
    assert_eq!(store.get("/b").await.unwrap(), Some(kv("/b", b"2", 2, 2)));
    assert_eq!(store.get("/torn").await.unwrap(), None);
    let torn = store
        .open_report()
        .torn_tail
        .clone()
        .expect("the drop is reported");
    assert_eq!(torn.keys, ["/torn"]);
    assert_eq!(torn.seq, Some(4));
    assert_eq!(torn.revision, None, "its mod_revision was cut");
    assert_eq!(torn.offset + torn.bytes, full - 10);
    assert!(
        !log_text(dir.path()).contains("torn"),
        "the torn tail is cut off"
    );
    assert_eq!(store.put("/c", b"3".to_vec(), None).await.unwrap(), 3);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.open_report().torn_tail, None);
    let keys: Vec<_> = store
        .range("/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/a", "/b", "/c"]);
}

#[tokio::test]
async fn an_unreadable_line_before_good_ones_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedStore::open(dir.path()).unwrap());
    append_to_log(dir.path(), b"not json\n");
    append_to_log(
        dir.path(),
        br#"{"op":"put","key":"/a","value":"MQ==","create_revision":1,"mod_revision":1}"#,
    );
    append_to_log(dir.path(), b"\n");
    let err = EmbeddedStore::open(dir.path()).unwrap_err();
    match &err {
        StoreError::Corrupt(c) => {
            assert_eq!(
                (c.line, c.offset),
                (2, log_text(dir.path()).find("not").unwrap() as u64)
            );
            assert!(c.to_string().contains("store.log line 2"), "{c}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_log_from_another_format_version_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = b"{\"op\":\"header\",\"format\":\"croupier-embedded-store\",\"version\":2}\n";
    std::fs::write(dir.path().join("store.log"), foreign).unwrap();
    match EmbeddedStore::open(dir.path()).unwrap_err() {
        StoreError::Corrupt(c) => assert!(c.reason.contains("version 2"), "{c}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(dir.path().join("store.log")).unwrap(),
        foreign
    );
    // A checksummed header of a later version.
    let body = "1 {\"op\":\"header\",\"format\":\"croupier-embedded-store\",\"version\":3}";
    let later = format!("{:08x} {body}\n", crc32(body.as_bytes()));
    std::fs::write(dir.path().join("store.log"), &later).unwrap();
    match EmbeddedStore::open(dir.path()).unwrap_err() {
        StoreError::Corrupt(c) => assert!(c.reason.contains("version 3"), "{c}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("store.log")).unwrap(),
        later
    );
}

/// CRC-32 (IEEE), bit by bit: the checksum of the log's lines, computed independently.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn log_compaction_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions::default().with_log_compaction_min_records(20);
    let mut expected = Vec::new();
    {
        let store = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        for round in 0..100 {
            for k in 0..5 {
                store
                    .put(&format!("/k{k}"), format!("{round}").into_bytes(), None)
                    .await
                    .unwrap();
            }
            store
                .put("/leased", b"l".to_vec(), Some(lease))
                .await
                .unwrap();
            if round % 10 == 0 {
                store.put("/tmp", b"t".to_vec(), None).await.unwrap();
                store.delete("/tmp").await.unwrap();
            }
            let lines = log_text(dir.path()).lines().count();
            assert!(
                lines <= 30,
                "the log is compacted: {lines} lines in round {round}"
            );
        }
        for k in 0..5 {
            expected.push(store.get(&format!("/k{k}")).await.unwrap().unwrap());
        }
        assert_eq!(store.current_revision().await.unwrap(), 620);
    }
    assert!(!dir.path().join("store.log.tmp").exists());
    let store = EmbeddedStore::open_with(dir.path(), opts).unwrap();
    let got = store.range("/k").await.unwrap().kvs;
    assert_eq!(got, expected);
    assert_eq!(got[0].value, b"99");
    assert_eq!(got[0].create_revision, 1);
    assert_eq!(store.get("/tmp").await.unwrap(), None);
    assert_eq!(store.get("/leased").await.unwrap(), None);
    assert_eq!(store.current_revision().await.unwrap(), 620);
}

#[tokio::test]
async fn fsync_mode_persists_too() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions::default()
        .with_fsync(true)
        .with_log_compaction_min_records(4);
    {
        let store = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
        for i in 0..20 {
            store.put("/a", vec![i], None).await.unwrap();
        }
    }
    let store = EmbeddedStore::open_with(dir.path(), opts).unwrap();
    assert_eq!(store.get("/a").await.unwrap(), Some(kv("/a", &[19], 1, 20)));
}

#[tokio::test(start_paused = true)]
async fn leases_expire_on_tokio_time() {
    let store = EmbeddedStore::in_memory();
    let mut watch = store.watch("/", 0).await.unwrap();
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let r = store.put("/a", b"a".to_vec(), Some(lease)).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), r);

    tokio::time::advance(Duration::from_secs(9)).await;
    store.keep_alive(lease).await.unwrap();
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(
        store.get("/a").await.unwrap().is_some(),
        "kept alive at 9s, checked at 18s"
    );

    tokio::time::advance(Duration::from_secs(1) + Duration::from_millis(1)).await;
    // The lease task, not a read, deletes the key and tells the watch.
    let event = next_event(&mut watch).await;
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.key, "/a");
    assert_eq!(event.revision(), r + 1);
    assert_eq!(store.get("/a").await.unwrap(), None);
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
}

/// Every operation reaps due leases first, so a key is never read after its lease ran out, even
/// before the lease task gets to run.
#[tokio::test]
async fn a_read_after_the_deadline_never_sees_an_expired_key() {
    let store = EmbeddedStore::in_memory();
    let mut watch = store.watch("/", 0).await.unwrap();
    let lease = store.grant_lease(Duration::from_millis(50)).await.unwrap();
    let r = store.put("/a", b"a".to_vec(), Some(lease)).await.unwrap();
    // Blocks the runtime's only thread: the lease task cannot run meanwhile.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(store.range("/").await.unwrap().kvs, Vec::new());
    assert_eq!(store.get("/a").await.unwrap(), None);
    assert_eq!(next_event(&mut watch).await.revision(), r);
    let delete = next_event(&mut watch).await;
    assert_eq!((delete.kind, delete.revision()), (EventKind::Delete, r + 1));
}

#[tokio::test]
async fn a_lagging_watcher_is_dropped_without_blocking_writers() {
    const WRITES: u32 = 100;
    let store = EmbeddedStore::in_memory_with(EmbeddedOptions::default().with_watch_queue(8));
    let mut slow = store.watch("/", 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        for i in 0..WRITES {
            store
                .put("/k", i.to_string().into_bytes(), None)
                .await
                .unwrap();
        }
    })
    .await
    .expect("writers never wait for a watcher");
    assert_eq!(store.watcher_count(), 0, "the lagging watcher was dropped");

    for i in 0..8 {
        let event = next_event(&mut slow).await;
        assert_eq!(
            event.kv.value,
            i.to_string().into_bytes(),
            "queued events come first"
        );
    }
    assert!(matches!(
        next_item(&mut slow).await,
        Err(StoreError::Lagged)
    ));
    assert!(slow.next().await.is_none(), "the stream ends after Lagged");
}

#[tokio::test]
async fn a_lagging_watcher_does_not_affect_others() {
    let store = EmbeddedStore::in_memory_with(EmbeddedOptions::default().with_watch_queue(8));
    let mut slow = store.watch("/", 0).await.unwrap();
    let mut fast = store.watch("/", 0).await.unwrap();
    for i in 0..40u32 {
        store
            .put("/k", i.to_string().into_bytes(), None)
            .await
            .unwrap();
        let event = next_event(&mut fast).await;
        assert_eq!(event.kv.value, i.to_string().into_bytes());
    }
    assert_eq!(store.watcher_count(), 1);
    let mut seen = 0;
    while let Some(item) = slow.next().await {
        match item {
            Ok(_) => seen += 1,
            Err(StoreError::Lagged) => break,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(seen, 8);
}

#[tokio::test]
async fn dropped_watchers_are_cleaned_up() {
    let store = EmbeddedStore::in_memory();
    let a = store.watch("/a/", 0).await.unwrap();
    let b = store.watch("/b/", 0).await.unwrap();
    assert_eq!(store.watcher_count(), 2);
    drop(a);
    assert_eq!(store.watcher_count(), 1);
    drop(b);
    assert_eq!(store.watcher_count(), 0);
    store.put("/a/x", b"x".to_vec(), None).await.unwrap();
}

#[tokio::test]
async fn history_is_bounded() {
    let store = EmbeddedStore::in_memory_with(EmbeddedOptions::default().with_history_limit(10));
    for i in 0..20u8 {
        store.put("/k", vec![i], None).await.unwrap();
    }
    match store.watch("/", 10).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (10, 11));
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("revision 10 fell out of the history"),
    }
    let mut watch = store.watch("/", 11).await.unwrap();
    for revision in 11..=20 {
        assert_eq!(next_event(&mut watch).await.revision(), revision);
    }
    // A watch from the future waits for that revision.
    let mut future = store.watch("/", 22).await.unwrap();
    store.put("/k", vec![21], None).await.unwrap();
    store.put("/k", vec![22], None).await.unwrap();
    assert_eq!(next_event(&mut future).await.revision(), 22);
    assert_eq!(next_event(&mut watch).await.revision(), 21);
}

#[tokio::test]
async fn compact_beyond_the_current_revision_keeps_live_watches_working() {
    let store = EmbeddedStore::in_memory();
    store.put("/k", b"1".to_vec(), None).await.unwrap();
    store.compact(1_000).await.unwrap();
    assert!(matches!(
        store.watch("/", 1).await.err(),
        Some(StoreError::Compacted {
            requested: 1,
            oldest: 2
        })
    ));
    let mut watch = store.watch("/", 2).await.unwrap();
    store.put("/k", b"2".to_vec(), None).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), 2);
}

#[tokio::test]
async fn dropping_the_store_ends_watches_and_the_lease_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let store = EmbeddedStore::in_memory();
    let mut watch = store.watch("/", 0).await.unwrap();
    store.grant_lease(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the lease task runs");
    store.put("/k", b"v".to_vec(), None).await.unwrap();
    drop(store);

    assert_eq!(
        next_event(&mut watch).await.kv.key,
        "/k",
        "queued events are still delivered"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap();
    assert!(end.is_none(), "then the stream ends: {end:?}");
    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.num_alive_tasks() > before {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the lease task ends with the store");
}
