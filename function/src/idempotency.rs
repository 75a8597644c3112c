//! Idempotency records (DESIGN §4). A key is scoped to (game, env, function, key) and lives in
//! the store, so the rule holds across server replicas:
//! - the first call creates a `pending` record with compare-and-set and executes;
//! - a repeat finds a `done` record and gets the stored response without executing;
//! - a concurrent repeat finds `pending` and waits (watching the record) for the outcome;
//! - the same key with a different payload is `FAILED_PRECONDITION`.
//!
//! Only outcomes where the handler ran (success or handler error) are kept. When the call fails
//! before execution (no agent, agent lost) the pending record is removed so the caller can
//! retry with the same key. When the deadline passes while the agent still runs the handler,
//! the record stays pending: the server cancels the call and waits (up to a grace period) for
//! the agent's last word; an outcome that completed is stored, a cancelled one frees the key.
//! Meanwhile a repeat waits for the outcome, or, when its own deadline comes first, gets
//! `ABORTED` ("still running"): retrying later with the same key gets the outcome. A pending record whose executor
//! died expires after the deadline plus that grace.
//!
//! Keys are shared by every caller identity: a repeat by another identity with the same key and
//! payload gets the stored outcome (it must be authorised to invoke the function).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use croupier_proto::function::v1::InvokeFunctionResponse;
use croupier_registry::keys;
use croupier_registry::model::now_ms;
use croupier_registry::store::{CasOutcome, EventKind, Expect, Revision, Store};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;

use crate::error::FunctionError;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    state: State,
    payload_hash: String,
    expires_at: i64,
    #[serde(default)]
    response: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Pending,
    Done,
}

/// What the caller must do after [`Idempotency::begin`].
pub enum Begin {
    /// Execute, then call [`Idempotency::finish`] or [`Idempotency::abandon`] with this ticket.
    Execute(Ticket),
    /// A previous call with this key completed: return this response.
    Replay(InvokeFunctionResponse),
}

/// The right to execute a keyed call.
pub struct Ticket {
    key: String,
    revision: Revision,
    payload_hash: String,
}

/// Idempotency records in a store.
pub struct Idempotency {
    store: Arc<dyn Store>,
    retention: Duration,
}

/// Hash of a payload, as stored in records (SHA-256 of its canonical JSON).
pub fn payload_hash(payload: &serde_json::Value) -> String {
    // serde_json's Map is sorted (no preserve_order feature), so this is canonical.
    let bytes = serde_json::to_vec(payload).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

impl Idempotency {
    /// Records kept for `retention` after completion.
    pub fn new(store: Arc<dyn Store>, retention: Duration) -> Self {
        Idempotency { store, retention }
    }

    /// Store key of an idempotency key; the user's key is hashed so it can hold any character.
    pub fn record_key(game: &str, env: &str, function: &str, key: &str) -> String {
        keys::idem(
            game,
            env,
            function,
            &hex::encode(Sha256::digest(key.as_bytes())),
        )
    }

    /// Claims the key or finds its outcome; waits up to `wait` for a concurrent first call. A
    /// claim stands for at most `hold` (the deadline plus the grace for a late answer) if its
    /// executor dies.
    pub async fn begin(
        &self,
        key: String,
        payload_hash: String,
        wait: Duration,
        hold: Duration,
    ) -> Result<Begin, FunctionError> {
        let deadline = tokio::time::Instant::now() + wait;
        let pending = |hash: &str| Record {
            state: State::Pending,
            payload_hash: hash.to_string(),
            expires_at: now_ms() + hold.as_millis() as i64 + 5_000,
            response: String::new(),
        };
        loop {
            let value = serde_json::to_vec(&pending(&payload_hash))
                .map_err(|e| FunctionError::Corrupt(format!("encoding record: {e}")))?;
            let outcome = self
                .store
                .compare_and_put(&key, Expect::Absent, value.clone(), None)
                .await
                .map_err(FunctionError::store("claiming the idempotency key"))?;
            let current = match outcome {
                CasOutcome::Done(revision) => {
                    return Ok(Begin::Execute(Ticket {
                        key,
                        revision,
                        payload_hash,
                    }));
                }
                CasOutcome::Conflict(None) => continue,
                CasOutcome::Conflict(Some(kv)) => kv,
            };
            let rec: Record = serde_json::from_slice(&current.value).map_err(|e| {
                FunctionError::Corrupt(format!("idempotency record unreadable: {e}"))
            })?;
            if rec.expires_at < now_ms() {
                // Expired (retention over, or its executor died): take it over.
                if let CasOutcome::Done(revision) = self
                    .store
                    .compare_and_put(&key, Expect::ModRevision(current.mod_revision), value, None)
                    .await
                    .map_err(FunctionError::store("reclaiming the idempotency key"))?
                {
                    return Ok(Begin::Execute(Ticket {
                        key,
                        revision,
                        payload_hash,
                    }));
                }
                continue;
            }
            if rec.payload_hash != payload_hash {
                metrics::counter!(crate::metrics::IDEMPOTENCY, "result" => "conflict").increment(1);
                return Err(FunctionError::IdempotencyConflict);
            }
            if rec.state == State::Done {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(rec.response.as_bytes())
                    .map_err(|e| FunctionError::Corrupt(format!("stored response: {e}")))?;
                let resp = InvokeFunctionResponse::decode(bytes.as_slice())
                    .map_err(|e| FunctionError::Corrupt(format!("stored response: {e}")))?;
                metrics::counter!(crate::metrics::IDEMPOTENCY, "result" => "replay").increment(1);
                return Ok(Begin::Replay(resp));
            }
            // Pending: wait for the first call to finish (or give up).
            self.wait_change(&key, current.mod_revision, deadline)
                .await?;
        }
    }

    async fn wait_change(
        &self,
        key: &str,
        seen: Revision,
        deadline: tokio::time::Instant,
    ) -> Result<(), FunctionError> {
        let mut watch = self
            .store
            .watch(key, seen + 1)
            .await
            .map_err(FunctionError::store("watching the idempotency key"))?;
        let timeout = || {
            FunctionError::StillRunning(
                "the first call with this idempotency key is still running; its outcome did not \
                 arrive before this call's deadline. Retry with the same key to get it (nothing \
                 runs twice)"
                    .into(),
            )
        };
        loop {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Err(_) => return Err(timeout()),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    return Err(FunctionError::store("watching the idempotency key")(e));
                }
                Ok(Some(Ok(ev))) if ev.kv.key == key => {
                    if ev.kind == EventKind::Delete || ev.kind == EventKind::Put {
                        return Ok(());
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Stores the outcome of an executed call for the retention period.
    pub async fn finish(&self, ticket: Ticket, response: &InvokeFunctionResponse) {
        let rec = Record {
            state: State::Done,
            payload_hash: ticket.payload_hash,
            expires_at: now_ms() + self.retention.as_millis() as i64,
            response: base64::engine::general_purpose::STANDARD.encode(response.encode_to_vec()),
        };
        let Ok(value) = serde_json::to_vec(&rec) else {
            return;
        };
        match self
            .store
            .compare_and_put(
                &ticket.key,
                Expect::ModRevision(ticket.revision),
                value,
                None,
            )
            .await
        {
            Ok(CasOutcome::Done(_)) => {}
            Ok(CasOutcome::Conflict(_)) => {
                tracing::warn!("idempotency record changed while executing; outcome not stored");
            }
            Err(e) => tracing::warn!(error = %e, "storing the idempotent outcome failed"),
        }
    }

    /// Removes the claim so a retry with the same key executes.
    pub async fn abandon(&self, ticket: Ticket) {
        if let Err(e) = self
            .store
            .compare_and_delete(&ticket.key, ticket.revision)
            .await
        {
            tracing::warn!(error = %e, "releasing the idempotency key failed; it expires after the deadline");
        }
    }

    /// Deletes expired records; returns how many.
    pub async fn sweep(&self) -> Result<usize, FunctionError> {
        let all = self
            .store
            .range(keys::IDEM)
            .await
            .map_err(FunctionError::store("listing idempotency records"))?;
        let now = now_ms();
        let mut removed = 0;
        for kv in all.kvs {
            let expired = serde_json::from_slice::<Record>(&kv.value)
                .map(|r| r.expires_at < now)
                .unwrap_or(true);
            if expired
                && let Ok(CasOutcome::Done(_)) = self
                    .store
                    .compare_and_delete(&kv.key, kv.mod_revision)
                    .await
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
