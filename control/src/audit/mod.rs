//! The audit log: one sealed JSON line per invocation and admin action (who, on behalf of whom,
//! what, where, when, outcome), chained by hash so that a changed, removed or reordered line is
//! found ([`chain`]).
//!
//! A record never holds a whole payload or result: it holds its SHA-256 and size, and an excerpt
//! of at most [`AuditOptions::max_payload_bytes`] with sensitive fields masked at any depth
//! ([`payload_summary`]); cut excerpts are counted. The file is rotated by size
//! (`audit.log` → `audit.log.1` → …, keeping [`AuditOptions::keep_files`]), so the log cannot
//! fill the disk; the chain runs on across files.
//!
//! Nothing is dropped: records go through a bounded queue to one writer task, and a full queue
//! makes [`AuditLog::record`] wait (backpressure) up to [`AuditOptions::write_timeout`]. When the
//! writer cannot write (a full or failing disk), it keeps the records and retries, the queue
//! fills, and [`AuditLog::admit`] refuses audited actions until it writes again (fail closed,
//! unless [`AuditOptions::fail_closed`] is off). The writer checkpoints the chain's head into the
//! store every second, so a tail cut while the server was down is found too.

pub mod chain;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use croupier_registry::store::Store;
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub at: i64,
    /// Identity of the actor (spiffe URI).
    pub who: String,
    /// The identity the actor acted for (an approved call runs for its requester).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub on_behalf_of: String,
    /// Action, e.g. "invoke", "set_node_state", "register_agent".
    pub action: &'static str,
    /// Target: function id, agent id…
    pub target: String,
    /// The game/env the action was in, when it had one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// "ok" or the error.
    pub outcome: String,
    /// Extra details (payload and result summaries, reason…).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// The W3C trace id of the request that did it ("" outside a traced request).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
}

impl AuditRecord {
    /// A record of `action` on `target` by `who`, now, with outcome "ok" and no details.
    pub fn new(who: impl Into<String>, action: &'static str, target: impl Into<String>) -> Self {
        AuditRecord {
            at: croupier_registry::model::now_ms(),
            who: who.into(),
            on_behalf_of: String::new(),
            action,
            target: target.into(),
            scope: String::new(),
            outcome: "ok".into(),
            details: serde_json::Value::Null,
            trace_id: croupier_proto::trace::current_trace_id(),
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

    /// Sets the scope (`game/env`).
    pub fn scope(mut self, game: &str, env: &str) -> Self {
        self.scope = format!("{game}/{env}");
        self
    }

    /// Sets the identity the actor acted for.
    pub fn on_behalf_of(mut self, who: impl Into<String>) -> Self {
        self.on_behalf_of = who.into();
        self
    }
}

/// Bounds and behaviour of the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// Most bytes of a payload excerpt in one record. Default 4096.
    pub max_payload_bytes: usize,
    /// The file is rotated when it passes this size. Default 100 MiB.
    pub max_file_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `.N`). Default 10.
    pub keep_files: usize,
    /// Refuse audited actions while records cannot be written. Default true.
    pub fail_closed: bool,
    /// Longest a record waits for room in the queue before it counts as lost. Default 5 s.
    pub write_timeout: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_payload_bytes: 4096,
            max_file_bytes: 100 * 1024 * 1024,
            keep_files: 10,
            fail_closed: true,
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the writer checkpoints the chain's head.
#[derive(Clone)]
pub struct Checkpoint {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The key (`keys::audit_head(server_id)`).
    pub key: String,
}

/// Handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Option<Arc<Inner>>,
    opts: AuditOptions,
    counts: Arc<Counts>,
}

struct Inner {
    tx: mpsc::Sender<AuditRecord>,
    path: PathBuf,
    /// Why the writer cannot write now (None: it can).
    failing: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct Counts {
    lost: AtomicU64,
    truncated: AtomicU64,
}

/// Queue size between callers and the writer.
const QUEUE: usize = 8192;

impl AuditLog {
    /// An audit log that writes nothing (tests, benchmarks).
    pub fn disabled() -> Self {
        AuditLog {
            inner: None,
            opts: AuditOptions::default(),
            counts: Arc::default(),
        }
    }

    /// Appends records to `path` from a background task, with default bounds, no checkpoint.
    pub async fn to_file(path: &Path) -> std::io::Result<Self> {
        Self::to_file_with(path, AuditOptions::default(), None).await
    }

    /// Appends records to `path` from a background task, continuing the chain of what the file
    /// holds, rotating it by size and checkpointing its head into `checkpoint`.
    pub async fn to_file_with(
        path: &Path,
        opts: AuditOptions,
        checkpoint: Option<Checkpoint>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<AuditRecord>(QUEUE);
        let failing = Arc::new(Mutex::new(None));
        let writer = writer::Writer::open(path, opts, checkpoint, failing.clone()).await?;
        croupier_proto::task::spawn("audit writer", writer.run(rx));
        Ok(AuditLog {
            inner: Some(Arc::new(Inner {
                tx,
                path: path.to_path_buf(),
                failing,
            })),
            opts,
            counts: Arc::default(),
        })
    }

    /// Records one entry, waiting for room in the queue (backpressure) up to the write timeout.
    /// A record that still finds no room is counted as lost, with an error logged and a metric.
    pub async fn record(&self, rec: AuditRecord) {
        let Some(inner) = &self.inner else {
            return;
        };
        match tokio::time::timeout(self.opts.write_timeout, inner.tx.reserve()).await {
            Ok(Ok(permit)) => permit.send(rec),
            _ => {
                let n = self.counts.lost.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!(crate::metrics::AUDIT_LOST).increment(1);
                if n.is_power_of_two() {
                    tracing::error!(
                        lost = n,
                        action = rec.action,
                        target = %rec.target,
                        "audit record lost: the writer has not taken records for {:?}",
                        self.opts.write_timeout
                    );
                }
            }
        }
    }

    /// Whether audited actions may run now: with `fail_closed`, not while the writer cannot
    /// write or its queue is full. The error says why, for the caller's status.
    pub fn admit(&self) -> Result<(), String> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if !self.opts.fail_closed {
            return Ok(());
        }
        if let Some(why) = inner.failing.lock().clone() {
            return Err(format!(
                "the audit log cannot be written ({why}); audited actions are refused until it                  can (server config audit.fail_closed)"
            ));
        }
        if inner.tx.capacity() == 0 {
            return Err(
                "the audit log's queue is full; audited actions are refused until the writer                  catches up (server config audit.fail_closed)"
                    .into(),
            );
        }
        Ok(())
    }

    /// True when records are written somewhere.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The file records go to.
    pub fn path(&self) -> Option<&Path> {
        self.inner.as_ref().map(|i| i.path.as_path())
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

    /// Records lost (no room in the queue within the write timeout), and payload excerpts cut,
    /// so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.lost.load(Ordering::Relaxed),
            self.counts.truncated.load(Ordering::Relaxed),
        )
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
