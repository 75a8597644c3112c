//! Reading a log back. The strict read ([`read_strict`]) is what opening the store, `check` and
//! `backup` use: it checks every record (checksum, sequence, revisions, what each record may
//! follow) and stops at the first problem, telling a torn last write ([`TornTail`]) from damage
//! ([`Corruption`]). The salvage read ([`read_salvage`]) is what `repair --salvage` uses: every
//! readable record, each key at its newest readable revision.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::super::{Corruption, KeyValue, Revision};
use super::record::{
    LOG_FORMAT, LOG_VERSION, LOG_VERSION_1, Record, decode_v1, decode_v2, decode_value,
    salvage_info, torn_tail_problem,
};

/// A last record whose write never completed (a crash in the middle of an append): it was never
/// acknowledged, so dropping it loses nothing a caller was told is stored. Opening the store
/// drops it, logs a WARN and reports it ([`EmbeddedStore::open_report`](super::EmbeddedStore::open_report)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TornTail {
    /// The log.
    pub path: PathBuf,
    /// Where the unfinished record starts.
    pub offset: u64,
    /// How many bytes it has.
    pub bytes: u64,
    /// Its sequence number, when readable.
    pub seq: Option<u64>,
    /// The keys it names, as far as readable (a cut key ends with `…`).
    pub keys: Vec<String>,
    /// The highest revision it names, when readable.
    pub revision: Option<Revision>,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ends in an unfinished record at byte {} ({} bytes",
            self.path.display(),
            self.offset,
            self.bytes
        )?;
        if let Some(seq) = self.seq {
            write!(f, "; record {seq}")?;
        }
        if !self.keys.is_empty() {
            write!(f, "; key {}", self.keys.join(", "))?;
        }
        if let Some(revision) = self.revision {
            write!(f, "; revision {revision}")?;
        }
        write!(
            f,
            "): a write cut short by a crash, never acknowledged; it is dropped"
        )
    }
}

/// The persisted keys and the store revision a log describes.
#[derive(Clone, Debug, Default)]
pub(super) struct Contents {
    pub kvs: BTreeMap<String, KeyValue>,
    pub revision: Revision,
}

/// What a strict read found.
#[derive(Debug)]
pub(super) struct StrictRead {
    /// The format version; None for an empty log.
    pub version: Option<u32>,
    /// The state up to the last good record.
    pub contents: Contents,
    /// Good records.
    pub records: usize,
    /// The sequence number of the last good record (0 for none, and in version 1).
    pub last_seq: u64,
    /// Bytes up to the end of the last good record.
    pub valid_len: u64,
    /// The dropped unfinished last record, if any.
    pub torn: Option<TornTail>,
    /// The first damage, if any: nothing at or after it was read.
    pub corrupt: Option<Corruption>,
}

impl StrictRead {
    /// Where the damage starts, if any.
    pub fn corruption_offset(&self) -> Option<u64> {
        self.corrupt.as_ref().map(|c| c.offset)
    }
}

/// One line of a log.
struct Line<'a> {
    /// 1-based.
    no: usize,
    offset: usize,
    /// Without the `\n`.
    bytes: &'a [u8],
    terminated: bool,
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut pos = 0;
    let mut no = 0;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        no += 1;
        let offset = pos;
        let (end, next, terminated) = match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(n) => (pos + n, pos + n + 1, true),
            None => (bytes.len(), bytes.len(), false),
        };
        pos = next;
        Some(Line {
            no,
            offset,
            bytes: &bytes[offset..end],
            terminated,
        })
    })
}

/// The format version of a log, from its first byte: version 1 lines are bare JSON.
fn version_of(bytes: &[u8]) -> Option<u32> {
    match bytes.first() {
        None => None,
        Some(b'{') => Some(LOG_VERSION_1),
        Some(_) => Some(LOG_VERSION),
    }
}

/// Reads `bytes` (the log at `path`) strictly; see the module docs.
pub(super) fn read_strict(bytes: &[u8], path: &Path) -> StrictRead {
    let version = version_of(bytes);
    let mut read = StrictRead {
        version,
        contents: Contents::default(),
        records: 0,
        last_seq: 0,
        valid_len: 0,
        torn: None,
        corrupt: None,
    };
    let Some(version) = version else {
        return read;
    };
    let mut replay = Replay::new(version);
    let corrupt = |line: &Line<'_>, reason: String| {
        Some(Corruption {
            path: path.to_owned(),
            line: line.no,
            offset: line.offset as u64,
            reason,
        })
    };
    for line in lines(bytes) {
        if !line.terminated {
            read.corrupt = match torn_tail(version, &line, read.last_seq, &replay, path) {
                Ok(torn) => {
                    read.torn = Some(torn);
                    None
                }
                Err(reason) => corrupt(&line, reason),
            };
            break;
        }
        if version == LOG_VERSION_1 && line.bytes.iter().all(u8::is_ascii_whitespace) {
            // Version 1 readers skipped blank lines too.
            read.valid_len = (line.offset + line.bytes.len() + 1) as u64;
            continue;
        }
        let applied = decode(version, line.bytes).and_then(|(seq, record)| {
            if let Some(seq) = seq {
                check_seq(seq, read.last_seq)?;
            }
            replay.apply(record)?;
            Ok(seq)
        });
        match applied {
            Ok(seq) => {
                read.last_seq = seq.unwrap_or(0);
                read.records += 1;
                read.valid_len = (line.offset + line.bytes.len() + 1) as u64;
            }
            Err(reason) => {
                read.corrupt = corrupt(&line, reason);
                break;
            }
        }
    }
    if read.corrupt.is_none()
        && read.torn.is_none()
        && let Some(reason) = replay.unfinished()
    {
        read.corrupt = Some(Corruption {
            path: path.to_owned(),
            line: bytes.iter().filter(|&&b| b == b'\n').count() + 1,
            offset: bytes.len() as u64,
            reason,
        });
    }
    read.contents = replay.contents;
    read
}

fn decode(version: u32, line: &[u8]) -> Result<(Option<u64>, Record), String> {
    if version == LOG_VERSION_1 {
        decode_v1(line).map(|record| (None, record))
    } else {
        decode_v2(line).map(|(seq, record)| (Some(seq), record))
    }
}

fn check_seq(seq: u64, last: u64) -> Result<(), String> {
    let expected = last + 1;
    if seq == expected {
        Ok(())
    } else if seq > expected {
        let missing = seq - expected;
        Err(format!(
            "record {seq} follows record {last}: {missing} record{} missing (lines were deleted)",
            if missing == 1 { " is" } else { "s are" }
        ))
    } else {
        Err(format!(
            "record {seq} follows record {last}: records are out of order or repeated"
        ))
    }
}

/// The unterminated last line as a torn write, or why it cannot be one.
fn torn_tail(
    version: u32,
    line: &Line<'_>,
    last_seq: u64,
    replay: &Replay,
    path: &Path,
) -> Result<TornTail, String> {
    if let Some(problem) = torn_tail_problem(version, line.bytes) {
        return Err(problem);
    }
    if let Some(reason) = replay.unfinished() {
        // Snapshots are written whole before they replace a log: never torn.
        return Err(format!("the log is cut off: {reason}"));
    }
    let (seq, keys, revision) = match decode(version, line.bytes) {
        Ok((seq, record)) => (seq, record.keys(), Some(record.revision())),
        Err(_) => {
            let (seq, keys, revision) = salvage_info(line.bytes);
            // A sequence number is whole once the space after it was written.
            let whole =
                version != LOG_VERSION_1 && line.bytes.len() > 9 && line.bytes[9..].contains(&b' ');
            (seq.filter(|_| whole), keys, revision)
        }
    };
    if let Some(seq) = seq
        && version != LOG_VERSION_1
        && seq != last_seq + 1
    {
        return Err(format!(
            "the unterminated last line says it is record {seq}, but record {} comes next",
            last_seq + 1
        ));
    }
    Ok(TornTail {
        path: path.to_owned(),
        offset: line.offset as u64,
        bytes: line.bytes.len() as u64,
        seq,
        keys,
        revision,
    })
}

/// Applies records in order, checking what each may follow.
struct Replay {
    version: u32,
    contents: Contents,
    records: usize,
    /// The revision of the last record after the snapshot (or of the snapshot).
    last_revision: Revision,
    /// A snapshot being read.
    snapshot: Option<SnapshotRead>,
}

struct SnapshotRead {
    revision: Revision,
    /// Keys still to come (version 2), None in version 1 (it ends at the first newer record).
    remaining: Option<u64>,
    keys: u64,
    last_key: Option<String>,
}

impl Replay {
    fn new(version: u32) -> Self {
        Replay {
            version,
            contents: Contents::default(),
            records: 0,
            last_revision: 0,
            snapshot: None,
        }
    }

    /// Why the log may not end here.
    fn unfinished(&self) -> Option<String> {
        match &self.snapshot {
            Some(SnapshotRead {
                remaining: Some(n),
                keys,
                ..
            }) if *n > 0 => Some(format!(
                "it ends inside its snapshot: {n} of its {keys} keys are missing"
            )),
            _ => None,
        }
    }

    /// Applies the next record, or says why it cannot come here.
    fn apply(&mut self, record: Record) -> Result<(), String> {
        self.apply_at(self.records, record)?;
        self.records += 1;
        Ok(())
    }

    /// Applies a record that has `position` records before it.
    fn apply_at(&mut self, position: usize, record: Record) -> Result<(), String> {
        if position == 0 {
            match &record {
                Record::Header { format, version }
                    if format == LOG_FORMAT && *version == self.version => {}
                Record::Header { format, version } => {
                    return Err(format!(
                        "unsupported log format {format:?} version {version} in a {} header \
                         (this build reads {LOG_FORMAT:?} version 1, bare JSON lines, and \
                         version 2, checksummed lines)",
                        if self.version == LOG_VERSION_1 {
                            "bare JSON"
                        } else {
                            "checksummed"
                        }
                    ));
                }
                other => {
                    return Err(format!(
                        "the log does not start with its header record (found a {} record)",
                        other.op()
                    ));
                }
            }
            return Ok(());
        }
        if let Some(snap) = &mut self.snapshot {
            match (&record, snap.remaining) {
                (Record::Put { .. }, Some(n)) if n > 0 => {
                    check_snapshot_put(snap, &record)?;
                    snap.remaining = Some(n - 1);
                    return self.insert(record);
                }
                (Record::Put { mod_revision, .. }, None) if *mod_revision <= snap.revision => {
                    check_snapshot_put(snap, &record)?;
                    return self.insert(record);
                }
                (other, Some(n)) if n > 0 => {
                    return Err(format!(
                        "the snapshot holds {n} more key{} but a {} record comes first",
                        if n == 1 { "" } else { "s" },
                        other.op()
                    ));
                }
                _ => self.snapshot = None,
            }
        }
        match record {
            Record::Header { .. } => Err("a second header record".into()),
            Record::Snapshot { revision, keys } => {
                if position != 1 {
                    return Err("a snapshot record anywhere but right after the header".into());
                }
                if revision < 0 {
                    return Err(format!("a snapshot at revision {revision}"));
                }
                self.snapshot = Some(SnapshotRead {
                    revision,
                    remaining: Some(keys),
                    keys,
                    last_key: None,
                });
                self.last_revision = revision;
                self.bump(revision);
                Ok(())
            }
            Record::Revision { revision } => {
                self.check_rises(revision)?;
                if position == 1 && self.version == LOG_VERSION_1 {
                    // A rewritten version 1 log: the puts of its snapshot follow.
                    self.snapshot = Some(SnapshotRead {
                        revision,
                        remaining: None,
                        keys: 0,
                        last_key: None,
                    });
                }
                self.last_revision = revision;
                self.bump(revision);
                Ok(())
            }
            Record::Put { .. } | Record::Delete { .. } => {
                let mut last = self.last_revision;
                self.check_change(&record, &mut last)?;
                self.change(record)
            }
            Record::Txn { ops } => {
                if ops.is_empty() {
                    return Err("an empty txn record".into());
                }
                let mut last = self.last_revision;
                let mut keys = std::collections::BTreeSet::new();
                for op in &ops {
                    if !matches!(op, Record::Put { .. } | Record::Delete { .. }) {
                        return Err(format!("a txn record holding a {} record", op.op()));
                    }
                    for key in op.keys() {
                        if !keys.insert(key.clone()) {
                            return Err(format!("a txn record writing {key:?} twice"));
                        }
                    }
                    self.check_change(op, &mut last)?;
                }
                for op in ops {
                    self.change(op)?;
                }
                Ok(())
            }
        }
    }

    /// Checks a put or delete after the snapshot: its revision rises above `last` (then becomes
    /// `last`), and it fits the key's current state.
    fn check_change(&self, record: &Record, last: &mut Revision) -> Result<(), String> {
        let revision = record.revision();
        if revision <= *last {
            return Err(format!(
                "revision {revision} does not follow revision {last}: records are out of order"
            ));
        }
        *last = revision;
        match record {
            Record::Put {
                key,
                value,
                create_revision,
                mod_revision,
            } => {
                if *create_revision < 1 || create_revision > mod_revision {
                    return Err(format!(
                        "{key:?} was created at revision {create_revision}, after its change at \
                         revision {mod_revision}"
                    ));
                }
                if let Some(current) = self.contents.kvs.get(key)
                    && current.create_revision != *create_revision
                {
                    return Err(format!(
                        "{key:?} exists since revision {}, but this change says it was created at \
                         revision {create_revision} (a record is missing)",
                        current.create_revision
                    ));
                }
                decode_value(key, value)?;
                Ok(())
            }
            Record::Delete { key, .. } => {
                if !self.contents.kvs.contains_key(key) {
                    return Err(format!(
                        "deletes {key:?}, which does not exist (a record is missing)"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn check_rises(&self, revision: Revision) -> Result<(), String> {
        if revision <= self.last_revision {
            return Err(format!(
                "revision {revision} does not follow revision {}: records are out of order",
                self.last_revision
            ));
        }
        Ok(())
    }

    /// Applies a checked put or delete.
    fn change(&mut self, record: Record) -> Result<(), String> {
        self.last_revision = self.last_revision.max(record.revision());
        self.insert(record)
    }

    /// Applies a put or delete to the contents.
    fn insert(&mut self, record: Record) -> Result<(), String> {
        let revision = record.revision();
        match record {
            Record::Put {
                key,
                value,
                create_revision,
                mod_revision,
            } => {
                let value = decode_value(&key, &value)?;
                self.contents.kvs.insert(
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
                self.contents.kvs.remove(&key);
            }
            _ => {}
        }
        self.bump(revision);
        Ok(())
    }

    fn bump(&mut self, revision: Revision) {
        self.contents.revision = self.contents.revision.max(revision);
    }
}

fn check_snapshot_put(snap: &mut SnapshotRead, record: &Record) -> Result<(), String> {
    let Record::Put {
        key,
        create_revision,
        mod_revision,
        ..
    } = record
    else {
        return Ok(());
    };
    if snap.last_key.as_ref().is_some_and(|last| key <= last) {
        return Err(format!(
            "snapshot key {key:?} does not sort after {:?}: records are out of order",
            snap.last_key.as_deref().unwrap_or_default()
        ));
    }
    if *mod_revision > snap.revision || *create_revision < 1 || create_revision > mod_revision {
        return Err(format!(
            "snapshot key {key:?} has revisions {create_revision}..{mod_revision}, outside the \
             snapshot's 1..{}",
            snap.revision
        ));
    }
    snap.last_key = Some(key.clone());
    Ok(())
}

/// A line a salvage read could not use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedLine {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of its start.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// Why it could not be used.
    pub reason: String,
    /// Keys still readable in it (a cut key ends with `…`).
    pub keys: Vec<String>,
}

/// What a salvage read found.
#[derive(Debug, Default)]
pub(super) struct Salvage {
    pub contents: Contents,
    /// Records used.
    pub records: usize,
    /// Lines that could not be used.
    pub damaged: Vec<DamagedLine>,
    /// The records used: where each starts and the keys it writes.
    pub used: Vec<(u64, Vec<String>)>,
}

/// Reads every line of `bytes` on its own and keeps each key at its newest readable revision;
/// see the module docs. An unterminated last line is never used (it was never acknowledged).
pub(super) fn read_salvage(bytes: &[u8]) -> Salvage {
    let mut out = Salvage::default();
    // The newest revision seen per key, deletes included.
    let mut newest: HashMap<String, Revision> = HashMap::new();
    for line in lines(bytes) {
        if line.bytes.iter().all(u8::is_ascii_whitespace) && line.terminated {
            continue;
        }
        let decoded = decode_v2(line.bytes)
            .map(|(_, record)| record)
            .or_else(|e2| decode_v1(line.bytes).map_err(|_| e2))
            .and_then(|record| {
                if line.terminated {
                    Ok(record)
                } else {
                    Err("an unfinished last write (never acknowledged)".into())
                }
            });
        let record = match decoded {
            Ok(record) => record,
            Err(reason) => {
                out.damaged.push(DamagedLine {
                    line: line.no,
                    offset: line.offset as u64,
                    bytes: line.bytes.len() as u64 + u64::from(line.terminated),
                    reason,
                    keys: salvage_info(line.bytes).1,
                });
                continue;
            }
        };
        out.records += 1;
        out.used.push((line.offset as u64, record.keys()));
        out.contents.revision = out.contents.revision.max(record.revision());
        let ops = match record {
            Record::Txn { ops } => ops,
            other => vec![other],
        };
        for op in ops {
            let revision = op.revision();
            match op {
                Record::Put {
                    key,
                    value,
                    create_revision,
                    mod_revision,
                } => {
                    if newest.get(&key).is_some_and(|&n| n >= mod_revision) {
                        continue;
                    }
                    let Ok(value) = decode_value(&key, &value) else {
                        continue;
                    };
                    newest.insert(key.clone(), revision);
                    out.contents.kvs.insert(
                        key.clone(),
                        KeyValue {
                            key,
                            value,
                            create_revision: create_revision.clamp(1, mod_revision.max(1)),
                            mod_revision,
                            lease: 0,
                        },
                    );
                }
                Record::Delete { key, revision } => {
                    if newest.get(&key).is_some_and(|&n| n >= revision) {
                        continue;
                    }
                    newest.insert(key.clone(), revision);
                    out.contents.kvs.remove(&key);
                }
                _ => {}
            }
        }
    }
    out
}
