//! The audit log: one JSON line per invocation and admin action (who, what, when, outcome).
//!
//! A record never holds a whole payload: it holds the payload's SHA-256 and size, and an excerpt
//! of at most [`AuditOptions::max_payload_bytes`] with sensitive fields masked at any depth
//! ([`payload_summary`]); cut excerpts are counted. The file is rotated by size
//! (`audit.log` → `audit.log.1` → …, keeping [`AuditOptions::keep_files`]), so the log cannot
//! fill the disk. Writing never blocks a request: records go through a bounded queue to a writer
//! task; when the queue is full the record is counted as dropped and a warning is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub at: i64,
    /// Identity of the actor (spiffe URI).
    pub who: String,
    /// Action, e.g. "invoke", "set_node_state", "register_agent".
    pub action: &'static str,
    /// Target: function id, agent id…
    pub target: String,
    /// "ok" or the error.
    pub outcome: String,
    /// Extra details (payload summary, reason…).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl AuditRecord {
    /// A record of `action` on `target` by `who`, now, with outcome "ok" and no details.
    pub fn new(who: impl Into<String>, action: &'static str, target: impl Into<String>) -> Self {
        AuditRecord {
            at: croupier_registry::model::now_ms(),
            who: who.into(),
            action,
            target: target.into(),
            outcome: "ok".into(),
            details: serde_json::Value::Null,
        }
    }

    /// Sets the outcome ("ok", or what went wrong).
    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// Bounds of the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// Most bytes of a payload excerpt in one record. Default 4096.
    pub max_payload_bytes: usize,
    /// The file is rotated when it passes this size. Default 100 MiB.
    pub max_file_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `.N`). Default 10.
    pub keep_files: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_payload_bytes: 4096,
            max_file_bytes: 100 * 1024 * 1024,
            keep_files: 10,
        }
    }
}

/// Handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditRecord>>,
    opts: AuditOptions,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    dropped: AtomicU64,
    truncated: AtomicU64,
}

impl AuditLog {
    /// An audit log that writes nothing (tests, benchmarks).
    pub fn disabled() -> Self {
        AuditLog {
            tx: None,
            opts: AuditOptions::default(),
            counts: Arc::default(),
        }
    }

    /// Appends records to `path` from a background task, with default bounds.
    pub async fn to_file(path: &Path) -> std::io::Result<Self> {
        Self::to_file_with(path, AuditOptions::default()).await
    }

    /// Appends records to `path` from a background task, rotating it by size.
    pub async fn to_file_with(path: &Path, opts: AuditOptions) -> std::io::Result<Self> {
        let file = open_append(path).await?;
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = mpsc::channel::<AuditRecord>(8192);
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            size,
            opts,
        };
        croupier_proto::task::spawn("audit writer", writer.run(rx));
        Ok(AuditLog {
            tx: Some(tx),
            opts,
            counts: Arc::default(),
        })
    }

    /// Records one entry.
    pub fn record(&self, rec: AuditRecord) {
        if let Some(tx) = &self.tx
            && tx.try_send(rec).is_err()
        {
            let n = self.counts.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit log queue full; records dropped");
            }
        }
    }

    /// True when records are written somewhere.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// A payload as a record holds it (see [`payload_summary`]), counting cut excerpts.
    pub fn payload(&self, payload: &serde_json::Value, sensitive: &[String]) -> serde_json::Value {
        let (summary, cut) = payload_summary(payload, sensitive, self.opts.max_payload_bytes);
        if cut {
            self.counts.truncated.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "audit_payload").increment(1);
        }
        summary
    }

    /// Records dropped because the queue was full, and payload excerpts cut, so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.dropped.load(Ordering::Relaxed),
            self.counts.truncated.load(Ordering::Relaxed),
        )
    }
}

async fn open_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

struct Writer {
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    opts: AuditOptions,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<AuditRecord>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            buf.clear();
            let mut next = Some(first);
            while let Some(rec) = next {
                if serde_json::to_writer(&mut buf, &rec).is_ok() {
                    buf.push(b'\n');
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = self.file.write_all(&buf).await {
                tracing::warn!(error = %e, "writing the audit log failed");
            }
            let _ = self.file.flush().await;
            self.size += buf.len() as u64;
            if self.size >= self.opts.max_file_bytes
                && let Err(e) = self.rotate().await
            {
                tracing::warn!(error = %e, "rotating the audit log failed");
            }
        }
    }

    /// `audit.log` → `audit.log.1`, `.1` → `.2`, …; the oldest past `keep_files` goes.
    async fn rotate(&mut self) -> std::io::Result<()> {
        let _ = self.file.sync_all().await;
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

/// What a record holds of a payload: `{"sha256", "bytes", "excerpt"}`, the excerpt being the
/// payload with the named fields masked at any depth, as JSON text cut to `max_bytes` (with
/// `"truncated": true` when cut). Returns the summary and whether it was cut.
pub fn payload_summary(
    payload: &serde_json::Value,
    sensitive: &[String],
    max_bytes: usize,
) -> (serde_json::Value, bool) {
    let full = serde_json::to_vec(payload).unwrap_or_default();
    let digest = hex::encode(Sha256::digest(&full));
    let masked = mask(payload, sensitive);
    let mut text = serde_json::to_string(&masked).unwrap_or_default();
    let cut = text.len() > max_bytes;
    if cut {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let mut summary = serde_json::json!({
        "sha256": digest,
        "bytes": full.len(),
        "excerpt": text,
    });
    if cut {
        summary["truncated"] = serde_json::Value::Bool(true);
    }
    (summary, cut)
}

/// Returns `payload` with the fields named in `sensitive` replaced by `"***"`, at any depth.
pub fn mask(payload: &serde_json::Value, sensitive: &[String]) -> serde_json::Value {
    if sensitive.is_empty() {
        return payload.clone();
    }
    match payload {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if sensitive.iter().any(|s| s == k) {
                        serde_json::Value::String("***".into())
                    } else {
                        mask(v, sensitive)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(|v| mask(v, sensitive)).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_sensitive_fields_at_any_depth() {
        let p = json!({"player": "p1", "token": "secret", "auth": {"token": "s2"}, "l": [{"token": 1}]});
        assert_eq!(
            mask(&p, &["token".to_string()]),
            json!({"player": "p1", "token": "***", "auth": {"token": "***"}, "l": [{"token": "***"}]})
        );
    }

    #[test]
    fn a_summary_holds_a_digest_and_a_bounded_excerpt() {
        let p = json!({"blob": "x".repeat(10_000), "password": "hunter2"});
        let (s, cut) = payload_summary(&p, &["password".into()], 100);
        assert!(cut);
        assert_eq!(s["truncated"], true);
        assert!(s["excerpt"].as_str().unwrap().len() <= 100);
        assert_eq!(s["sha256"].as_str().unwrap().len(), 64);
        assert!(s["bytes"].as_u64().unwrap() > 10_000);
        let (s, cut) = payload_summary(&json!({"password": "hunter2"}), &["password".into()], 100);
        assert!(!cut);
        assert!(!s["excerpt"].as_str().unwrap().contains("hunter2"), "{s}");
    }

    async fn read_until(path: &Path, want: impl Fn(&str) -> bool) -> String {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if want(&text) {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{} never matched", path.display());
    }

    fn record(n: usize) -> AuditRecord {
        AuditRecord::new(
            "spiffe://croupier/admin/ops",
            "set_node_state",
            format!("a{n}"),
        )
        .details(json!({"state": "maintenance"}))
    }

    #[tokio::test]
    async fn writes_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::to_file(&path).await.unwrap();
        log.record(record(1));
        let text = read_until(&path, |t| !t.is_empty()).await;
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["action"], "set_node_state");
        assert_eq!(line["details"]["state"], "maintenance");
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let opts = AuditOptions {
            max_file_bytes: 4096,
            keep_files: 2,
            ..Default::default()
        };
        let log = AuditLog::to_file_with(&path, opts).await.unwrap();
        for n in 0..200 {
            log.record(record(n));
            if n % 20 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let rotated = dir.path().join("audit.log.2");
        read_until(&rotated, |t| !t.is_empty()).await;
        assert!(!dir.path().join("audit.log.3").exists());
        for f in ["audit.log.1", "audit.log.2"] {
            let len = std::fs::metadata(dir.path().join(f)).unwrap().len();
            assert!(len < 4096 + 64 * 1024, "{f}: {len}");
        }
    }
}
