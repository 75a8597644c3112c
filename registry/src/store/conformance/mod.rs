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
//!
//! Layout:
//! - `kv` — revisions, ranges, compare-and-put/delete, concurrent writers.
//! - `leases` — expiry, keep-alive, revoke.
//! - `watch` — replay, follow, compaction, prefixes.
//! - `batch` — `write_all`.
//! - `etcd_proc` — throwaway etcd processes for the etcd backend's tests.

// Test code shared by the backends' test suites: a failed check panics.
#![allow(clippy::unwrap_used)]

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

mod batch;
mod etcd_proc;
mod kv;
mod leases;
mod watch;

pub use batch::*;
pub use etcd_proc::*;
pub use kv::*;
pub use leases::*;
pub use watch::*;

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
