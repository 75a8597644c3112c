//! Key-value checks: revisions, ranges, compare-and-put/delete, concurrent writers.

use std::sync::Arc;

use super::*;

/// put/get/delete: revisions rise, `create_revision` stays until the key is deleted,
/// `mod_revision` follows each write, deleting a missing key is a no-op.
pub async fn put_get_delete_revisions(store: Arc<dyn Store>) {
    assert_eq!(store.get("/t/a").await.unwrap(), None);
    let start = store.current_revision().await.unwrap();

    let r1 = store.put("/t/a", b"one".to_vec(), None).await.unwrap();
    assert!(r1 > start, "put revision {r1} after start {start}");
    assert_eq!(
        store.get("/t/a").await.unwrap(),
        Some(kv("/t/a", b"one", r1, r1))
    );
    assert!(store.current_revision().await.unwrap() >= r1);

    let r2 = store.put("/t/a", b"two".to_vec(), None).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(
        store.get("/t/a").await.unwrap(),
        Some(kv("/t/a", b"two", r1, r2))
    );

    let r3 = store
        .delete("/t/a")
        .await
        .unwrap()
        .expect("the key existed");
    assert!(r3 > r2);
    assert_eq!(store.get("/t/a").await.unwrap(), None);
    assert!(store.current_revision().await.unwrap() >= r3);
    assert_eq!(
        store.delete("/t/a").await.unwrap(),
        None,
        "deleting a missing key"
    );

    let r4 = store.put("/t/a", b"again".to_vec(), None).await.unwrap();
    assert!(r4 > r3);
    assert_eq!(
        store.get("/t/a").await.unwrap(),
        Some(kv("/t/a", b"again", r4, r4)),
        "a re-created key starts a new create_revision"
    );
    assert_eq!(store.get("/t/b").await.unwrap(), None);
}

/// range: keys under a plain string prefix, sorted by key, with their revisions.
pub async fn range_by_prefix_sorted(store: Arc<dyn Store>) {
    let rb = store.put("/r/b", b"b".to_vec(), None).await.unwrap();
    let ra = store.put("/r/a", b"a".to_vec(), None).await.unwrap();
    let rcx = store.put("/r/c/x", b"cx".to_vec(), None).await.unwrap();
    let rrb = store.put("/rb", b"rb".to_vec(), None).await.unwrap();
    let rq = store.put("/q", b"q".to_vec(), None).await.unwrap();

    let got = store.range("/r/").await.unwrap();
    assert_eq!(
        got.kvs,
        vec![
            kv("/r/a", b"a", ra, ra),
            kv("/r/b", b"b", rb, rb),
            kv("/r/c/x", b"cx", rcx, rcx),
        ]
    );
    assert!(
        got.revision >= rq,
        "range revision {} after the last write {rq}",
        got.revision
    );

    let keys = |kvs: Vec<KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.range("/r").await.unwrap().kvs),
        ["/r/a", "/r/b", "/r/c/x", "/rb"],
        "a prefix is a plain string prefix"
    );
    assert_eq!(keys(store.range("/r/c/x").await.unwrap().kvs), ["/r/c/x"]);
    assert_eq!(
        keys(store.range("").await.unwrap().kvs),
        ["/q", "/r/a", "/r/b", "/r/c/x", "/rb"]
    );
    let empty = store.range("/none/").await.unwrap();
    assert!(empty.kvs.is_empty());
    assert!(empty.revision >= rq);

    assert_eq!(
        store.range("/rb").await.unwrap().kvs,
        vec![kv("/rb", b"rb", rrb, rrb)]
    );

    store.delete("/r/b").await.unwrap();
    assert_eq!(
        keys(store.range("/r/").await.unwrap().kvs),
        ["/r/a", "/r/c/x"]
    );
}

/// compare_and_put with `Expect::Absent`: writes once, then conflicts with the current value.
pub async fn cas_absent(store: Arc<dyn Store>) {
    let r1 = done(
        store
            .compare_and_put("/cas/a", Expect::Absent, b"first".to_vec(), None)
            .await
            .unwrap(),
    );
    assert_eq!(
        store.get("/cas/a").await.unwrap(),
        Some(kv("/cas/a", b"first", r1, r1))
    );

    let again = store
        .compare_and_put("/cas/a", Expect::Absent, b"second".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        again,
        CasOutcome::Conflict(Some(kv("/cas/a", b"first", r1, r1)))
    );
    assert_eq!(store.get("/cas/a").await.unwrap().unwrap().value, b"first");

    store.delete("/cas/a").await.unwrap();
    let r3 = done(
        store
            .compare_and_put("/cas/a", Expect::Absent, b"third".to_vec(), None)
            .await
            .unwrap(),
    );
    assert!(r3 > r1);
}

/// compare_and_put with `Expect::ModRevision`: writes on the current revision only; a missing
/// key conflicts with `None`.
pub async fn cas_mod_revision(store: Arc<dyn Store>) {
    let r1 = store.put("/cas/m", b"v1".to_vec(), None).await.unwrap();
    let r2 = done(
        store
            .compare_and_put("/cas/m", Expect::ModRevision(r1), b"v2".to_vec(), None)
            .await
            .unwrap(),
    );
    assert!(r2 > r1);
    assert_eq!(
        store.get("/cas/m").await.unwrap(),
        Some(kv("/cas/m", b"v2", r1, r2))
    );

    let stale = store
        .compare_and_put("/cas/m", Expect::ModRevision(r1), b"v3".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        stale,
        CasOutcome::Conflict(Some(kv("/cas/m", b"v2", r1, r2)))
    );

    let missing = store
        .compare_and_put("/cas/none", Expect::ModRevision(r1), b"x".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(missing, CasOutcome::Conflict(None));
    assert_eq!(store.get("/cas/none").await.unwrap(), None);

    let exists = store
        .compare_and_put("/cas/m", Expect::Absent, b"x".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        exists,
        CasOutcome::Conflict(Some(kv("/cas/m", b"v2", r1, r2)))
    );
}

/// compare_and_delete: deletes on the current revision only.
pub async fn compare_and_delete(store: Arc<dyn Store>) {
    let r1 = store.put("/cad/a", b"v1".to_vec(), None).await.unwrap();
    let r2 = store.put("/cad/a", b"v2".to_vec(), None).await.unwrap();

    let stale = store.compare_and_delete("/cad/a", r1).await.unwrap();
    assert_eq!(
        stale,
        CasOutcome::Conflict(Some(kv("/cad/a", b"v2", r1, r2)))
    );
    assert!(store.get("/cad/a").await.unwrap().is_some());

    let r3 = done(store.compare_and_delete("/cad/a", r2).await.unwrap());
    assert!(r3 > r2);
    assert_eq!(store.get("/cad/a").await.unwrap(), None);

    let gone = store.compare_and_delete("/cad/a", r2).await.unwrap();
    assert_eq!(gone, CasOutcome::Conflict(None));
}

/// Many tasks race `compare_and_put(Absent)` on one key: exactly one wins, the others see its
/// value.
pub async fn concurrent_cas_absent_one_winner(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = store.clone();
            croupier_proto::task::spawn("concurrent_cas_absent_one_winner", async move {
                let value = format!("task-{i}").into_bytes();
                let outcome = store
                    .compare_and_put("/race/leader", Expect::Absent, value.clone(), None)
                    .await
                    .unwrap();
                (value, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for task in tasks {
        let (value, outcome) = task.await.unwrap();
        match outcome {
            CasOutcome::Done(revision) => winners.push((value, revision)),
            CasOutcome::Conflict(current) => losers.push(current.expect("the winner's key exists")),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one Absent-put wins, got {winners:?}"
    );
    let (value, revision) = winners.pop().unwrap();
    assert_eq!(losers.len(), TASKS - 1);
    for current in &losers {
        assert_eq!(current.value, value, "a loser sees the winner's value");
        assert_eq!(current.mod_revision, revision);
    }
    assert_eq!(
        store.get("/race/leader").await.unwrap().unwrap().value,
        value
    );
}

/// Many tasks increment one counter with get + `compare_and_put(ModRevision)`, retrying on
/// conflict: no increment is lost.
pub async fn concurrent_cas_counter(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 10;
    store
        .put("/race/counter", b"0".to_vec(), None)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            croupier_proto::task::spawn("concurrent_cas_counter", async move {
                let mut conflicts = 0usize;
                for _ in 0..INCREMENTS {
                    loop {
                        let current = store.get("/race/counter").await.unwrap().unwrap();
                        let n: usize = String::from_utf8(current.value).unwrap().parse().unwrap();
                        let next = (n + 1).to_string().into_bytes();
                        match store
                            .compare_and_put(
                                "/race/counter",
                                Expect::ModRevision(current.mod_revision),
                                next,
                                None,
                            )
                            .await
                            .unwrap()
                        {
                            CasOutcome::Done(_) => break,
                            CasOutcome::Conflict(_) => conflicts += 1,
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let value = store.get("/race/counter").await.unwrap().unwrap().value;
    assert_eq!(value, (TASKS * INCREMENTS).to_string().into_bytes());
}
