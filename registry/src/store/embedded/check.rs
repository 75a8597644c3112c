//! [`check`]: what a data dir's log holds and whether a store would open on it, read without
//! taking the data dir's lock. That is safe while a server runs: appends only ever extend a
//! complete prefix and a compaction renames a complete file over the log (see "Durability" in
//! the [module docs](super)), so the read is a state the store was in.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::super::{Corruption, Revision, StoreError};
use super::log::{DirLock, LOG_FILE, io_context};
use super::read::{DamagedLine, TornTail, read_salvage, read_strict};

/// What [`check`] found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The log.
    pub path: PathBuf,
    /// False when there is no log yet (a store opened there starts empty).
    pub exists: bool,
    /// The log's format version (None when empty or missing).
    pub format_version: Option<u32>,
    /// The log's size.
    pub bytes: u64,
    /// Good records read (up to the damage, if any).
    pub records: usize,
    /// Persisted keys (as of the last good record).
    pub keys: usize,
    /// Persisted keys per prefix of two levels (`/croupier/functions`, …).
    pub keys_by_prefix: BTreeMap<String, usize>,
    /// The store revision (as of the last good record).
    pub revision: Revision,
    /// True when a process (a running server) holds the data dir's lock.
    pub locked: bool,
    /// An unfinished last record: a store opening this log drops it. While a server runs this
    /// may be a write in progress.
    pub torn_tail: Option<TornTail>,
    /// The first damage: a store refuses to open this log.
    pub corruption: Option<Corruption>,
    /// With damage: records after it that are still readable (`repair --salvage` keeps them,
    /// a plain `repair` drops them).
    pub readable_after_damage: usize,
    /// With damage: every line that cannot be read.
    pub damaged_lines: Vec<DamagedLine>,
}

impl CheckReport {
    /// True when a store would refuse to open this log.
    pub fn is_corrupt(&self) -> bool {
        self.corruption.is_some()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.exists {
            return writeln!(
                f,
                "{}: no log yet (a store opened here starts empty)",
                self.path.display()
            );
        }
        let version = self
            .format_version
            .map_or("empty".to_owned(), |v| format!("format version {v}"));
        writeln!(
            f,
            "{}: {version}, {} bytes",
            self.path.display(),
            self.bytes
        )?;
        if self.locked {
            writeln!(
                f,
                "  a process (a running server?) has this data dir open: this is the state as of now"
            )?;
        }
        let upto = if self.is_corrupt() {
            " before the damage"
        } else {
            ""
        };
        writeln!(
            f,
            "{}, {}, revision {}{upto}",
            plural(self.records, "record"),
            plural(self.keys, "key"),
            self.revision
        )?;
        for (prefix, count) in &self.keys_by_prefix {
            writeln!(f, "  {prefix:<40} {count:>8}")?;
        }
        if let Some(torn) = &self.torn_tail {
            let note = if self.locked {
                "possibly a write in progress"
            } else {
                "the store drops it on open"
            };
            writeln!(f, "torn tail: {torn} ({note})")?;
        }
        match &self.corruption {
            None => writeln!(f, "ok: a store opens on this log")?,
            Some(c) => {
                writeln!(f, "CORRUPT: {c}")?;
                writeln!(
                    f,
                    "  a store refuses to open this log; after the damage {} can still be read",
                    plural(self.readable_after_damage, "record"),
                )?;
                for line in &self.damaged_lines {
                    write!(
                        f,
                        "  unreadable: line {} (byte {}, {} bytes): {}",
                        line.line, line.offset, line.bytes, line.reason
                    )?;
                    if !line.keys.is_empty() {
                        write!(f, " [key {}]", line.keys.join(", "))?;
                    }
                    writeln!(f)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads the log in `dir` (a store's data dir) and reports what it holds and whether a store
/// would open on it. Changes nothing and takes no lock (it only probes whether one is held).
pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    let path = dir.join(LOG_FILE);
    let locked = DirLock::is_held(dir)?;
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_context(e, "reading", &path)),
    };
    let exists = bytes.is_some();
    let bytes = bytes.unwrap_or_default();
    let read = read_strict(&bytes, &path);
    let mut keys_by_prefix = BTreeMap::new();
    for key in read.contents.kvs.keys() {
        *keys_by_prefix.entry(key_prefix(key)).or_insert(0) += 1;
    }
    let (readable_after_damage, damaged_lines) = match &read.corruption_offset() {
        Some(offset) => {
            let salvage = read_salvage(&bytes);
            (
                salvage.used.iter().filter(|(at, _)| at >= offset).count(),
                salvage.damaged,
            )
        }
        None => (0, Vec::new()),
    };
    Ok(CheckReport {
        path,
        exists,
        format_version: read.version,
        bytes: bytes.len() as u64,
        records: read.records,
        keys: read.contents.kvs.len(),
        keys_by_prefix,
        revision: read.contents.revision,
        locked,
        torn_tail: read.torn,
        corruption: read.corrupt,
        readable_after_damage,
        damaged_lines,
    })
}

/// `1 record`, `2 records`.
pub(super) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The first two levels of a key: `/croupier/functions/g/e/f` → `/croupier/functions`.
fn key_prefix(key: &str) -> String {
    let mut parts = key.splitn(4, '/');
    let mut prefix = String::new();
    for part in parts.by_ref().take(3) {
        if !prefix.is_empty() || !part.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
    }
    if !key.starts_with('/') {
        prefix = prefix.trim_start_matches('/').to_owned();
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn prefixes_are_two_levels() {
        assert_eq!(
            key_prefix("/croupier/functions/g/e/f"),
            "/croupier/functions"
        );
        assert_eq!(key_prefix("/croupier/nodes/a1"), "/croupier/nodes");
        assert_eq!(key_prefix("/a"), "/a");
        assert_eq!(key_prefix("plain"), "plain");
    }
}
