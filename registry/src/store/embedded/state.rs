//! The state behind the store's one mutex: the key map, the leases and their deadlines, and how
//! a change is made: planned, written to the log as one record, then applied and delivered to
//! watchers (see [`super::watch`] for history and watchers).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::super::{
    CasOutcome, EventKind, Expect, KeyValue, LeaseId, Revision, StoreError, WatchEvent, WriteOp,
    check_batch,
};
use super::EmbeddedOptions;
use super::log::Log;
use super::record::Record;
use super::watch::Watcher;

/// A granted lease.
pub(super) struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// Everything the store's mutex guards.
pub(super) struct State {
    pub(super) opts: EmbeddedOptions,
    pub(super) revision: Revision,
    pub(super) kvs: BTreeMap<String, KeyValue>,
    pub(super) leases: HashMap<LeaseId, Lease>,
    /// Lease deadlines, earliest first.
    deadlines: BTreeSet<(Instant, LeaseId)>,
    /// Seeds lease ids; random per process so ids are not reused across restarts.
    lease_ids: RandomState,
    lease_seq: u64,
    /// Past events with contiguous revisions `first_kept..=revision` (fewer when empty).
    pub(super) history: VecDeque<WatchEvent>,
    /// Bytes of values held in `history`.
    pub(super) history_bytes: usize,
    /// The oldest revision a watch may start from.
    pub(super) first_kept: Revision,
    pub(super) watchers: HashMap<u64, Watcher>,
    pub(super) next_watcher: u64,
    pub(super) log: Option<Log>,
    pub(super) expiry_task: Option<JoinHandle<()>>,
    /// Set by `close`: a persistent store that was closed refuses writes.
    closed: bool,
}

/// One planned change, at its own revision.
enum Change {
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    Delete {
        prev: KeyValue,
        revision: Revision,
    },
}

impl Change {
    /// What the log must hold for the change, and how it changes the count of persisted keys.
    fn log_record(&self) -> (Option<Record>, isize) {
        match self {
            Change::Put { kv, prev } => {
                let prev_persisted = prev.as_ref().is_some_and(|p| p.lease == 0);
                match (kv.lease == 0, prev_persisted) {
                    (true, true) => (Some(Record::put(kv)), 0),
                    (true, false) => (Some(Record::put(kv)), 1),
                    // The key now lives on a lease: it must not come back after a restart.
                    (false, true) => (
                        Some(Record::Delete {
                            key: kv.key.clone(),
                            revision: kv.mod_revision,
                        }),
                        -1,
                    ),
                    (false, false) => (None, 0),
                }
            }
            Change::Delete { prev, revision } if prev.lease == 0 => (
                Some(Record::Delete {
                    key: prev.key.clone(),
                    revision: *revision,
                }),
                -1,
            ),
            // Lease keys are never in the log.
            Change::Delete { .. } => (None, 0),
        }
    }
}

impl State {
    pub(super) fn new(
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
            history_bytes: 0,
            first_kept: revision + 1,
            watchers: HashMap::new(),
            next_watcher: 0,
            log,
            expiry_task: None,
            closed: false,
        }
    }

    /// Closes the store: records the revision, releases the data dir, ends every watch.
    pub(super) fn close(&mut self) -> Option<JoinHandle<()>> {
        self.closed = self.log.is_some() || self.closed;
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

    /// Plans a put at the revision after `self.revision + taken`.
    fn plan_put(&self, key: &str, value: Vec<u8>, lease: LeaseId, taken: i64) -> Change {
        let prev = self.kvs.get(key).cloned();
        let revision = self.revision + taken + 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            lease,
        };
        Change::Put { kv, prev }
    }

    /// Writes the changes to the log as one record (nothing is applied if that fails), then
    /// applies them in order and tells the watchers. Returns the revision after them.
    fn commit(&mut self, changes: Vec<Change>) -> Result<Revision, StoreError> {
        if self.closed {
            return Err(StoreError::Unavailable(
                "the embedded store is closed (the server is stopping)".into(),
            ));
        }
        if let Some(log) = self.log.as_mut() {
            let mut records = Vec::new();
            let mut delta = 0;
            for change in &changes {
                let (record, d) = change.log_record();
                records.extend(record);
                delta += d;
            }
            log.append_changes(records, delta)?;
        }
        for change in changes {
            match change {
                Change::Put { kv, prev } => {
                    let key = kv.key.clone();
                    self.revision = kv.mod_revision;
                    if let Some(prev) = &prev
                        && prev.lease != 0
                        && prev.lease != kv.lease
                        && let Some(old) = self.leases.get_mut(&prev.lease)
                    {
                        old.keys.remove(&key);
                    }
                    if kv.lease != 0
                        && let Some(l) = self.leases.get_mut(&kv.lease)
                    {
                        l.keys.insert(key.clone());
                    }
                    self.kvs.insert(key, kv.clone());
                    self.emit(WatchEvent {
                        kind: EventKind::Put,
                        kv,
                        prev,
                    });
                }
                Change::Delete { prev, revision } => {
                    self.kvs.remove(&prev.key);
                    self.revision = revision;
                    if prev.lease != 0
                        && let Some(l) = self.leases.get_mut(&prev.lease)
                    {
                        l.keys.remove(&prev.key);
                    }
                    self.emit(delete_event(revision, prev));
                }
            }
        }
        self.maybe_compact_log();
        Ok(self.revision)
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let lease = lease.unwrap_or(0);
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(StoreError::LeaseNotFound(lease));
        }
        let change = self.plan_put(key, value, lease, 0);
        self.commit(vec![change])
    }

    pub(super) fn delete(&mut self, key: &str) -> Result<Option<Revision>, StoreError> {
        let Some(prev) = self.kvs.get(key).cloned() else {
            return Ok(None);
        };
        let revision = self.revision + 1;
        self.commit(vec![Change::Delete { prev, revision }])
            .map(Some)
    }

    /// Applies a batch: each change at the next revision, all in one log record.
    pub(super) fn write_all(&mut self, ops: Vec<WriteOp>) -> Result<Revision, StoreError> {
        check_batch(&ops)?;
        let mut changes = Vec::with_capacity(ops.len());
        for op in ops {
            let taken = changes.len() as i64;
            match op {
                WriteOp::Put { key, value } => changes.push(self.plan_put(&key, value, 0, taken)),
                WriteOp::Delete { key } => {
                    if let Some(prev) = self.kvs.get(&key).cloned() {
                        changes.push(Change::Delete {
                            prev,
                            revision: self.revision + taken + 1,
                        });
                    }
                }
            }
        }
        self.commit(changes)
    }

    pub(super) fn compare(&self, key: &str, expect: &Expect) -> Result<(), CasOutcome> {
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

    pub(super) fn grant_lease(&mut self, ttl: Duration, now: Instant) -> LeaseId {
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

    pub(super) fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<(), StoreError> {
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
    pub(super) fn end_lease(&mut self, id: LeaseId) {
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
    pub(super) fn expire_due(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(lease = id, "embedded store: lease expired");
            self.end_lease(id);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    fn maybe_compact_log(&mut self) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if !log.wants_compaction() {
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
