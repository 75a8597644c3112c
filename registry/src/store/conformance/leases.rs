//! Lease checks: expiry, keep-alive, revoke, detaching a key.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout};

use super::*;

/// A lease that is not kept alive ends after its TTL: its keys are deleted (with `Delete` watch
/// events), other keys stay, and the lease is gone.
pub async fn lease_expiry_deletes_keys(store: Arc<dyn Store>) {
    let mut watch = store.watch("/l/", 0).await.unwrap();
    let lease = store.grant_lease(LEASE_TTL).await.unwrap();
    let granted = Instant::now();
    let ra = store.put("/l/a", b"a".to_vec(), Some(lease)).await.unwrap();
    let rb = store.put("/l/b", b"b".to_vec(), Some(lease)).await.unwrap();
    let rk = store.put("/l/keep", b"k".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/l/a").await.unwrap().unwrap().lease, lease);

    assert_put(&next_event(&mut watch).await, "/l/a", b"a", ra);
    assert_put(&next_event(&mut watch).await, "/l/b", b"b", rb);
    assert_put(&next_event(&mut watch).await, "/l/keep", b"k", rk);

    let first = next_event(&mut watch).await;
    let second = next_event(&mut watch).await;
    let elapsed = granted.elapsed();
    assert!(
        elapsed >= LEASE_TTL / 2,
        "the lease ended after {elapsed:?}, well before its TTL {LEASE_TTL:?}"
    );
    let mut deleted = BTreeSet::new();
    for event in [&first, &second] {
        assert_eq!(event.kind, EventKind::Delete, "event {event:?}");
        assert!(event.kv.value.is_empty());
        assert!(
            event.revision() > rk,
            "delete at {} after the last put {rk}",
            event.revision()
        );
        deleted.insert(event.kv.key.clone());
    }
    assert!(
        first.revision() <= second.revision(),
        "events in revision order"
    );
    assert_eq!(
        deleted,
        BTreeSet::from(["/l/a".to_owned(), "/l/b".to_owned()])
    );

    assert_eq!(store.get("/l/a").await.unwrap(), None);
    assert_eq!(store.get("/l/b").await.unwrap(), None);
    assert_eq!(
        store.get("/l/keep").await.unwrap(),
        Some(kv("/l/keep", b"k", rk, rk))
    );
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    assert!(matches!(
        store.put("/l/c", b"c".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    assert_eq!(store.get("/l/c").await.unwrap(), None);
    assert_quiet(&mut watch).await;
}

/// keep_alive pushes the end of a lease out: kept alive for well past its TTL, its key stays.
pub async fn keep_alive_extends_lease(store: Arc<dyn Store>) {
    let lease = store.grant_lease(LEASE_TTL).await.unwrap();
    let r = store.put("/k/a", b"a".to_vec(), Some(lease)).await.unwrap();
    let until = Instant::now() + LEASE_TTL * 3 / 2;
    while Instant::now() < until {
        tokio::time::sleep(LEASE_TTL / 4).await;
        store.keep_alive(lease).await.unwrap();
    }
    let got = store.get("/k/a").await.unwrap();
    assert_eq!(
        got,
        Some(KeyValue {
            lease,
            ..kv("/k/a", b"a", r, r)
        }),
        "kept alive for 1.5 TTL"
    );
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get("/k/a").await.unwrap(), None);
}

/// revoke_lease deletes the lease's keys at once (with `Delete` events); the lease is gone;
/// revoking again, or an unknown lease, is fine.
pub async fn revoke_deletes_at_once(store: Arc<dyn Store>) {
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store.put("/v/a", b"a".to_vec(), Some(lease)).await.unwrap();
    done(
        store
            .compare_and_put("/v/b", Expect::Absent, b"b".to_vec(), Some(lease))
            .await
            .unwrap(),
    );
    let rk = store.put("/v/keep", b"k".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/v/b").await.unwrap().unwrap().lease, lease);

    let mut watch = store.watch("/v/", 0).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get("/v/a").await.unwrap(), None);
    assert_eq!(store.get("/v/b").await.unwrap(), None);
    assert!(store.get("/v/keep").await.unwrap().is_some());

    let mut deleted = Vec::new();
    for _ in 0..2 {
        let event = timeout(Duration::from_secs(2), next_event(&mut watch))
            .await
            .expect("delete events come at once");
        assert_eq!(event.kind, EventKind::Delete);
        assert!(event.revision() > rk);
        deleted.push(event.kv.key);
    }
    deleted.sort();
    assert_eq!(deleted, ["/v/a", "/v/b"]);
    assert_quiet(&mut watch).await;

    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    assert!(matches!(
        store.put("/v/c", b"c".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    store.revoke_lease(lease).await.unwrap();
    store.revoke_lease(lease ^ 0x5a5a_5a5a).await.unwrap();
}

/// A put without a lease detaches the key from its old lease: ending that lease leaves it.
pub async fn put_without_lease_detaches(store: Arc<dyn Store>) {
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let r1 = store
        .put("/d/a", b"leased".to_vec(), Some(lease))
        .await
        .unwrap();
    let r2 = store.put("/d/a", b"free".to_vec(), None).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(
        store.get("/d/a").await.unwrap(),
        Some(kv("/d/a", b"free", r1, r2))
    );
}
