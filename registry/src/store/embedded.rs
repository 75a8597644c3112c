//! The embedded backend: an in-process [`Store`] with etcd v3 semantics, optionally persisting its
//! non-lease keys in a data dir.
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
//!   revision; consumers must not rely on either behaviour.)
//! - **Leases** end `ttl` after their last keep-alive. A background tokio task (started by the
//!   first [`Store::grant_lease`]) wakes at the earliest deadline and deletes the keys, so watchers
//!   see `Delete` events without any other traffic; every operation also reaps due leases first,
//!   so nobody reads a key whose lease has run out. The task uses `tokio::time`, so tests can
//!   `tokio::time::pause()` and `advance`, and it ends when the store is dropped.
//! - **Watches** replay history from the asked revision, then follow live changes. History keeps
//!   the last [`EmbeddedOptions::history_limit`] events and nothing before [`Store::compact`];
//!   older asks fail with [`StoreError::Compacted`]. Each watcher has a bounded queue
//!   ([`EmbeddedOptions::watch_queue`]); a watcher that lets it fill is dropped — its stream yields
//!   the queued events, then [`StoreError::Lagged`], then ends — and writers never wait for it.
//! - **Persistence** ([`EmbeddedStore::open`]): keys without a lease are written to an
//!   append-only log, `store.log` in the data dir, one JSON record per line (values base64), and
//!   read back on open with their revisions; the revision counter continues from the highest
//!   revision in the log. Lease-attached keys are not persisted and are gone after a restart
//!   (their agents re-register). See [`EmbeddedStore::open_with`] for the crash-safety and fsync
//!   choices. A restarted store keeps no watch history: watches from before the restart fail with
//!   `Compacted`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{
    CasOutcome, EventKind, Expect, KeyValue, LeaseId, RangeResult, Revision, Store, StoreError,
    WatchEvent, WatchStream,
};

/// The log file inside the data dir.
const LOG_FILE: &str = "store.log";
/// Where a log rewrite is written before it is renamed over [`LOG_FILE`].
const LOG_TMP_FILE: &str = "store.log.tmp";
/// The file holding the advisory lock on the data dir.
const LOCK_FILE: &str = "LOCK";
/// The `format` of the log's header record.
const LOG_FORMAT: &str = "croupier-embedded-store";
/// The log format version this code reads and writes.
const LOG_VERSION: u32 = 1;

/// Tuning for an [`EmbeddedStore`]. Build it with `EmbeddedOptions::default()` and the `with_*`
/// methods.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many past events are kept for watch replay; a watch from an older revision fails with
    /// [`StoreError::Compacted`]. Default 100 000.
    pub history_limit: usize,
    /// How many undelivered events a watcher may have queued before it is dropped with
    /// [`StoreError::Lagged`]. Default 10 000 (at least 1 is used).
    pub watch_queue: usize,
    /// The log is rewritten as a snapshot of the live keys once it holds more than this many
    /// records and more than twice as many records as there are persisted keys. Default 10 000.
    pub log_compaction_min_records: usize,
    /// Whether each log write is followed by `fsync` (`File::sync_data`). Default false: writes go
    /// to the OS at once (they survive the process crashing) but may be lost if the machine loses
    /// power. Log rewrites are always synced before they replace the old log.
    pub fsync: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_limit: 100_000,
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
    /// `store.log`, an append-only log of JSON lines:
    /// `{"op":"put","key":…,"value":<base64>,"create_revision":…,"mod_revision":…}`,
    /// `{"op":"delete","key":…,"revision":…}` and `{"op":"revision","revision":…}` (the store
    /// revision, written when the store is closed and at the top of a rewritten log, so the
    /// counter keeps rising across clean restarts even when the last changes were to lease keys).
    ///
    /// Crash safety: each record is one `write` of a whole line, issued before the change is
    /// applied or acknowledged, so a crash leaves at most a torn last line; on open an
    /// unterminated or unreadable last line is ignored and cut off (any other unreadable line is
    /// [`StoreError::Corrupt`]). When the log grows well past the live data it is rewritten as a
    /// snapshot into `store.log.tmp`, synced, and renamed over `store.log`, so either the old or
    /// the new log is always complete. Whether every write is also fsynced is
    /// [`EmbeddedOptions::fsync`] (default: no).
    ///
    /// Writes happen on the calling thread while the store's lock is held; they are small
    /// appends, but with `fsync` on each costs a disk flush.
    pub fn open_with(dir: &Path, opts: EmbeddedOptions) -> Result<Self, StoreError> {
        let (log, revision, kvs) = Log::open(dir, &opts)?;
        Ok(Self::from_state(State::new(opts, Some(log), revision, kvs)))
    }

    fn from_state(state: State) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                wake: Arc::new(Notify::new()),
            }),
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

/// A granted lease.
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// A registered watcher: where to send the events it wants.
struct Watcher {
    prefix: String,
    /// Live events below this revision are not sent (a watch from a future revision).
    min_revision: Revision,
    tx: mpsc::Sender<WatchEvent>,
    /// Set before `tx` is dropped when the watcher's queue overflowed.
    lagged: Arc<AtomicBool>,
}

struct State {
    opts: EmbeddedOptions,
    revision: Revision,
    kvs: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    /// Lease deadlines, earliest first.
    deadlines: BTreeSet<(Instant, LeaseId)>,
    /// Seeds lease ids; random per process so ids are not reused across restarts.
    lease_ids: RandomState,
    lease_seq: u64,
    /// Past events with contiguous revisions `first_kept..=revision` (fewer when empty).
    history: VecDeque<WatchEvent>,
    /// The oldest revision a watch may start from.
    first_kept: Revision,
    watchers: HashMap<u64, Watcher>,
    next_watcher: u64,
    log: Option<Log>,
    expiry_task: Option<JoinHandle<()>>,
}

impl State {
    fn new(
        opts: EmbeddedOptions,
        log: Option<Log>,
        revision: Revision,
        kvs: BTreeMap<String, KeyValue>,
    ) -> Self {
        Self {
            opts,
            revision,
            kvs,
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            lease_ids: RandomState::new(),
            lease_seq: 0,
            history: VecDeque::new(),
            first_kept: revision + 1,
            watchers: HashMap::new(),
            next_watcher: 0,
            log,
            expiry_task: None,
        }
    }

    /// Closes the store: records the revision, releases the data dir, ends every watch.
    fn close(&mut self) -> Option<JoinHandle<()>> {
        if let Some(mut log) = self.log.take()
            && self.revision > log.last_revision
            && let Err(err) = log.append(&Record::Revision {
                revision: self.revision,
            })
        {
            tracing::warn!(error = %err, "embedded store: recording the revision on close failed");
        }
        self.watchers.clear();
        self.leases.clear();
        self.deadlines.clear();
        self.expiry_task.take()
    }

    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let lease = lease.unwrap_or(0);
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(StoreError::LeaseNotFound(lease));
        }
        let prev = self.kvs.get(key).cloned();
        let revision = self.revision + 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            lease,
        };
        if let Some(log) = self.log.as_mut() {
            log.record_put(&kv, prev.as_ref())?;
        }
        self.revision = revision;
        if let Some(prev) = &prev
            && prev.lease != 0
            && prev.lease != lease
            && let Some(old) = self.leases.get_mut(&prev.lease)
        {
            old.keys.remove(key);
        }
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(key.to_owned());
        }
        self.kvs.insert(key.to_owned(), kv.clone());
        self.emit(WatchEvent {
            kind: EventKind::Put,
            kv,
            prev,
        });
        self.maybe_compact_log();
        Ok(revision)
    }

    fn delete(&mut self, key: &str) -> Result<Option<Revision>, StoreError> {
        let Some(prev) = self.kvs.get(key) else {
            return Ok(None);
        };
        let revision = self.revision + 1;
        if let Some(log) = self.log.as_mut() {
            log.record_delete(prev, revision)?;
        }
        let prev = self.kvs.remove(key).expect("checked above");
        self.revision = revision;
        if prev.lease != 0
            && let Some(l) = self.leases.get_mut(&prev.lease)
        {
            l.keys.remove(key);
        }
        self.emit(delete_event(revision, prev));
        self.maybe_compact_log();
        Ok(Some(revision))
    }

    fn compare(&self, key: &str, expect: &Expect) -> Result<(), CasOutcome> {
        let current = self.kvs.get(key);
        let holds = match (expect, current) {
            (Expect::Absent, None) => true,
            (Expect::ModRevision(rev), Some(kv)) => kv.mod_revision == *rev,
            _ => false,
        };
        if holds {
            Ok(())
        } else {
            Err(CasOutcome::Conflict(current.cloned()))
        }
    }

    fn grant_lease(&mut self, ttl: Duration, now: Instant) -> LeaseId {
        let id = loop {
            self.lease_seq += 1;
            // Positive, non-zero, and hard to guess or to collide with a pre-restart id.
            let id = (self.lease_ids.hash_one(self.lease_seq) >> 1) as LeaseId;
            if id != 0 && !self.leases.contains_key(&id) {
                break id;
            }
        };
        let deadline = deadline_after(now, ttl);
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        id
    }

    fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<(), StoreError> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(StoreError::LeaseNotFound(id))?;
        self.deadlines.remove(&(lease.deadline, id));
        lease.deadline = deadline_after(now, lease.ttl);
        self.deadlines.insert((lease.deadline, id));
        Ok(())
    }

    /// Ends a lease, deleting its keys in key order, one revision each.
    fn end_lease(&mut self, id: LeaseId) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(lease.deadline, id));
        for key in lease.keys {
            let Some(prev) = self.kvs.remove(&key) else {
                continue;
            };
            // Lease keys are never in the log, so there is nothing to persist.
            debug_assert_eq!(prev.lease, id);
            self.revision += 1;
            self.emit(delete_event(self.revision, prev));
        }
    }

    /// Ends every lease whose deadline is at or before `now`.
    fn expire_due(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(lease = id, "embedded store: lease expired");
            self.end_lease(id);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Sends an event to the watchers that want it and keeps it in history. Never blocks: a
    /// watcher whose queue is full is dropped as lagged.
    fn emit(&mut self, event: WatchEvent) {
        let revision = event.revision();
        self.watchers.retain(|id, w| {
            if revision < w.min_revision || !event.kv.key.starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        watcher = *id,
                        prefix = %w.prefix,
                        revision,
                        "embedded store: watcher fell behind; dropping it"
                    );
                    w.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if self.opts.history_limit == 0 {
            self.first_kept = revision + 1;
            return;
        }
        self.history.push_back(event);
        while self.history.len() > self.opts.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.first_kept = old.revision() + 1;
            }
        }
    }

    fn compact(&mut self, revision: Revision) {
        let target = revision.min(self.revision + 1);
        if target <= self.first_kept {
            return;
        }
        self.first_kept = target;
        while self
            .history
            .front()
            .is_some_and(|event| event.revision() < target)
        {
            self.history.pop_front();
        }
    }

    /// Reads the replay and registers a watcher, in one go under the lock.
    fn watch(&mut self, prefix: &str, from_revision: Revision) -> Result<Subscription, StoreError> {
        let mut replay = VecDeque::new();
        if from_revision > 0 {
            if from_revision < self.first_kept {
                return Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest: self.first_kept,
                });
            }
            if let Some(front) = self.history.front() {
                // History revisions are contiguous, so the start is an index.
                let skip = usize::try_from((from_revision - front.revision()).max(0))
                    .unwrap_or(usize::MAX);
                if skip < self.history.len() {
                    replay.extend(
                        self.history
                            .range(skip..)
                            .filter(|event| event.kv.key.starts_with(prefix))
                            .cloned(),
                    );
                }
            }
        }
        let (tx, rx) = mpsc::channel(self.opts.watch_queue.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_watcher;
        self.next_watcher += 1;
        self.watchers.insert(
            id,
            Watcher {
                prefix: prefix.to_owned(),
                min_revision: from_revision,
                tx,
                lagged: lagged.clone(),
            },
        );
        Ok(Subscription {
            replay,
            id,
            rx,
            lagged,
        })
    }

    fn maybe_compact_log(&mut self) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if log.records <= log.compaction_min_records || log.records <= 2 * log.persisted_keys + 2 {
            return;
        }
        let before = log.records;
        match log.rewrite(self.revision, self.kvs.values()) {
            Ok(()) => tracing::debug!(
                records_before = before,
                records_after = log.records,
                "embedded store: log compacted"
            ),
            Err(err) => {
                // The old log is still complete; try again after the next write.
                tracing::warn!(error = %err, "embedded store: log compaction failed");
            }
        }
    }
}

/// `now + ttl`, saturating at a century for absurd TTLs instead of overflowing.
fn deadline_after(now: Instant, ttl: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(ttl.min(CENTURY))
        .unwrap_or_else(|| now + Duration::from_secs(24 * 3600))
}

fn delete_event(revision: Revision, prev: KeyValue) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: prev.key.clone(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            lease: 0,
        },
        prev: Some(prev),
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

/// What [`State::watch`] hands to the new stream.
struct Subscription {
    replay: VecDeque<WatchEvent>,
    id: u64,
    rx: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
}

/// A watch stream: the replayed events, then the live queue, then `Lagged` if it overflowed.
struct EmbeddedWatch {
    replay: VecDeque<WatchEvent>,
    rx: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
    done: bool,
    _registration: Registration,
}

impl Stream for EmbeddedWatch {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(event) = this.replay.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => {
                this.done = true;
                if this.lagged.load(Ordering::Acquire) {
                    Poll::Ready(Some(Err(StoreError::Lagged)))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Removes a watcher from the store when its stream is dropped.
struct Registration {
    inner: Weak<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().watchers.remove(&self.id);
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
                st.expiry_task = Some(tokio::spawn(task));
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
        Ok(Box::pin(EmbeddedWatch {
            replay: sub.replay,
            rx: sub.rx,
            lagged: sub.lagged,
            done: false,
            _registration: Registration {
                inner: Arc::downgrade(&self.inner),
                id: sub.id,
            },
        }))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.state().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.state().compact(revision);
        Ok(())
    }
}

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    /// First line of every log.
    Header { format: String, version: u32 },
    /// A key without a lease was written.
    Put {
        key: String,
        /// Base64 (standard alphabet, padded).
        value: String,
        create_revision: Revision,
        mod_revision: Revision,
    },
    /// A persisted key was deleted (or became lease-attached, so it must not come back).
    Delete { key: String, revision: Revision },
    /// The store revision reached this value.
    Revision { revision: Revision },
}

impl Record {
    fn header() -> Self {
        Record::Header {
            format: LOG_FORMAT.to_owned(),
            version: LOG_VERSION,
        }
    }

    fn put(kv: &KeyValue) -> Self {
        Record::Put {
            key: kv.key.clone(),
            value: BASE64.encode(&kv.value),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }

    fn revision(&self) -> Revision {
        match self {
            Record::Header { .. } => 0,
            Record::Put { mod_revision, .. } => *mod_revision,
            Record::Delete { revision, .. } | Record::Revision { revision } => *revision,
        }
    }
}

/// The open log of a persistent store, and the lock on its dir.
struct Log {
    dir: PathBuf,
    /// `store.log`, opened for appending.
    file: File,
    /// Bytes in `file` up to the last complete record.
    len: u64,
    /// Records in `file`.
    records: usize,
    /// Keys without a lease, i.e. the records a rewrite would hold.
    persisted_keys: usize,
    /// The highest revision in `file`.
    last_revision: Revision,
    /// Set when a failed append could not be undone; later appends fail rather than write after
    /// a partial line.
    broken: bool,
    fsync: bool,
    compaction_min_records: usize,
    /// Holds the advisory lock on the dir; released when dropped.
    _lock: File,
}

impl Log {
    /// Locks `dir`, reads the log back and opens it for appending.
    fn open(
        dir: &Path,
        opts: &EmbeddedOptions,
    ) -> Result<(Self, Revision, BTreeMap<String, KeyValue>), StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_context(e, "creating", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_context(e, "opening", &lock_path))?;
        // Called through the trait: std's inherent `File::try_lock` needs a newer Rust than the
        // workspace's rust-version.
        match fs4::FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(StoreError::Io(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is locked: another store (another croupier server?) has this data dir open",
                        dir.display()
                    ),
                )));
            }
            Err(fs4::TryLockError::Error(e)) => return Err(io_context(e, "locking", &lock_path)),
        }

        let tmp_path = dir.join(LOG_TMP_FILE);
        match fs::remove_file(&tmp_path) {
            Ok(()) => {
                tracing::warn!(path = %tmp_path.display(), "embedded store: removed an unfinished log rewrite")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_context(e, "removing", &tmp_path)),
        }

        let path = dir.join(LOG_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_context(e, "reading", &path)),
        };
        let loaded = Loaded::parse(&bytes, &path)?;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_context(e, "opening", &path))?;
        if loaded.valid_len < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - loaded.valid_len,
                "embedded store: ignoring a torn last record"
            );
            file.set_len(loaded.valid_len as u64)
                .map_err(|e| io_context(e, "truncating", &path))?;
        }
        let persisted_keys = loaded.kvs.len();
        let mut log = Log {
            dir: dir.to_owned(),
            file,
            len: loaded.valid_len as u64,
            records: loaded.records,
            persisted_keys,
            last_revision: loaded.revision,
            broken: false,
            fsync: opts.fsync,
            compaction_min_records: opts.log_compaction_min_records,
            _lock: lock,
        };
        if loaded.records == 0 {
            log.append(&Record::header())
                .map_err(|e| io_context(e, "writing", &path))?;
        }
        if log.records > log.compaction_min_records
            && log.records > 2 * log.persisted_keys + 2
            && let Err(err) = log.rewrite(loaded.revision, loaded.kvs.values())
        {
            // The old log is still complete; the next write tries again.
            tracing::warn!(error = %err, "embedded store: log compaction failed");
        }
        Ok((log, loaded.revision, loaded.kvs))
    }

    /// Appends one record as one line. On failure the file is cut back to its previous length.
    fn append(&mut self, record: &Record) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the log is in an unknown state after a failed write; restart the server",
            ));
        }
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let written = self.file.write_all(&line).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(err) = written {
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(err);
        }
        self.len += line.len() as u64;
        self.records += 1;
        self.last_revision = self.last_revision.max(record.revision());
        Ok(())
    }

    /// Logs a put of `kv` over `prev`.
    fn record_put(&mut self, kv: &KeyValue, prev: Option<&KeyValue>) -> Result<(), StoreError> {
        let prev_persisted = prev.is_some_and(|p| p.lease == 0);
        if kv.lease == 0 {
            self.append(&Record::put(kv))
                .map_err(|e| io_context(e, "writing", &self.dir.join(LOG_FILE)))?;
            if !prev_persisted {
                self.persisted_keys += 1;
            }
        } else if prev_persisted {
            // The key now lives on a lease: it must not come back after a restart.
            self.append(&Record::Delete {
                key: kv.key.clone(),
                revision: kv.mod_revision,
            })
            .map_err(|e| io_context(e, "writing", &self.dir.join(LOG_FILE)))?;
            self.persisted_keys -= 1;
        }
        Ok(())
    }

    /// Logs the deletion of `prev` at `revision`.
    fn record_delete(&mut self, prev: &KeyValue, revision: Revision) -> Result<(), StoreError> {
        if prev.lease == 0 {
            self.append(&Record::Delete {
                key: prev.key.clone(),
                revision,
            })
            .map_err(|e| io_context(e, "writing", &self.dir.join(LOG_FILE)))?;
            self.persisted_keys -= 1;
        }
        Ok(())
    }

    /// Replaces the log with a snapshot of the persisted keys: written to a temp file, synced,
    /// renamed over the log.
    fn rewrite<'a>(
        &mut self,
        revision: Revision,
        kvs: impl Iterator<Item = &'a KeyValue>,
    ) -> io::Result<()> {
        let tmp_path = self.dir.join(LOG_TMP_FILE);
        if let Err(e) = fs::remove_file(&tmp_path)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e);
        }
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&tmp_path)?;
        let mut len = 0u64;
        let mut records = 0usize;
        let mut keys = 0usize;
        {
            let mut out = BufWriter::new(&file);
            let mut write = |record: &Record| -> io::Result<()> {
                let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
                line.push(b'\n');
                out.write_all(&line)?;
                len += line.len() as u64;
                records += 1;
                Ok(())
            };
            write(&Record::header())?;
            write(&Record::Revision { revision })?;
            for kv in kvs.filter(|kv| kv.lease == 0) {
                write(&Record::put(kv))?;
                keys += 1;
            }
            out.flush()?;
        }
        file.sync_all()?;
        fs::rename(&tmp_path, self.dir.join(LOG_FILE))?;
        self.file = file;
        self.len = len;
        self.records = records;
        self.persisted_keys = keys;
        self.last_revision = revision;
        self.broken = false;
        if self.fsync {
            sync_dir(&self.dir);
        }
        Ok(())
    }
}

/// Makes a rename in `dir` durable (best effort; Unix only).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %err, dir = %dir.display(), "embedded store: syncing the data dir failed");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// The state read back from a log.
struct Loaded {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
    records: usize,
    /// Bytes up to the end of the last good line.
    valid_len: usize,
}

impl Loaded {
    fn parse(bytes: &[u8], path: &Path) -> Result<Self, StoreError> {
        let mut loaded = Loaded {
            kvs: BTreeMap::new(),
            revision: 0,
            records: 0,
            valid_len: 0,
        };
        let mut pos = 0;
        let mut line_no = 0;
        while pos < bytes.len() {
            line_no += 1;
            let Some(newline) = bytes[pos..].iter().position(|&b| b == b'\n') else {
                // An unterminated last line: the write of that record never completed.
                break;
            };
            let line = &bytes[pos..pos + newline];
            let next = pos + newline + 1;
            if !line.iter().all(u8::is_ascii_whitespace)
                && let Err(bad) = loaded.apply(line)
            {
                let (reason, fatal) = match bad {
                    BadLine::Unreadable(reason) => (reason, false),
                    BadLine::Unsupported(reason) => (reason, true),
                };
                if fatal || bytes[next..].contains(&b'\n') {
                    return Err(StoreError::Corrupt(format!(
                        "{} line {line_no}: {reason}",
                        path.display()
                    )));
                }
                // The last complete line is unreadable: treat it as torn too.
                break;
            }
            pos = next;
            loaded.valid_len = next;
        }
        Ok(loaded)
    }

    fn apply(&mut self, line: &[u8]) -> Result<(), BadLine> {
        let record: Record = serde_json::from_slice(line).map_err(|e| {
            // A header this build cannot read (another format version) is never a torn line.
            let value = serde_json::from_slice::<serde_json::Value>(line).ok();
            if value.as_ref().and_then(|v| v.get("op")) == Some(&"header".into()) {
                BadLine::Unsupported(format!("unsupported log header: {e}"))
            } else {
                BadLine::Unreadable(e.to_string())
            }
        })?;
        let revision = record.revision();
        match record {
            Record::Header { format, version } => {
                if format != LOG_FORMAT || version != LOG_VERSION {
                    return Err(BadLine::Unsupported(format!(
                        "unsupported log format {format:?} version {version} (this build reads {LOG_FORMAT:?} version {LOG_VERSION})"
                    )));
                }
            }
            Record::Put {
                key,
                value,
                create_revision,
                mod_revision,
            } => {
                let value = BASE64.decode(value).map_err(|e| {
                    BadLine::Unreadable(format!("value of {key:?} is not base64: {e}"))
                })?;
                self.kvs.insert(
                    key.clone(),
                    KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision,
                        lease: 0,
                    },
                );
            }
            Record::Delete { key, .. } => {
                self.kvs.remove(&key);
            }
            Record::Revision { .. } => {}
        }
        self.revision = self.revision.max(revision);
        self.records += 1;
        Ok(())
    }
}

/// Why a log line could not be applied.
enum BadLine {
    /// Garbage, e.g. a torn write: tolerated as the last line.
    Unreadable(String),
    /// A valid record this build must not skip (another format version): always an error.
    Unsupported(String),
}

fn io_context(err: io::Error, action: &str, path: &Path) -> StoreError {
    StoreError::Io(io::Error::new(
        err.kind(),
        format!("{action} {}: {err}", path.display()),
    ))
}
