//! Offline maintenance of a data dir: [`repair`] (rewrite a damaged log from its good records,
//! keeping the original), [`backup`] (a consistent snapshot, also while a server runs) and
//! [`restore`] (install a backup, keeping the previous log). Every rewrite is crash-safe (temp
//! file, fsync, rename, dir fsync) and is read back before the call reports success.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::super::{Corruption, Revision, StoreError};
use super::check::plural;
use super::log::{DirLock, LOG_FILE, io_context, sync_dir, unused_path, write_snapshot};
use super::read::{Contents, DamagedLine, StrictRead, read_salvage, read_strict};

/// Which records [`repair`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairMode {
    /// Every record before the first damage: a state the store really was in. Records after
    /// the damage are dropped even when readable (they may depend on what was lost).
    Prefix,
    /// Every readable record, each key at its newest readable revision: the most data, but a
    /// key whose delete was in a damaged record comes back, and the whole may be a state the
    /// store never was in.
    Salvage,
}

impl fmt::Display for RepairMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RepairMode::Prefix => "prefix",
            RepairMode::Salvage => "salvage",
        })
    }
}

/// What [`repair`] did.
#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    /// The log.
    pub path: PathBuf,
    /// Which records were kept.
    pub mode: RepairMode,
    /// The copy of the original log; None when there was nothing to repair (nothing was
    /// written then).
    pub backup: Option<PathBuf>,
    /// What was wrong: the damage, or the torn last record.
    pub problem: Option<String>,
    /// Records kept.
    pub kept_records: usize,
    /// Keys in the repaired log.
    pub keys: usize,
    /// The repaired log's revision: the highest revision readable anywhere in the original, so
    /// revisions keep rising.
    pub revision: Revision,
    /// Bytes of the original that were not used.
    pub dropped_bytes: u64,
    /// Unreadable lines that were dropped.
    pub dropped_lines: Vec<DamagedLine>,
    /// Readable records that were dropped (after the damage, in prefix mode).
    pub dropped_readable_records: usize,
    /// Keys named by anything dropped: their values may be older than they were, or gone.
    pub dropped_keys: BTreeSet<String>,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(backup) = &self.backup else {
            return writeln!(
                f,
                "{}: intact; nothing to repair (nothing was changed)",
                self.path.display()
            );
        };
        if let Some(problem) = &self.problem {
            writeln!(f, "found: {problem}")?;
        }
        writeln!(f, "kept the original as {}", backup.display())?;
        let why = match self.mode {
            RepairMode::Prefix => {
                "every record before the damage (a state the store was in; --salvage would also \
                 keep the readable records after it)"
            }
            RepairMode::Salvage => {
                "every readable record, each key at its newest readable revision (--salvage)"
            }
        };
        writeln!(
            f,
            "rewrote {}: kept {}, {}, revision {}: {why}",
            self.path.display(),
            plural(self.kept_records, "record"),
            plural(self.keys, "key"),
            self.revision
        )?;
        writeln!(
            f,
            "dropped {}: {}, {}",
            plural(self.dropped_bytes as usize, "byte"),
            plural(self.dropped_lines.len(), "unreadable line"),
            plural(self.dropped_readable_records, "readable record"),
        )?;
        for line in &self.dropped_lines {
            writeln!(
                f,
                "  line {} (byte {}, {} bytes): {}",
                line.line, line.offset, line.bytes, line.reason
            )?;
        }
        if !self.dropped_keys.is_empty() {
            let keys: Vec<&str> = self.dropped_keys.iter().map(String::as_str).collect();
            writeln!(
                f,
                "keys touched by what was dropped (check them): {}",
                keys.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Repairs the log in `dir` (a store's data dir), which no store may have open: keeps a copy of
/// the original next to it (`store.log.<UTC time>.bak`), then rewrites the log from the records
/// `mode` keeps and reports what was dropped. An intact log is left alone.
pub fn repair(dir: &Path, mode: RepairMode) -> Result<RepairReport, StoreError> {
    let _lock = DirLock::acquire(dir)?;
    let path = dir.join(LOG_FILE);
    let bytes = fs::read(&path).map_err(|e| io_context(e, "reading", &path))?;
    let strict = read_strict(&bytes, &path);
    let problem = match (&strict.corrupt, &strict.torn) {
        (Some(c), _) => c.to_string(),
        (None, Some(torn)) => torn.to_string(),
        (None, None) => {
            return Ok(RepairReport {
                path,
                mode,
                backup: None,
                problem: None,
                kept_records: strict.records,
                keys: strict.contents.kvs.len(),
                revision: strict.contents.revision,
                dropped_bytes: 0,
                dropped_lines: Vec::new(),
                dropped_readable_records: 0,
                dropped_keys: BTreeSet::new(),
            });
        }
    };
    let cut = strict
        .corruption_offset()
        .or(strict.torn.as_ref().map(|t| t.offset))
        .unwrap_or(bytes.len() as u64);
    let salvage = read_salvage(&bytes);
    let revision = strict.contents.revision.max(salvage.contents.revision);
    let (kept, kept_records, dropped_lines, dropped_readable, dropped_bytes) = match mode {
        RepairMode::Prefix => {
            let dropped_lines: Vec<DamagedLine> = salvage
                .damaged
                .iter()
                .filter(|l| l.offset >= cut)
                .cloned()
                .collect();
            let dropped_readable: Vec<&(u64, Vec<String>)> =
                salvage.used.iter().filter(|(at, _)| *at >= cut).collect();
            let mut keys: BTreeSet<String> = dropped_readable
                .iter()
                .flat_map(|(_, keys)| keys.iter().cloned())
                .collect();
            keys.extend(dropped_lines.iter().flat_map(|l| l.keys.iter().cloned()));
            (
                strict.contents,
                strict.records,
                (dropped_lines, keys),
                dropped_readable.len(),
                bytes.len() as u64 - cut,
            )
        }
        RepairMode::Salvage => {
            let keys = salvage
                .damaged
                .iter()
                .flat_map(|l| l.keys.iter().cloned())
                .collect();
            let dropped_bytes = salvage.damaged.iter().map(|l| l.bytes).sum();
            (
                salvage.contents,
                salvage.records,
                (salvage.damaged, keys),
                0,
                dropped_bytes,
            )
        }
    };
    let (dropped_lines, dropped_keys) = dropped_lines;
    let backup = keep_copy(dir, &path)?;
    install(&path, revision, &kept)?;
    Ok(RepairReport {
        path,
        mode,
        backup: Some(backup),
        problem: Some(problem),
        kept_records,
        keys: kept.kvs.len(),
        revision,
        dropped_bytes,
        dropped_lines,
        dropped_readable_records: dropped_readable,
        dropped_keys,
    })
}

/// What [`backup`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    /// The log read.
    pub source: PathBuf,
    /// The backup file.
    pub out: PathBuf,
    /// Keys in the backup.
    pub keys: usize,
    /// The store revision the backup is a snapshot of.
    pub revision: Revision,
    /// True when a process (a running server) had the data dir open.
    pub live: bool,
    /// Bytes of an unfinished last record that were left out (a write in progress, or a torn
    /// record the store would drop on open).
    pub unfinished_bytes: u64,
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backed up {} to {}: {} at revision {}",
            self.source.display(),
            self.out.display(),
            plural(self.keys, "key"),
            self.revision
        )?;
        if self.live {
            write!(f, " (taken from a running store)")?;
        }
        if self.unfinished_bytes > 0 {
            write!(
                f,
                "; left out an unfinished last record of {} bytes",
                self.unfinished_bytes
            )?;
        }
        writeln!(f)
    }
}

/// Writes a consistent snapshot of the store in `dir` to `out`, also while a server has `dir`
/// open (the lock is not taken; see "Durability" in the module docs): every complete record up
/// to the end of the log as read now, as a version 2 log holding one put per key, written
/// crash-safely and read back. A damaged log is refused with [`StoreError::Corrupt`].
pub fn backup(dir: &Path, out: &Path) -> Result<BackupReport, StoreError> {
    let source = dir.join(LOG_FILE);
    let live = DirLock::is_held(dir)?;
    // One open file: should a compaction rename a new log over this one meanwhile, this still
    // reads the old one, which was complete when it was replaced.
    let bytes = match fs::read(&source) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::Io(io::Error::new(
                e.kind(),
                format!(
                    "there is no store log at {}: give the data dir of a server that has run",
                    source.display()
                ),
            )));
        }
        Err(e) => return Err(io_context(e, "reading", &source)),
    };
    let read = read_strict(&bytes, &source);
    if let Some(corruption) = read.corrupt {
        return Err(StoreError::Corrupt(Box::new(corruption)));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| io_context(e, "creating", parent))?;
    if fs::canonicalize(parent).ok() == fs::canonicalize(dir).ok() {
        // A rename over the live log would cut a running store off from its own file.
        return Err(StoreError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is inside the store's own directory {}: write the backup elsewhere",
                out.display(),
                dir.display()
            ),
        )));
    }
    install(out, read.contents.revision, &read.contents)?;
    Ok(BackupReport {
        source,
        out: out.to_owned(),
        keys: read.contents.kvs.len(),
        revision: read.contents.revision,
        live,
        unfinished_bytes: read.torn.map_or(0, |t| t.bytes),
    })
}

/// What [`restore`] did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The restored log.
    pub path: PathBuf,
    /// The backup it came from.
    pub from: PathBuf,
    /// Keys restored.
    pub keys: usize,
    /// The restored store's revision: the backup's, or the replaced log's if that was higher
    /// (revisions keep rising in a data dir).
    pub revision: Revision,
    /// Where the replaced log was kept, if there was one.
    pub previous: Option<PathBuf>,
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(previous) = &self.previous {
            writeln!(f, "kept the previous log as {}", previous.display())?;
        }
        writeln!(
            f,
            "restored {} from {}: {}, revision {}",
            self.path.display(),
            self.from.display(),
            plural(self.keys, "key"),
            self.revision
        )
    }
}

/// Replaces the log in `dir` (a store's data dir, created if needed; no store may have it open)
/// with the backup `from`, after checking the backup whole. The replaced log is kept next to it
/// as `store.log.<UTC time>.bak`.
pub fn restore(dir: &Path, from: &Path) -> Result<RestoreReport, StoreError> {
    let bytes = fs::read(from).map_err(|e| io_context(e, "reading the backup", from))?;
    let read = read_strict(&bytes, from);
    let refuse = |line: usize, offset: u64, reason: String| {
        StoreError::Corrupt(Box::new(Corruption {
            path: from.to_owned(),
            line,
            offset,
            reason,
        }))
    };
    if let Some(corruption) = read.corrupt {
        return Err(StoreError::Corrupt(Box::new(corruption)));
    }
    if let Some(torn) = &read.torn {
        return Err(refuse(
            read.records + 1,
            torn.offset,
            format!(
                "the backup ends in an unfinished record of {} bytes: it is incomplete (a cut \
                 copy?); take it again",
                torn.bytes
            ),
        ));
    }
    if read.version.is_none() {
        return Err(refuse(1, 0, "the backup is empty".into()));
    }
    let _lock = DirLock::acquire(dir)?;
    let path = dir.join(LOG_FILE);
    let (previous, floor) = match fs::read(&path) {
        Ok(old) => (
            Some(keep_copy(dir, &path)?),
            read_salvage(&old).contents.revision,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
        Err(e) => return Err(io_context(e, "reading", &path)),
    };
    let revision = read.contents.revision.max(floor);
    install(&path, revision, &read.contents)?;
    Ok(RestoreReport {
        path,
        from: from.to_owned(),
        keys: read.contents.kvs.len(),
        revision,
        previous,
    })
}

/// Writes `contents` at `revision` as the log `path`, crash-safely, and reads it back.
fn install(path: &Path, revision: Revision, contents: &Contents) -> Result<(), StoreError> {
    write_snapshot(path, revision, contents.kvs.values())
        .map_err(|e| io_context(e, "writing", path))?;
    let written = fs::read(path).map_err(|e| io_context(e, "reading back", path))?;
    let check: StrictRead = read_strict(&written, path);
    if let Some(corruption) = check.corrupt {
        return Err(StoreError::Corrupt(Box::new(corruption)));
    }
    if check.torn.is_some() || check.contents.kvs != contents.kvs {
        return Err(StoreError::Io(io::Error::other(format!(
            "{} does not read back as written; check the disk",
            path.display()
        ))));
    }
    Ok(())
}

/// Keeps the file at `path` as `<name>.<UTC time>.bak` beside it (a hard link, else a copy).
fn keep_copy(dir: &Path, path: &Path) -> Result<PathBuf, StoreError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let kept = unused_path(dir, &format!("{name}.{stamp}"), ".bak");
    fs::hard_link(path, &kept)
        .or_else(|_| fs::copy(path, &kept).map(|_| ()))
        .map_err(|e| io_context(e, "keeping a copy as", &kept))?;
    sync_dir(dir).map_err(|e| io_context(e, "syncing", dir))?;
    Ok(kept)
}
