//! Watch checks: replay, follow, races with writers, compaction, prefixes.

use std::sync::Arc;

use futures::StreamExt;
use tokio::time::timeout;

use super::*;

/// A watch from revision 0 sees only changes made after it started, puts and deletes.
pub async fn watch_from_zero_sees_only_new(store: Arc<dyn Store>) {
    store.put("/w/old", b"old".to_vec(), None).await.unwrap();
    let mut watch = store.watch("/w/", 0).await.unwrap();
    let rn = store.put("/w/new", b"new".to_vec(), None).await.unwrap();
    let rd = store.delete("/w/old").await.unwrap().unwrap();

    let put = next_event(&mut watch).await;
    assert_put(&put, "/w/new", b"new", rn);
    assert_eq!(put.kv.create_revision, rn);
    let delete = next_event(&mut watch).await;
    assert_delete(&delete, "/w/old");
    assert_eq!(delete.revision(), rd);
    assert_quiet(&mut watch).await;
}

/// A watch from a past revision replays every change from that revision, then follows live
/// changes, with nothing repeated.
pub async fn watch_replays_then_follows(store: Arc<dyn Store>) {
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(
            store
                .put(&format!("/h/k{i}"), vec![b'0' + i], None)
                .await
                .unwrap(),
        );
    }
    let rd = store.delete("/h/k0").await.unwrap().unwrap();
    let mut watch = store.watch("/h/", revs[2]).await.unwrap();
    for (i, &revision) in (0u8..).zip(&revs).skip(2) {
        assert_put(
            &next_event(&mut watch).await,
            &format!("/h/k{i}"),
            &[b'0' + i],
            revision,
        );
    }
    let delete = next_event(&mut watch).await;
    assert_delete(&delete, "/h/k0");
    assert_eq!(delete.revision(), rd);

    let live = store.put("/h/k5", b"5".to_vec(), None).await.unwrap();
    assert_put(&next_event(&mut watch).await, "/h/k5", b"5", live);
    assert_quiet(&mut watch).await;
}

/// A watch from a past revision started while a writer is busy sees every write exactly once,
/// in order: no gap and no duplicate between replay and live events.
pub async fn watch_replay_races_writer(store: Arc<dyn Store>) {
    const WRITES: usize = 300;
    let first = store.put("/x/n", b"0".to_vec(), None).await.unwrap();
    let writer = {
        let store = store.clone();
        croupier_proto::task::spawn("watch_replay_races_writer", async move {
            for i in 1..WRITES {
                store
                    .put("/x/n", i.to_string().into_bytes(), None)
                    .await
                    .unwrap();
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Start the watch while the writer is (most likely) half-way.
    while store.get("/x/n").await.unwrap().unwrap().value.len() < 2 {
        tokio::task::yield_now().await;
    }
    let mut watch = store.watch("/x/", first).await.unwrap();
    let mut last = 0;
    for i in 0..WRITES {
        let event = next_event(&mut watch).await;
        assert_put(&event, "/x/n", i.to_string().as_bytes(), event.revision());
        assert!(
            event.revision() > last,
            "revisions rise: {} after {last}",
            event.revision()
        );
        last = event.revision();
    }
    writer.await.unwrap();
    assert_quiet(&mut watch).await;
}

/// After `compact(r)`, a watch from before `r` fails with `Compacted` naming `r` as the oldest
/// revision; a watch from `r` still replays.
pub async fn watch_after_compact_fails(store: Arc<dyn Store>) {
    let r1 = store.put("/c/a", b"1".to_vec(), None).await.unwrap();
    let _r2 = store.put("/c/b", b"2".to_vec(), None).await.unwrap();
    let r3 = store.put("/c/c", b"3".to_vec(), None).await.unwrap();
    let r4 = store.put("/c/d", b"4".to_vec(), None).await.unwrap();
    store.compact(r3).await.unwrap();

    let err = match store.watch("/c/", r1).await {
        Err(err) => err,
        // A backend may report it on the stream instead.
        Ok(mut watch) => match timeout(EVENT_TIMEOUT, watch.next()).await {
            Ok(Some(Err(err))) => err,
            other => panic!("expected Compacted from a watch before the compaction, got {other:?}"),
        },
    };
    match err {
        StoreError::Compacted { requested, oldest } => {
            assert_eq!(requested, r1);
            assert_eq!(oldest, r3);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }

    let mut watch = store.watch("/c/", r3).await.unwrap();
    assert_put(&next_event(&mut watch).await, "/c/c", b"3", r3);
    assert_put(&next_event(&mut watch).await, "/c/d", b"4", r4);
    assert_quiet(&mut watch).await;
}

/// A watch sees only keys under its prefix (a plain string prefix), in replay and live.
pub async fn watch_filters_by_prefix(store: Arc<dyn Store>) {
    let r0 = store.put("/p/a/0", b"0".to_vec(), None).await.unwrap();
    store.put("/p/b/0", b"x".to_vec(), None).await.unwrap();
    let mut live = store.watch("/p/a/", 0).await.unwrap();
    store.put("/p/ab", b"x".to_vec(), None).await.unwrap();
    store.put("/p/b/x", b"x".to_vec(), None).await.unwrap();
    let rx = store.put("/p/a/x", b"ax".to_vec(), None).await.unwrap();
    store.put("/p/a", b"x".to_vec(), None).await.unwrap();
    let ry = store.put("/p/a/y", b"ay".to_vec(), None).await.unwrap();
    store.delete("/p/b/x").await.unwrap();

    assert_put(&next_event(&mut live).await, "/p/a/x", b"ax", rx);
    assert_put(&next_event(&mut live).await, "/p/a/y", b"ay", ry);
    assert_quiet(&mut live).await;

    let mut replay = store.watch("/p/a/", r0).await.unwrap();
    assert_put(&next_event(&mut replay).await, "/p/a/0", b"0", r0);
    assert_put(&next_event(&mut replay).await, "/p/a/x", b"ax", rx);
    assert_put(&next_event(&mut replay).await, "/p/a/y", b"ay", ry);
    assert_quiet(&mut replay).await;
}
