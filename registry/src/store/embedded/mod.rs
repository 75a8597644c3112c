//! The embedded backend: an in-process [`Store`] with etcd v3 semantics, optionally persisting its
//! non-lease keys in a data dir, and the offline tools for that data dir (`croupier store
//! check|repair|backup|restore`).
//!
//! Everything lives behind one mutex: the key map (a `BTreeMap`, so ranges come out sorted), the
//! leases, a bounded history of past events for watch replay, and the registered watchers. Every
//! change bumps the single store revision by one and is delivered to watchers while the mutex is
//! held, so a watch that reads history and subscribes under the same lock sees every change
//! exactly once.
//!
//! Semantics worth knowing:
//! - **Revisions.** Each put and each delete of an existing key takes the next revision. Ending a
//!   lease (expiry or revoke) deletes its keys one by one, in key order, each delete taking its own
//!   revision; so every revision carries exactly one event, and resuming a watch from
//!   `last_seen + 1` never skips a sibling delete. (etcd deletes all of a lease's keys at one
//!   revision; consumers must not rely on either behaviour.) A [`Store::write_all`] batch takes
//!   one revision per change, consecutive, and is applied and logged as one unit.
//! - **Leases** end `ttl` after their last keep-alive. A background tokio task (started by the
//!   first [`Store::grant_lease`]) wakes at the earliest deadline and deletes the keys, so watchers
//!   see `Delete` events without any other traffic; every operation also reaps due leases first,
//!   so nobody reads a key whose lease has run out. The task uses `tokio::time`, so tests can
//!   `tokio::time::pause()` and `advance`, and it ends when the store is dropped.
//! - **Watches** replay history from the asked revision, then follow live changes. History keeps
//!   the last [`EmbeddedOptions::history_limit`] events (and at most
//!   [`EmbeddedOptions::history_bytes_limit`] bytes of values) and nothing before [`Store::compact`];
//!   older asks fail with [`StoreError::Compacted`]. Each watcher has a bounded queue
//!   ([`EmbeddedOptions::watch_queue`]); a watcher that lets it fill is dropped — its stream yields
//!   the queued events, then [`StoreError::Lagged`], then ends — and writers never wait for it.
//! - **Persistence** ([`EmbeddedStore::open`]): keys without a lease are written to an
//!   append-only log, `store.log` in the data dir, and read back on open with their revisions;
//!   the revision counter continues from the highest revision in the log. Lease-attached keys
//!   are not persisted and are gone after a restart (their agents re-register). A restarted
//!   store keeps no watch history: watches from before the restart fail with `Compacted`.
//!
//! # The log (format version 2)
//!
//! One record per line, each line `<crc> <seq> <json>\n`:
//! - `<crc>`: 8 lowercase hex digits, the CRC-32 (IEEE) of the bytes `<seq> <json>`;
//! - `<seq>`: the record's sequence number in this file, 1 for the first line, rising by one;
//! - `<json>`: the record, an object tagged by `op`:
//!   - `{"op":"header","format":"croupier-embedded-store","version":2}` — always record 1;
//!   - `{"op":"snapshot","revision":R,"keys":N}` — only as record 2 of a rewritten log: the next
//!     `N` records are puts holding every persisted key as of revision `R`, in key order;
//!   - `{"op":"put","key":K,"value":<base64>,"create_revision":C,"mod_revision":M}`;
//!   - `{"op":"delete","key":K,"revision":R}` (also written when a persisted key moves onto a
//!     lease, so it does not come back after a restart);
//!   - `{"op":"revision","revision":R}` — the store revision, written on a clean close so the
//!     counter keeps rising across restarts even when the last changes were to lease keys;
//!   - `{"op":"txn","ops":[<put or delete>, …]}` — a [`Store::write_all`] batch: all or none.
//!
//! After the snapshot, the revisions of the records rise strictly (gaps are lease-key changes,
//! which are not logged); a put keeps its key's `create_revision`, a delete names an existing
//! key. Reading a log checks all of this.
//!
//! **What opening does with a damaged log.** Only a *torn last record* is dropped: an
//! unterminated last line that is a prefix of a line this code writes (what a write cut short by
//! a crash leaves), nothing after it. Such a record was never acknowledged. The open logs a WARN
//! naming what was dropped (byte offset and count, and the record's sequence number, keys and
//! revision as far as readable), reports it through [`EmbeddedStore::open_report`], and cuts the
//! file back to the last good record. Anything else — a checksum mismatch, zeros or garbage
//! anywhere but a torn tail, a missing, repeated or reordered record, a revision that goes back,
//! a cut snapshot — fails the open with [`StoreError::Corrupt`], naming the file, the line and its
//! byte offset and what is wrong, and leaves every file as it was. [`check`] reports the same
//! without opening the store; [`repair`] rewrites the log from the good records, keeping a copy
//! of the original.
//!
//! **Version 1 logs** (bare JSON lines, no checksums or sequence numbers, written by earlier
//! builds) are still read, with the same revision checks and the same torn-tail rule. Opening
//! one converts it: the version 1 file is kept as `store.log.v1` (a hard link) and `store.log`
//! is rewritten as a version 2 snapshot.
//!
//! # Durability
//!
//! - **Order.** Each change is one record, written with one `write` of a whole line to the log
//!   (opened for appending) before the change is applied, seen by watchers or acknowledged; a
//!   batch is one record. So the log is always a prefix of the changes in order, and a crash
//!   leaves at most a torn last record: after a `SIGKILL`, a batch (e.g. a job's event chunk and
//!   the job record) is either wholly there or not at all.
//! - **fsync** ([`EmbeddedOptions::fsync`], the server's `store_fsync`): off by default. Then an
//!   acknowledged write survives the process crashing (it is in the OS's page cache) but the
//!   last few seconds of writes may be lost if the machine loses power, and the file system may
//!   then leave a damaged tail, which the next open refuses rather than guess about. With it on,
//!   every record is `fdatasync`ed before the change is acknowledged, so acknowledged writes
//!   survive power loss too; each write then costs a disk flush, under the store's lock.
//! - **Rewrites** (compaction, when the log holds more than
//!   [`EmbeddedOptions::log_compaction_min_records`] records and more than twice the live keys;
//!   conversion; `repair`; `restore`) always go to `store.log.tmp`, are fsynced, renamed over
//!   `store.log`, and the directory is fsynced, whatever the fsync option: `store.log` is always
//!   either the old log or the whole new one. A leftover `store.log.tmp` is removed on open.
//! - **Backups** ([`backup`]) read the log without the lock while a server appends to it: every
//!   complete, checksum-valid prefix of the log is a state the store was in (a batch is one
//!   record), and a compaction renames a complete file over it, so a reader holding the old file
//!   still reads a complete log.
//!
//! Layout:
//! - this module — [`EmbeddedStore`], [`EmbeddedOptions`], the [`Store`] impl and the lease task.
//! - `state` — the key map and leases, and how a change is planned, logged and applied.
//! - `watch` — history, watchers and the watch stream.
//! - `record` — log records and line framing (versions 1 and 2), torn-tail recognition.
//! - `read` — reading a log back: the strict read and the salvage read.
//! - `log` — the open log: the data-dir lock, appends, crash-safe rewrites.
//! - `check` — [`check`], the report of `croupier store check`.
//! - `repair` — [`repair`], and [`backup`] / [`restore`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{
    CasOutcome, Expect, KeyValue, LeaseId, RangeResult, Revision, Store, StoreError, WatchStream,
    WriteOp,
};

mod check;
mod log;
mod read;
mod record;
mod repair;
mod state;
mod watch;

pub use check::{CheckReport, check};
pub use read::{DamagedLine, TornTail};
pub use repair::{BackupReport, RepairMode, RepairReport, RestoreReport, backup, repair, restore};

use log::Log;
use state::State;
use watch::EmbeddedWatch;

/// Tuning for an [`EmbeddedStore`]. Build it with `EmbeddedOptions::default()` and the `with_*`
/// methods.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many past events are kept for watch replay; a watch from an older revision fails with
    /// [`StoreError::Compacted`]. Default 100 000.
    pub history_limit: usize,
    /// How many bytes of values (new and previous) the history may hold; older events go first
    /// (a watch from before them fails with [`StoreError::Compacted`]). Default 64 MiB.
    pub history_bytes_limit: usize,
    /// How many undelivered events a watcher may have queued before it is dropped with
    /// [`StoreError::Lagged`]. Default 10 000 (at least 1 is used).
    pub watch_queue: usize,
    /// The log is rewritten as a snapshot of the live keys once it holds more than this many
    /// records and more than twice as many records as there are persisted keys. Default 10 000.
    pub log_compaction_min_records: usize,
    /// Whether each log write is followed by `fdatasync` (`File::sync_data`) before the change is
    /// acknowledged. Default false: writes go to the OS at once (they survive the process
    /// crashing) but the last ones may be lost if the machine loses power. Log rewrites are always
    /// synced before they replace the old log. See "Durability" in the module docs.
    pub fsync: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_limit: 100_000,
            history_bytes_limit: 64 << 20,
            watch_queue: 10_000,
            log_compaction_min_records: 10_000,
            fsync: false,
        }
    }
}

impl EmbeddedOptions {
    /// Sets [`EmbeddedOptions::history_limit`].
    pub fn with_history_limit(mut self, events: usize) -> Self {
        self.history_limit = events;
        self
    }

    /// Sets [`EmbeddedOptions::history_bytes_limit`].
    pub fn with_history_bytes_limit(mut self, bytes: usize) -> Self {
        self.history_bytes_limit = bytes;
        self
    }

    /// Sets [`EmbeddedOptions::watch_queue`].
    pub fn with_watch_queue(mut self, events: usize) -> Self {
        self.watch_queue = events;
        self
    }

    /// Sets [`EmbeddedOptions::log_compaction_min_records`].
    pub fn with_log_compaction_min_records(mut self, records: usize) -> Self {
        self.log_compaction_min_records = records;
        self
    }

    /// Sets [`EmbeddedOptions::fsync`].
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }
}

/// The in-process [`Store`] backend. See the module docs for its semantics.
///
/// Constructing one needs no runtime; its methods run on a tokio runtime (the first
/// [`Store::grant_lease`] spawns the lease task there). Dropping it closes the store: the data dir
/// is unlocked, the lease task ends and every watch stream ends (after the events already queued
/// for it).
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    report: OpenReport,
}

/// What opening a persistent store found and did besides loading it; for the server to print.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The torn last record that was dropped, if any.
    pub torn_tail: Option<TornTail>,
    /// Where the version 1 log was kept when it was converted to version 2.
    pub converted_from_v1: Option<PathBuf>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("EmbeddedStore")
            .field("revision", &st.revision)
            .field("keys", &st.kvs.len())
            .field("leases", &st.leases.len())
            .field("watchers", &st.watchers.len())
            .field("dir", &st.log.as_ref().map(|log| log.dir.clone()))
            .finish()
    }
}

impl EmbeddedStore {
    /// A store that lives only in memory, with default options.
    pub fn in_memory() -> Self {
        Self::in_memory_with(EmbeddedOptions::default())
    }

    /// A store that lives only in memory.
    pub fn in_memory_with(opts: EmbeddedOptions) -> Self {
        Self::from_state(State::new(opts, None, 0, BTreeMap::new()))
    }

    /// Opens (creating if needed) a persistent store in `dir`, with default options.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens (creating if needed) a persistent store in `dir`.
    ///
    /// The dir holds `LOCK`, locked with an advisory `flock` for as long as the store is open (a
    /// second open, from this process or another, fails with an error saying so), and
    /// `store.log`, the log described in the module docs. A damaged log fails with
    /// [`StoreError::Corrupt`] and is left untouched; a torn last record is dropped and reported
    /// in [`EmbeddedStore::open_report`]; a version 1 log is converted.
    ///
    /// Writes happen on the calling thread while the store's lock is held; they are small
    /// appends, but with `fsync` on each costs a disk flush.
    pub fn open_with(dir: &Path, opts: EmbeddedOptions) -> Result<Self, StoreError> {
        let (log, contents, opened) = Log::open(dir, &opts)?;
        let mut store =
            Self::from_state(State::new(opts, Some(log), contents.revision, contents.kvs));
        store.report = OpenReport {
            torn_tail: opened.torn,
            converted_from_v1: opened.converted_from_v1,
        };
        Ok(store)
    }

    /// What opening the store found and did besides loading it (nothing for an in-memory store).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    fn from_state(state: State) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                wake: Arc::new(Notify::new()),
            }),
            report: OpenReport::default(),
        }
    }

    /// How many watchers are registered (streams that are neither dropped nor lagged out).
    pub fn watcher_count(&self) -> usize {
        let mut st = self.inner.lock();
        st.watchers.retain(|_, w| !w.tx.is_closed());
        st.watchers.len()
    }

    /// The data dir, for a persistent store.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.inner.lock().log.as_ref().map(|log| log.dir.clone())
    }

    /// Locks the state and reaps leases that are due.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = self.inner.lock();
        st.expire_due(Instant::now());
        st
    }
}

impl EmbeddedStore {
    /// Closes the store now, while other holders may still hold it: records the revision,
    /// releases the data dir's lock and ends every watch. Every later write fails with
    /// `Unavailable` ("closed"), so nothing is kept in memory only; reads still answer.
    pub fn close_now(&self) {
        let task = self.inner.lock().close();
        if let Some(task) = task {
            task.abort();
        }
        self.inner.wake.notify_one();
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        let task = self.inner.lock().close();
        if let Some(task) = task {
            task.abort();
        }
        // Wakes the lease task so it sees the store is gone even if the abort lands late.
        self.inner.wake.notify_one();
    }
}

/// What the store, its lease task and its watch streams share. The lease task and the streams
/// hold only a `Weak` to it, so dropping the [`EmbeddedStore`] frees everything.
struct Inner {
    state: Mutex<State>,
    /// Wakes the lease task when a lease is granted (its deadline may be the earliest).
    wake: Arc<Notify>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only changed by code that does not panic halfway; keep serving after a
        // panic elsewhere rather than poisoning every later call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The lease task: sleeps until the earliest lease deadline (or a new grant), then reaps due
/// leases. Holds the store only weakly and ends when the store is gone.
async fn run_lease_expiry(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let mut st = inner.lock();
            if st.expiry_task.is_none() {
                // Closed.
                return;
            }
            st.expire_due(Instant::now());
            st.next_deadline()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.state().kvs.get(key).cloned())
    }

    async fn range(&self, prefix: &str) -> Result<RangeResult, StoreError> {
        let st = self.state();
        let kvs = st
            .kvs
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(RangeResult {
            kvs,
            revision: st.revision,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.state().put(key, value, lease)
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.state().delete(key)
    }

    async fn write_all(&self, ops: Vec<WriteOp>) -> Result<Revision, StoreError> {
        self.state().write_all(ops)
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError> {
        let mut st = self.state();
        if let Err(conflict) = st.compare(key, &expect) {
            return Ok(conflict);
        }
        st.put(key, value, lease).map(CasOutcome::Done)
    }

    async fn compare_and_delete(
        &self,
        key: &str,
        mod_revision: Revision,
    ) -> Result<CasOutcome, StoreError> {
        let mut st = self.state();
        if let Err(conflict) = st.compare(key, &Expect::ModRevision(mod_revision)) {
            return Ok(conflict);
        }
        let revision = st
            .delete(key)?
            .expect("the key exists: the comparison held");
        Ok(CasOutcome::Done(revision))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let id = {
            let mut st = self.state();
            let id = st.grant_lease(ttl, Instant::now());
            if st.expiry_task.as_ref().is_none_or(JoinHandle::is_finished) {
                // Started lazily so that constructing a store needs no runtime; restarted if the
                // runtime that ran it has gone.
                let task = run_lease_expiry(Arc::downgrade(&self.inner), self.inner.wake.clone())
                    .instrument(tracing::debug_span!("embedded_store_lease_expiry"));
                st.expiry_task = Some(croupier_proto::task::spawn("lease expiry", task));
            }
            id
        };
        self.inner.wake.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.state().keep_alive(lease, Instant::now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.state().end_lease(lease);
        Ok(())
    }

    async fn watch(
        &self,
        prefix: &str,
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let sub = self.state().watch(prefix, from_revision)?;
        Ok(Box::pin(EmbeddedWatch::new(
            sub,
            Arc::downgrade(&self.inner),
        )))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.state().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.state().compact(revision);
        Ok(())
    }

    async fn close(&self) {
        self.close_now();
    }
}
