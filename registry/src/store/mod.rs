//! The `Store` trait: a small key-value interface with etcd's semantics (revisions, leases,
//! compare-and-set, watch from a revision), and its backends.
//!
//! Layout:
//! - [`embedded`] — the in-process backend (default), persisting non-lease keys in a checksummed
//!   log in a data dir, with the offline tools behind `croupier store check|repair|backup|restore`.
//! - [`etcd`] — the etcd backend, for several server replicas.
//! - [`metered`] — a wrapper that times every operation and counts failures (metrics).
//! - [`conformance`] (feature `test-util`): the suite every backend must pass.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod metered;

/// A store revision: increases by one with every change (put or delete) in the whole store.
pub type Revision = i64;

/// A lease id; keys attached to a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

/// A key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/croupier/agents/g/e/a1`.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// Lease the key is attached to; 0 for none.
    pub lease: LeaseId,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted (explicitly, or because its lease ended).
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put: the new key-value. For a delete: the key, an empty value and
    /// `mod_revision` = the revision of the deletion.
    pub kv: KeyValue,
    /// The key-value before the change, when the backend knows it.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Keys under a prefix, as of a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// The keys, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision the answer reflects.
    pub revision: Revision,
}

/// The condition of a compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this `mod_revision`.
    ModRevision(Revision),
}

/// The outcome of a compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The condition held and the write happened at this revision.
    Done(Revision),
    /// The condition failed; the key's current value (None when absent).
    Conflict(Option<KeyValue>),
}

/// One write of an atomic batch ([`Store::write_all`]). Batched keys carry no lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Create or replace `key` with `value`.
    Put {
        /// The key.
        key: String,
        /// The value bytes.
        value: Vec<u8>,
    },
    /// Delete `key` (nothing happens when it does not exist).
    Delete {
        /// The key.
        key: String,
    },
}

impl WriteOp {
    /// A put of `value` at `key`.
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        WriteOp::Put {
            key: key.into(),
            value,
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        WriteOp::Delete { key: key.into() }
    }

    /// The key the op writes.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }
}

/// The most ops one [`Store::write_all`] batch may hold: etcd's default `--max-txn-ops`.
pub const MAX_BATCH_OPS: usize = 128;

/// Checks what every backend refuses in a batch: more than [`MAX_BATCH_OPS`] ops, or one key
/// written twice (etcd refuses that too, and the order of two writes to one key in one
/// transaction means nothing there).
pub fn check_batch(ops: &[WriteOp]) -> Result<(), StoreError> {
    if ops.len() > MAX_BATCH_OPS {
        return Err(StoreError::InvalidBatch(format!(
            "{} ops in one batch; at most {MAX_BATCH_OPS} are allowed: split it into batches \
             that may be seen apart",
            ops.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for op in ops {
        if !seen.insert(op.key()) {
            return Err(StoreError::InvalidBatch(format!(
                "key {:?} is written twice in one batch; write it once",
                op.key()
            )));
        }
    }
    Ok(())
}

/// Where and how persisted store data is damaged ([`StoreError::Corrupt`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Corruption {
    /// The damaged file.
    pub path: PathBuf,
    /// The line (1-based) where the damage starts.
    pub line: usize,
    /// The byte offset of the start of that line.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} line {} (byte {}): {}",
            self.path.display(),
            self.line,
            self.offset,
            self.reason
        )
    }
}

/// A stream of changes, in revision order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached (etcd down, no quorum). Transient.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for a revision the store no longer keeps.
    #[error(
        "revision {requested} has been compacted (oldest kept: {oldest}); resync from the current state"
    )]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still available.
        oldest: Revision,
    },
    /// A watcher fell too far behind and was dropped; resync from the current state.
    #[error("watcher fell behind and was dropped; resync from the current state")]
    Lagged,
    /// The lease does not exist (expired or revoked).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// Reading or writing the data dir failed.
    #[error("store data dir: {0}")]
    Io(#[from] std::io::Error),
    /// The persisted data is damaged somewhere other than a torn last write. The file was left
    /// as it was; `croupier store check` shows the damage and `croupier store repair` fixes it.
    #[error("store data is corrupt: {0}; the file was left untouched")]
    Corrupt(Box<Corruption>),
    /// A [`Store::write_all`] batch the store refuses (see [`check_batch`]). Permanent.
    #[error("invalid write batch: {0}")]
    InvalidBatch(String),
    /// A value could not be encoded before it was written (a bug, not a store failure).
    #[error("encoding {0}")]
    Encoding(String),
}

/// A key-value store with etcd's semantics. Keys are strings; values are bytes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Reads every key starting with `prefix`, sorted by key.
    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError>;
    /// Writes a key, optionally attached to a lease. Returns the revision of the write.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError>;
    /// Deletes a key. Returns the revision of the deletion, or None when the key did not exist.
    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError>;
    /// Writes a key only if `expect` holds.
    async fn compare_and_put(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError>;
    /// Applies every op of `ops` or none, in order: no reader, watcher or restart ever sees part
    /// of the batch. Returns the store revision after the batch (the revision of its last
    /// change; the current revision when nothing changed). Puts detach a key from its lease;
    /// deleting a missing key is a no-op. Watchers get one event per change. Refused with
    /// [`StoreError::InvalidBatch`] when [`check_batch`] fails.
    ///
    /// The embedded backend gives each change its own revision (consecutive, in `ops` order) and
    /// writes the batch as one log record; etcd applies it as one transaction at one revision
    /// (and also refuses a request over its size limit, 1.5 MiB by default).
    async fn write_all(&self, ops: Vec<WriteOp>) -> Result<Revision, StoreError>;
    /// Deletes a key only if it exists with `mod_revision`.
    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: Revision,
    ) -> Result<CasOutcome, StoreError>;
    /// Grants a lease that ends `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Refreshes a lease. `LeaseNotFound` when it already ended.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Ends a lease now, deleting its keys. Revoking an unknown lease is not an error.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Watches keys starting with `prefix`. With `from_revision` > 0, first replays every change
    /// with revision >= `from_revision` (or fails with `Compacted`), then follows live changes.
    /// With 0, follows changes after the current revision.
    async fn watch(&self, prefix: &str, from_revision: Revision)
    -> Result<WatchStream, StoreError>;
    /// The current store revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;
    /// Forgets history before `revision`: watches from an older revision fail with `Compacted`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// Closes the store for this process while other holders may still hold it (the server's
    /// last step): a persistent embedded store records its revision and releases its data dir,
    /// and refuses writes from then on. The default does nothing (etcd: the client closes when
    /// dropped).
    async fn close(&self) {}
}
