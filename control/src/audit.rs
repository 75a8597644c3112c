//! The audit log: one JSON line per invocation and admin action (who, what, when, outcome), with
//! payload fields marked sensitive masked. Writing never blocks a request: records go through a
//! bounded queue to a writer task; when the queue is full the record is counted as dropped and a
//! warning is logged.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
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
    /// Extra details (payload with sensitive fields masked, reason…).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// Handle to the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditRecord>>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// An audit log that writes nothing (tests, benchmarks).
    pub fn disabled() -> Self {
        AuditLog {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Appends records to `path` from a background task.
    pub async fn to_file(path: &Path) -> std::io::Result<Self> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(8192);
        tokio::spawn(async move {
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
                if let Err(e) = file.write_all(&buf).await {
                    tracing::warn!(error = %e, "writing the audit log failed");
                }
                let _ = file.flush().await;
            }
        });
        Ok(AuditLog {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records one entry.
    pub fn record(&self, rec: AuditRecord) {
        if let Some(tx) = &self.tx
            && tx.try_send(rec).is_err()
        {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit log queue full; records dropped");
            }
        }
    }

    /// True when records are written somewhere.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }
}

/// Returns `payload` with the named top-level fields replaced by `"***"`.
pub fn mask(payload: &serde_json::Value, sensitive: &[String]) -> serde_json::Value {
    match payload {
        serde_json::Value::Object(map) if !sensitive.is_empty() => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if sensitive.iter().any(|s| s == k) {
                        serde_json::Value::String("***".into())
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_sensitive_fields() {
        let p = json!({"player": "p1", "token": "secret"});
        assert_eq!(
            mask(&p, &["token".to_string()]),
            json!({"player": "p1", "token": "***"})
        );
    }

    #[tokio::test]
    async fn writes_json_lines() {
        let dir = std::env::temp_dir().join(format!("croupier-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let log = AuditLog::to_file(&path).await.unwrap();
        log.record(AuditRecord {
            at: 1,
            who: "spiffe://croupier/admin/ops".into(),
            action: "set_node_state",
            target: "a1".into(),
            outcome: "ok".into(),
            details: json!({"state": "maintenance"}),
        });
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["action"], "set_node_state");
        assert_eq!(line["details"]["state"], "maintenance");
        std::fs::remove_dir_all(&dir).ok();
    }
}
