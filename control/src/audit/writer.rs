//! The writer task: seals records into the chain, appends them in batches, retries what it could
//! not write, rotates by size and checkpoints the head into the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::chain::{self, Head};
use super::{AuditOptions, AuditRecord, Checkpoint};

/// How often the head is checkpointed into the store (at most; only after writes).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Pause between attempts to write a batch that failed.
const RETRY_EVERY: Duration = Duration::from_millis(500);

pub(super) struct Writer {
    path: PathBuf,
    /// Appended to directly from the writer task: appends land in the page cache in
    /// microseconds, and a write through tokio's blocking pool costs two thread hand-offs per
    /// batch, which at low rates is per call.
    file: std::fs::File,
    size: u64,
    opts: AuditOptions,
    head: Head,
    checkpoint: Option<Checkpoint>,
    checkpointed: Option<Instant>,
    /// Seq of the head last checkpointed (a quiet writer checkpoints a newer head).
    checkpointed_seq: u64,
    failing: Arc<Mutex<Option<String>>>,
}

/// A record with its place in the chain, as it is written (`hash` is appended by sealing).
#[derive(serde::Serialize)]
struct Chained<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    rec: &'a AuditRecord,
}

impl Writer {
    /// Opens `path` for appending and reads the chain's head from it; a head behind the one
    /// checkpointed in the store means records were cut while the server was down, which is
    /// logged and recorded as the first new record.
    pub(super) async fn open(
        path: &Path,
        opts: AuditOptions,
        checkpoint: Option<Checkpoint>,
        failing: Arc<Mutex<Option<String>>>,
    ) -> std::io::Result<Writer> {
        let file = open_append(path).await?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let head = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || chain::read_head(&path))
                .await
                .unwrap_or_else(|_| Head::genesis())
        };
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            size,
            opts,
            head,
            checkpoint,
            checkpointed: None,
            checkpointed_seq: 0,
            failing,
        })
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<AuditRecord>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        if let Some(rec) = self.compare_with_checkpoint().await {
            self.seal_into(&rec, &mut buf);
            self.write(&mut buf).await;
        }
        loop {
            // A head newer than the checkpoint is checkpointed once the queue is quiet, so the
            // last records of a burst are covered too.
            let behind = self.checkpoint.is_some() && self.head.seq > self.checkpointed_seq;
            let first = if behind {
                match tokio::time::timeout(CHECKPOINT_EVERY, rx.recv()).await {
                    Ok(Some(rec)) => rec,
                    Ok(None) => break,
                    Err(_) => {
                        self.checkpointed = None;
                        self.maybe_checkpoint().await;
                        continue;
                    }
                }
            } else {
                match rx.recv().await {
                    Some(rec) => rec,
                    None => break,
                }
            };
            let mut next = Some(first);
            let mut n = 0u64;
            while let Some(rec) = next {
                self.seal_into(&rec, &mut buf);
                n += 1;
                next = if buf.len() < 1024 * 1024 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.write(&mut buf).await;
            metrics::counter!(crate::metrics::AUDIT_RECORDS).increment(n);
            if self.size >= self.opts.max_file_bytes
                && let Err(e) = self.rotate().await
            {
                tracing::warn!(error = %e, "rotating the audit log failed");
            }
            self.maybe_checkpoint().await;
        }
        self.checkpointed = None;
        self.maybe_checkpoint().await;
    }

    fn seal_into(&mut self, rec: &AuditRecord, buf: &mut Vec<u8>) {
        let seq = self.head.seq + 1;
        let body = serde_json::to_string(&Chained {
            seq,
            prev: &self.head.hash,
            rec,
        })
        .unwrap_or_default();
        let (line, hash) = chain::seal(&body);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.head = Head { seq, hash };
    }

    /// Writes `buf` whole, retrying until it succeeds; meanwhile the log is marked failing (so
    /// audited actions are refused) and the queue fills (so callers wait).
    async fn write(&mut self, buf: &mut Vec<u8>) {
        let mut attempt = 0u32;
        loop {
            let result = std::io::Write::write_all(&mut self.file, buf);
            match result {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::error!(error = %e, path = %self.path.display(), "writing the audit log failed; retrying");
                        metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES).increment(1);
                    }
                    *self.failing.lock() = Some(format!("{}: {e}", self.path.display()));
                    tokio::time::sleep(RETRY_EVERY).await;
                    if let Ok(f) = open_append(&self.path).await {
                        self.file = f;
                    }
                }
            }
        }
        if attempt > 0 {
            tracing::info!(path = %self.path.display(), "the audit log is written again");
            *self.failing.lock() = None;
        }
        self.size += buf.len() as u64;
        buf.clear();
    }

    /// Returns a record to write first when the file's head is behind the stored checkpoint.
    async fn compare_with_checkpoint(&self) -> Option<AuditRecord> {
        let cp = self.checkpoint.as_ref()?;
        let stored: Head = match cp.store.get(&cp.key).await {
            Ok(Some(kv)) => serde_json::from_slice(&kv.value).ok()?,
            _ => return None,
        };
        if stored.seq < self.head.seq
            || (stored.seq == self.head.seq && stored.hash == self.head.hash)
        {
            return None;
        }
        tracing::error!(
            checkpoint_seq = stored.seq,
            file_seq = self.head.seq,
            path = %self.path.display(),
            "the audit log ends before the head this server checkpointed: records were removed"
        );
        Some(
            AuditRecord::new(
                "server",
                "audit_tail_missing",
                self.path.display().to_string(),
            )
            .outcome("records missing")
            .details(serde_json::json!({
                "checkpoint": stored,
                "file_head": self.head,
            })),
        )
    }

    async fn maybe_checkpoint(&mut self) {
        let Some(cp) = &self.checkpoint else {
            return;
        };
        if self
            .checkpointed
            .is_some_and(|t| t.elapsed() < CHECKPOINT_EVERY)
        {
            return;
        }
        let value = serde_json::to_vec(&self.head).unwrap_or_default();
        match cp.store.put(&cp.key, value, None).await {
            Ok(_) => {
                self.checkpointed = Some(Instant::now());
                self.checkpointed_seq = self.head.seq;
            }
            Err(e) => tracing::warn!(error = %e, "checkpointing the audit chain head failed"),
        }
    }

    /// `audit.log` → `audit.log.1`, `.1` → `.2`, …; the oldest past `keep_files` goes.
    async fn rotate(&mut self) -> std::io::Result<()> {
        let _ = self.file.sync_all();
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let keep = self.opts.keep_files;
        if keep == 0 {
            tokio::fs::remove_file(&self.path).await?;
        } else {
            let _ = tokio::fs::remove_file(numbered(keep)).await;
            for n in (1..keep).rev() {
                let from = numbered(n);
                if tokio::fs::try_exists(&from).await.unwrap_or(false) {
                    tokio::fs::rename(&from, numbered(n + 1)).await?;
                }
            }
            tokio::fs::rename(&self.path, numbered(1)).await?;
        }
        self.file = open_append(&self.path).await?;
        self.size = 0;
        tracing::info!(path = %self.path.display(), "audit log rotated");
        Ok(())
    }
}

async fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    Ok(file.into_std().await)
}
