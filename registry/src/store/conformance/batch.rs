//! `write_all` checks: every op applied, never seen in part, bad batches refused.

use std::sync::Arc;
use std::time::Duration;

use super::*;

/// `write_all`: puts and deletes of one batch all happen, in order, with revisions after what
/// came before; a put detaches a key from its lease; deleting a missing key is a no-op; watchers
/// see one event per change; an empty batch changes nothing.
pub async fn write_all_applies_every_op(store: Arc<dyn Store>) {
    store.put("/w/old", b"old".to_vec(), None).await.unwrap();
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store
        .put("/w/leased", b"l".to_vec(), Some(lease))
        .await
        .unwrap();
    let mut watch = store.watch("/w/", 0).await.unwrap();
    let before = store.current_revision().await.unwrap();
    let r = store
        .write_all(vec![
            WriteOp::put("/w/a", b"a".to_vec()),
            WriteOp::put("/w/b", b"b".to_vec()),
            WriteOp::delete("/w/old"),
            WriteOp::delete("/w/missing"),
            WriteOp::put("/w/leased", b"free".to_vec()),
        ])
        .await
        .unwrap();
    assert!(r > before, "batch revision {r} after {before}");
    assert!(store.current_revision().await.unwrap() >= r);
    let a = store.get("/w/a").await.unwrap().expect("/w/a written");
    let b = store.get("/w/b").await.unwrap().expect("/w/b written");
    assert_eq!(
        (a.value.as_slice(), b.value.as_slice()),
        (&b"a"[..], &b"b"[..])
    );
    assert!(a.mod_revision > before && a.mod_revision <= r, "{a:?}");
    assert!(
        b.mod_revision >= a.mod_revision && b.mod_revision <= r,
        "{b:?}"
    );
    assert_eq!(store.get("/w/old").await.unwrap(), None);
    let leased = store.get("/w/leased").await.unwrap().unwrap();
    assert_eq!((leased.value.as_slice(), leased.lease), (&b"free"[..], 0));
    store.revoke_lease(lease).await.unwrap();
    assert!(
        store.get("/w/leased").await.unwrap().is_some(),
        "a batched put detached the key from its lease"
    );

    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = next_event(&mut watch).await;
        assert!(event.revision() <= r, "{event:?}");
        seen.push((event.kind, event.kv.key));
    }
    assert_eq!(
        seen,
        [
            (EventKind::Put, "/w/a".to_owned()),
            (EventKind::Put, "/w/b".to_owned()),
            (EventKind::Delete, "/w/old".to_owned()),
            (EventKind::Put, "/w/leased".to_owned()),
        ]
    );
    assert_quiet(&mut watch).await;

    let now = store.current_revision().await.unwrap();
    assert_eq!(store.write_all(Vec::new()).await.unwrap(), now);
    assert_eq!(store.current_revision().await.unwrap(), now);
}

/// `write_all` is atomic for readers: a reader racing many batches that each write the same
/// number under two keys never sees the keys disagree.
pub async fn write_all_is_never_seen_in_part(store: Arc<dyn Store>) {
    const BATCHES: usize = 60;
    let writer = {
        let store = store.clone();
        croupier_proto::task::spawn("write_all_is_never_seen_in_part", async move {
            for n in 0..BATCHES {
                let value = n.to_string().into_bytes();
                store
                    .write_all(vec![
                        WriteOp::put("/pair/x", value.clone()),
                        WriteOp::put("/pair/y", value),
                    ])
                    .await
                    .unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let got = store.range("/pair/").await.unwrap().kvs;
        match got.as_slice() {
            [] => {}
            [x, y] => assert_eq!(x.value, y.value, "half a batch seen: {x:?} {y:?}"),
            other => panic!("half a batch seen: {other:?}"),
        }
        reads += 1;
    }
    writer.await.unwrap();
    let got = store.range("/pair/").await.unwrap().kvs;
    assert_eq!(got[0].value, (BATCHES - 1).to_string().into_bytes());
    assert_eq!(got[1].value, got[0].value);
}

/// `write_all` refuses a batch that writes one key twice or holds too many ops, and writes
/// nothing of it.
pub async fn write_all_refuses_bad_batches(store: Arc<dyn Store>) {
    let before = store.current_revision().await.unwrap();
    let err = store
        .write_all(vec![
            WriteOp::put("/bad/a", b"1".to_vec()),
            WriteOp::delete("/bad/a"),
        ])
        .await
        .unwrap_err();
    match &err {
        StoreError::InvalidBatch(message) => assert!(message.contains("/bad/a"), "{message}"),
        other => panic!("expected InvalidBatch, got {other:?}"),
    }
    let many = (0..=MAX_BATCH_OPS)
        .map(|i| WriteOp::put(format!("/bad/k{i}"), b"v".to_vec()))
        .collect();
    assert!(matches!(
        store.write_all(many).await,
        Err(StoreError::InvalidBatch(_))
    ));
    assert_eq!(store.range("/bad/").await.unwrap().kvs, Vec::new());
    assert_eq!(store.current_revision().await.unwrap(), before);
}
