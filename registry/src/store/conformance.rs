//! The conformance suite every [`Store`] backend must pass (feature `test-util`).
//!
//! Each check is a `pub async fn` taking a fresh, empty store as `Arc<dyn Store>` and panicking
//! with a message on failure. A backend's test file runs them all with
//! [`store_conformance_tests!`](crate::store_conformance_tests), one `#[tokio::test]` per check,
//! or with [`run_all`].
//!
//! The checks only assume what etcd guarantees, so a backend shared with other tests (etcd, with
//! a key prefix per store) passes too: revisions are compared for order, never for being
//! contiguous; lease checks use real time ([`LEASE_TTL`], etcd's smallest useful TTL) rather than
//! paused time. Caveat for shared backends: [`watch_after_compact_fails`] compacts the whole
//! backend's history up to its own writes.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{Instant, timeout};

use super::{
    CasOutcome, EventKind, Expect, KeyValue, MAX_BATCH_OPS, Revision, Store, StoreError,
    WatchEvent, WatchStream, WriteOp,
};

/// The TTL of the leases the lease checks grant.
pub const LEASE_TTL: Duration = Duration::from_secs(2);

/// How long a check waits for an event it expects (lease expiry included).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a check watches to be sure no further event comes.
pub const QUIET: Duration = Duration::from_millis(300);

/// Expands to one `#[tokio::test]` per conformance check. The argument is a closure returning a
/// future of a fresh, empty `Arc<dyn Store>`; it is called once per test.
///
/// ```ignore
/// croupier_registry::store_conformance_tests!(|| async {
///     std::sync::Arc::new(EmbeddedStore::in_memory()) as std::sync::Arc<dyn Store>
/// });
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            put_get_delete_revisions,
            range_by_prefix_sorted,
            cas_absent,
            cas_mod_revision,
            compare_and_delete,
            concurrent_cas_absent_one_winner,
            concurrent_cas_counter,
            lease_expiry_deletes_keys,
            keep_alive_extends_lease,
            revoke_deletes_at_once,
            put_without_lease_detaches,
            watch_from_zero_sees_only_new,
            watch_replays_then_follows,
            watch_replay_races_writer,
            watch_after_compact_fails,
            watch_filters_by_prefix,
            write_all_applies_every_op,
            write_all_is_never_seen_in_part,
            write_all_refuses_bad_batches,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let make = $make;
                $crate::store::conformance::$check(make().await).await;
            }
        )*
    };
}

type Check = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every check with its name, each on a fresh store from `make`.
async fn checks<F, Fut>(make: F) -> Vec<(&'static str, Check)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let mut checks: Vec<(&'static str, Check)> = Vec::new();
    macro_rules! add {
        ($($check:ident),* $(,)?) => {
            $( checks.push((stringify!($check), Box::pin($check(make().await)))); )*
        };
    }
    // Keep in step with `store_conformance_tests!`.
    add!(
        put_get_delete_revisions,
        range_by_prefix_sorted,
        cas_absent,
        cas_mod_revision,
        compare_and_delete,
        concurrent_cas_absent_one_winner,
        concurrent_cas_counter,
        lease_expiry_deletes_keys,
        keep_alive_extends_lease,
        revoke_deletes_at_once,
        put_without_lease_detaches,
        watch_from_zero_sees_only_new,
        watch_replays_then_follows,
        watch_replay_races_writer,
        watch_after_compact_fails,
        watch_filters_by_prefix,
        write_all_applies_every_op,
        write_all_is_never_seen_in_part,
        write_all_refuses_bad_batches,
    );
    checks
}

/// Runs every check, concurrently, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let all = checks(make).await;
    futures::future::join_all(all.into_iter().map(|(_, check)| check)).await;
}

/// Runs every check one after another, each on a fresh store from `make`: for a backend shared
/// by all checks (one etcd), where [`watch_after_compact_fails`] would compact history that a
/// concurrent check still replays.
pub async fn run_in_turn<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    for (name, check) in checks(make).await {
        let started = Instant::now();
        check.await;
        eprintln!("conformance: {name} ok ({:?})", started.elapsed());
    }
}

/// The next watch event, failing the check on an error, the end of the stream or a timeout.
pub async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("watch failed: {err}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// Fails the check if the watch yields anything within [`QUIET`].
pub async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = timeout(QUIET, watch.next()).await {
        panic!("expected no more watch items, got {item:?}");
    }
}

/// A lease-less key-value with the given revisions (for comparing results).
pub fn kv(key: &str, value: &[u8], create: Revision, modified: Revision) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
        lease: 0,
    }
}

fn done(outcome: CasOutcome) -> Revision {
    match outcome {
        CasOutcome::Done(revision) => revision,
        CasOutcome::Conflict(current) => {
            panic!("expected the write to happen, got a conflict with {current:?}")
        }
    }
}

fn assert_put(event: &WatchEvent, key: &str, value: &[u8], revision: Revision) {
    assert_eq!(event.kind, EventKind::Put, "event {event:?}");
    assert_eq!(event.kv.key, key, "event {event:?}");
    assert_eq!(event.kv.value, value, "event {event:?}");
    assert_eq!(event.revision(), revision, "event {event:?}");
}

fn assert_delete(event: &WatchEvent, key: &str) {
    assert_eq!(event.kind, EventKind::Delete, "event {event:?}");
    assert_eq!(event.kv.key, key, "event {event:?}");
    assert!(
        event.kv.value.is_empty(),
        "a delete event carries no value: {event:?}"
    );
}

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

/// A throwaway single-member etcd (the `etcd` binary, e.g. Debian's `etcd-server`) on free
/// loopback ports with its data in a temp dir; killed when dropped.
pub struct EtcdProcess {
    child: std::process::Child,
    dir: std::path::PathBuf,
    args: Vec<String>,
    /// Client URL, `http://127.0.0.1:PORT` (`https` with TLS).
    pub endpoint: String,
    /// Certificate directory when etcd serves TLS.
    tls: Option<std::path::PathBuf>,
}

impl EtcdProcess {
    /// Starts etcd and waits until it answers. `Err` says why (no `etcd` binary, no answer).
    /// With `CROUPIER_REQUIRE_ETCD=1` (CI) callers should fail on `Err`, not skip.
    pub async fn start() -> Result<EtcdProcess, String> {
        Self::start_with(None).await
    }

    /// Like [`EtcdProcess::start`], serving clients over TLS with `server.pem`/`server.key`
    /// from `tls` (a `croupier certs init` directory) and requiring client certificates signed
    /// by its `ca.pem`.
    pub async fn start_tls(tls: &std::path::Path) -> Result<EtcdProcess, String> {
        Self::start_with(Some(tls.to_path_buf())).await
    }

    async fn start_with(tls: Option<std::path::PathBuf>) -> Result<EtcdProcess, String> {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("picking a free port: {e}"))
        };
        let (client, peer) = (free()?, free()?);
        let dir =
            std::env::temp_dir().join(format!("croupier-etcd-{}-{client}", std::process::id()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.with_extension("log"))
            .map_err(|e| format!("creating the etcd log: {e}"))?;
        let mut args: Vec<String> = [
            "--name",
            "t",
            "--data-dir",
            &dir.display().to_string(),
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("t={peer_url}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(t) = &tls {
            for (flag, file) in [
                ("--cert-file", "server.pem"),
                ("--key-file", "server.key"),
                ("--trusted-ca-file", "ca.pem"),
            ] {
                args.push(flag.into());
                args.push(t.join(file).display().to_string());
            }
            args.push("--client-cert-auth".into());
        }
        let child = spawn_etcd(&args, log)?;
        let process = EtcdProcess {
            child,
            dir,
            args,
            endpoint,
            tls,
        };
        process.wait_ready().await?;
        Ok(process)
    }

    /// Starts etcd again (after [`EtcdProcess::kill`]) on the same ports and data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.with_extension("log"))
            .map_err(|e| format!("opening the etcd log: {e}"))?;
        self.child = spawn_etcd(&self.args, log)?;
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let process = self;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let opts = super::etcd::EtcdOptions {
                endpoints: vec![process.endpoint.clone()],
                timeout: Some(Duration::from_secs(1)),
                ca: process.tls.as_ref().map(|t| t.join("ca.pem")),
                cert: process.tls.as_ref().map(|t| t.join("server.pem")),
                key: process.tls.as_ref().map(|t| t.join("server.key")),
                ..Default::default()
            };
            match super::etcd::EtcdStore::connect(opts).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("etcd at {} did not answer: {e}", process.endpoint));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A store on this etcd under a fresh namespace.
    pub async fn store(&self) -> super::etcd::EtcdStore {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::etcd::EtcdStore::connect(super::etcd::EtcdOptions {
            endpoints: vec![self.endpoint.clone()],
            namespace: format!("/test-{n}"),
            ..Default::default()
        })
        .await
        .expect("connecting to the test etcd")
    }

    /// Stops etcd (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

fn spawn_etcd(args: &[String], log: std::fs::File) -> Result<std::process::Child, String> {
    std::process::Command::new("etcd")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            format!("starting `etcd` ({e}); install Debian's etcd-server (scripts/test.sh does)")
        })
}

/// Starts a test etcd, or explains why not: panics when `CROUPIER_REQUIRE_ETCD=1` (CI), else
/// returns None after printing the reason (the caller skips).
pub async fn etcd_or_skip() -> Option<EtcdProcess> {
    match EtcdProcess::start().await {
        Ok(p) => Some(p),
        Err(e) if std::env::var("CROUPIER_REQUIRE_ETCD").as_deref() == Ok("1") => {
            panic!("etcd is required (CROUPIER_REQUIRE_ETCD=1): {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A throwaway etcd cluster of several members on loopback (see [`EtcdProcess`]).
pub struct EtcdCluster {
    /// The members, in order.
    pub members: Vec<EtcdProcess>,
}

impl EtcdCluster {
    /// Starts `n` members forming one cluster and waits until every one answers.
    pub async fn start(n: usize) -> Result<EtcdCluster, String> {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("picking a free port: {e}"))
        };
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free()?, free()?));
        }
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let cluster = cluster.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir =
                std::env::temp_dir().join(format!("croupier-etcd-{}-{client}", std::process::id()));
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args: Vec<String> = [
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &dir.display().to_string(),
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("croupier-test-{}", std::process::id()),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = std::fs::File::create(dir.with_extension("log"))
                .map_err(|e| format!("creating the etcd log: {e}"))?;
            let child = spawn_etcd(&args, log)?;
            members.push(EtcdProcess {
                child,
                dir,
                args,
                endpoint,
                tls: None,
            });
        }
        for m in &members {
            m.wait_ready().await?;
        }
        Ok(EtcdCluster { members })
    }

    /// Every member's client URL, comma-separated.
    pub fn endpoints(&self) -> String {
        let all: Vec<&str> = self.members.iter().map(|m| m.endpoint.as_str()).collect();
        all.join(",")
    }
}
