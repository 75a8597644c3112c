//! The open log of a persistent store: the lock on its data dir, appending records in order
//! (each one `write` of a whole line, fsynced when configured), and crash-safe rewrites
//! (temp file, fsync, rename, dir fsync) shared with `repair`, `backup` and `restore`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::super::{KeyValue, Revision, StoreError};
use super::EmbeddedOptions;
use super::read::{Contents, TornTail, read_strict};
use super::record::{LOG_VERSION_1, Record, encode_line};

/// The log file inside the data dir.
pub(super) const LOG_FILE: &str = "store.log";
/// Where a log rewrite is written before it is renamed over [`LOG_FILE`].
pub(super) const LOG_TMP_FILE: &str = "store.log.tmp";
/// The file holding the advisory lock on the data dir.
pub(super) const LOCK_FILE: &str = "LOCK";

/// The advisory lock on a data dir (`flock` on `LOCK`), held while the value lives.
#[derive(Debug)]
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it; fails with a message saying who may hold it.
    pub(super) fn acquire(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_context(e, "creating", dir))?;
        let path = dir.join(LOCK_FILE);
        let file = open_lock_file(&path)?;
        // Called through the trait: std's inherent `File::try_lock` needs a newer Rust than the
        // workspace's rust-version.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {
                // The holder's pid, for the message another process gets.
                let mut file = file;
                let _ = file.set_len(0);
                let _ = writeln!(file, "{}", std::process::id());
                Ok(DirLock { _file: file })
            }
            Err(fs4::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .map(|pid| format!(" by process {pid}"))
                    .unwrap_or_default();
                Err(StoreError::Io(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is locked{holder}: another store (another croupier server?) has \
                         this data dir open; stop it first",
                        dir.display()
                    ),
                )))
            }
            Err(fs4::TryLockError::Error(e)) => Err(io_context(e, "locking", &path)),
        }
    }

    /// Whether another process holds the lock on `dir` right now (false when there is no lock
    /// file). Probes with a shared lock that is released at once.
    pub(super) fn is_held(dir: &Path) -> Result<bool, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = match OpenOptions::new().read(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_context(e, "opening", &path)),
        };
        match fs4::FileExt::try_lock_shared(&file) {
            Ok(()) => {
                let _ = fs4::FileExt::unlock(&file);
                Ok(false)
            }
            Err(fs4::TryLockError::WouldBlock) => Ok(true),
            Err(fs4::TryLockError::Error(e)) => Err(io_context(e, "locking", &path)),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_context(e, "opening", path))
}

/// What opening a log found besides the data.
#[derive(Debug, Default)]
pub(super) struct Opened {
    pub torn: Option<TornTail>,
    /// Where the version 1 log was kept when it was converted.
    pub converted_from_v1: Option<PathBuf>,
}

/// The open log of a persistent store, and the lock on its dir.
pub(super) struct Log {
    pub(super) dir: PathBuf,
    /// `store.log`, opened for appending.
    file: File,
    /// Bytes in `file` up to the last complete record.
    len: u64,
    /// Records in `file`.
    pub(super) records: usize,
    /// The sequence number of the next record.
    next_seq: u64,
    /// Keys without a lease, i.e. the records a rewrite would hold.
    pub(super) persisted_keys: usize,
    /// The highest revision in `file`.
    pub(super) last_revision: Revision,
    /// Set when a failed append could not be undone; later appends fail rather than write after
    /// a partial line.
    broken: bool,
    fsync: bool,
    pub(super) compaction_min_records: usize,
    _lock: DirLock,
}

impl Log {
    /// Locks `dir`, reads the log back (refusing a damaged one, untouched), drops a torn last
    /// record, converts a version 1 log, and opens it for appending.
    pub(super) fn open(
        dir: &Path,
        opts: &EmbeddedOptions,
    ) -> Result<(Self, Contents, Opened), StoreError> {
        let lock = DirLock::acquire(dir)?;
        let tmp_path = dir.join(LOG_TMP_FILE);
        match fs::remove_file(&tmp_path) {
            Ok(()) => {
                tracing::warn!(path = %tmp_path.display(), "embedded store: removed an unfinished log rewrite");
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
        let read = read_strict(&bytes, &path);
        if let Some(corruption) = read.corrupt {
            return Err(StoreError::Corrupt(Box::new(corruption)));
        }
        let mut opened = Opened {
            torn: read.torn,
            converted_from_v1: None,
        };
        if let Some(torn) = &opened.torn {
            tracing::warn!(
                path = %path.display(),
                offset = torn.offset,
                dropped_bytes = torn.bytes,
                seq = ?torn.seq,
                keys = ?torn.keys,
                revision = ?torn.revision,
                "embedded store: dropping an unfinished last record (a write cut short by a crash; never acknowledged)"
            );
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_context(e, "opening", &path))?;
        let contents = read.contents;
        let mut log = Log {
            dir: dir.to_owned(),
            file,
            len: read.valid_len,
            records: read.records,
            next_seq: read.last_seq + 1,
            persisted_keys: contents.kvs.len(),
            last_revision: contents.revision,
            broken: false,
            fsync: opts.fsync,
            compaction_min_records: opts.log_compaction_min_records,
            _lock: lock,
        };
        if read.version == Some(LOG_VERSION_1) {
            // Kept as it was (torn tail included) under another name; the log becomes version 2.
            let kept = unused_path(dir, "store.log.v1", "");
            fs::hard_link(&path, &kept)
                .or_else(|_| fs::copy(&path, &kept).map(|_| ()))
                .map_err(|e| io_context(e, "keeping a copy of the version 1 log as", &kept))?;
            log.rewrite(contents.revision, contents.kvs.values())
                .map_err(|e| io_context(e, "converting the version 1 log", &path))?;
            tracing::info!(
                path = %path.display(),
                kept = %kept.display(),
                "embedded store: converted a version 1 log to version 2 (checksummed records)"
            );
            opened.converted_from_v1 = Some(kept);
            return Ok((log, contents, opened));
        }
        if read.valid_len < bytes.len() as u64 {
            log.file
                .set_len(read.valid_len)
                .and_then(|()| log.file.sync_data())
                .map_err(|e| io_context(e, "truncating", &path))?;
        }
        if log.records == 0 {
            log.append(&Record::header())
                .map_err(|e| io_context(e, "writing", &path))?;
            sync_dir(dir).map_err(|e| io_context(e, "syncing", dir))?;
        }
        if log.wants_compaction()
            && let Err(err) = log.rewrite(contents.revision, contents.kvs.values())
        {
            // The old log is still complete; the next write tries again.
            tracing::warn!(error = %err, "embedded store: log compaction failed");
        }
        Ok((log, contents, opened))
    }

    /// Whether the log holds well more records than a rewrite would.
    pub(super) fn wants_compaction(&self) -> bool {
        self.records > self.compaction_min_records && self.records > 2 * self.persisted_keys + 2
    }

    /// Appends one record as one line, then fsyncs when configured. On failure the file is cut
    /// back to its previous length.
    pub(super) fn append(&mut self, record: &Record) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the log is in an unknown state after a failed write; restart the server",
            ));
        }
        let line = encode_line(self.next_seq, record);
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
        self.next_seq += 1;
        self.last_revision = self.last_revision.max(record.revision());
        Ok(())
    }

    /// Appends the log records of one change set as one record (a `txn` when there are
    /// several); `keys_delta` is the change in persisted keys.
    pub(super) fn append_changes(
        &mut self,
        mut records: Vec<Record>,
        keys_delta: isize,
    ) -> Result<(), StoreError> {
        let record = match records.len() {
            0 => return Ok(()),
            1 => records.pop().expect("one record"),
            _ => Record::Txn { ops: records },
        };
        self.append(&record)
            .map_err(|e| io_context(e, "writing", &self.dir.join(LOG_FILE)))?;
        self.persisted_keys = self.persisted_keys.saturating_add_signed(keys_delta);
        Ok(())
    }

    /// Replaces the log with a snapshot of the persisted keys (see [`write_snapshot`]).
    pub(super) fn rewrite<'a>(
        &mut self,
        revision: Revision,
        kvs: impl Iterator<Item = &'a KeyValue>,
    ) -> io::Result<()> {
        let written = write_snapshot(&self.dir.join(LOG_FILE), revision, kvs)?;
        self.file = written.file;
        self.len = written.len;
        self.records = written.records;
        self.next_seq = written.records as u64 + 1;
        self.persisted_keys = written.keys;
        self.last_revision = revision;
        self.broken = false;
        Ok(())
    }
}

/// A log written by [`write_snapshot`], opened for appending.
pub(super) struct Written {
    pub file: File,
    pub len: u64,
    pub records: usize,
    pub keys: usize,
}

/// Writes a version 2 log holding the lease-less keys of `kvs` as of `revision` to `path`,
/// crash-safely: into `<path>.tmp`, fsynced, renamed over `path`, and the directory fsynced, so
/// `path` is always either the old file or the whole new one.
pub(super) fn write_snapshot<'a>(
    path: &Path,
    revision: Revision,
    kvs: impl Iterator<Item = &'a KeyValue>,
) -> io::Result<Written> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp_path = path.with_file_name(tmp_name);
    if let Err(e) = fs::remove_file(&tmp_path)
        && e.kind() != io::ErrorKind::NotFound
    {
        return Err(e);
    }
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&tmp_path)?;
    let puts: Vec<Record> = kvs.filter(|kv| kv.lease == 0).map(Record::put).collect();
    let mut len = 0u64;
    let mut seq = 0u64;
    {
        let mut out = BufWriter::new(&file);
        let mut write = |record: &Record| -> io::Result<()> {
            seq += 1;
            let line = encode_line(seq, record);
            out.write_all(&line)?;
            len += line.len() as u64;
            Ok(())
        };
        write(&Record::header())?;
        write(&Record::Snapshot {
            revision,
            keys: puts.len() as u64,
        })?;
        for put in &puts {
            write(put)?;
        }
        out.flush()?;
    }
    file.sync_all()?;
    fs::rename(&tmp_path, path)?;
    sync_dir(dir)?;
    Ok(Written {
        file,
        len,
        records: seq as usize,
        keys: puts.len(),
    })
}

/// Makes a rename or a new file in `dir` durable (Unix; elsewhere a no-op).
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// `dir/<stem><suffix>`, or with `-2`, `-3`… before the suffix when taken.
pub(super) fn unused_path(dir: &Path, stem: &str, suffix: &str) -> PathBuf {
    let first = dir.join(format!("{stem}{suffix}"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|n| dir.join(format!("{stem}-{n}{suffix}")))
        .find(|p| !p.exists())
        .expect("some name is free")
}

/// An I/O error that names what was being done to which path.
pub(super) fn io_context(err: io::Error, action: &str, path: &Path) -> StoreError {
    StoreError::Io(io::Error::new(
        err.kind(),
        format!("{action} {}: {err}", path.display()),
    ))
}
