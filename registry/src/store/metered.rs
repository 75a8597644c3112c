//! [`Metered`]: a [`Store`] that times every operation and counts its failures, by backend and
//! operation (a bounded label set: two backends, fourteen operations).

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::*;

/// Histogram: store operation latency, seconds, by `backend` and `op`.
pub const STORE_SECONDS: &str = "croupier_store_operation_duration_seconds";
/// Counter: store operations that failed, by `backend` and `op` (a refused compare is not a
/// failure).
pub const STORE_ERRORS: &str = "croupier_store_errors_total";

/// Describes the store's metrics to the recorder.
pub fn describe() {
    metrics::describe_histogram!(
        STORE_SECONDS,
        metrics::Unit::Seconds,
        "Store operation latency, by backend and op."
    );
    metrics::describe_counter!(
        STORE_ERRORS,
        "Store operations that failed, by backend and op."
    );
}

/// Wraps a store and measures it.
pub struct Metered {
    inner: Arc<dyn Store>,
    backend: &'static str,
}

impl Metered {
    /// Measures `inner`, labelled `backend` (`embedded`, `etcd`).
    pub fn new(inner: Arc<dyn Store>, backend: &'static str) -> Metered {
        Metered { inner, backend }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = fut.await;
        metrics::histogram!(STORE_SECONDS, "backend" => self.backend, "op" => op)
            .record(started.elapsed().as_secs_f64());
        if r.is_err() {
            metrics::counter!(STORE_ERRORS, "backend" => self.backend, "op" => op).increment(1);
        }
        r
    }
}

#[async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        self.timed("range", self.inner.range(prefix)).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.timed("put", self.inner.put(key, value, lease)).await
    }
    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.timed("delete", self.inner.delete(key)).await
    }
    async fn compare_and_put(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError> {
        self.timed(
            "compare_and_put",
            self.inner.compare_and_put(key, expect, value, lease),
        )
        .await
    }
    async fn write_all(&self, ops: Vec<WriteOp>) -> Result<Revision, StoreError> {
        self.timed("write_all", self.inner.write_all(ops)).await
    }
    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: Revision,
    ) -> Result<CasOutcome, StoreError> {
        self.timed(
            "compare_and_delete",
            self.inner.compare_and_delete(key, mod_revision),
        )
        .await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.timed("grant_lease", self.inner.grant_lease(ttl)).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.timed("keep_alive", self.inner.keep_alive(lease)).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.timed("revoke_lease", self.inner.revoke_lease(lease))
            .await
    }
    async fn watch(
        &self,
        prefix: &str,
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        self.timed("watch", self.inner.watch(prefix, from_revision))
            .await
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.timed("current_revision", self.inner.current_revision())
            .await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.timed("compact", self.inner.compact(revision)).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}
