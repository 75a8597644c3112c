//! The sweeper: orphaned jobs, repeated cancels, age retention, and the stored jobs' retention.

use std::sync::Arc;

use super::*;
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_proto::json::json_to_struct;
use croupier_registry::keys;
use croupier_registry::model::now_ms;
use croupier_registry::store::{CasOutcome, Expect, StoreError};
use prost::Message;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

impl JobManager {
    pub(super) async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_store_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sweep_live().await;
            if last_store_sweep.elapsed() >= Duration::from_secs(15) {
                last_store_sweep = Instant::now();
                if let Err(e) = self.sweep_stored().await {
                    tracing::warn!(error = %e, "sweeping finished jobs failed");
                }
            }
        }
    }

    /// Ends orphaned jobs, repeats unanswered cancels, applies retention to live jobs and lets
    /// finished ones go from memory.
    pub(super) async fn sweep_live(&self) {
        let now_wall = now_ms();
        let age_limit = now_wall - self.cfg.max_event_age.as_millis() as i64;
        let mut drop_chunks: Vec<String> = Vec::new();
        for job in self.live() {
            let mut orphaned = false;
            let mut resend_cancel = false;
            let mut release = false;
            {
                let mut st = job.st.lock();
                if st.record.status.is_terminal() {
                    release = st.ended.is_some_and(|t| t.elapsed() >= self.cfg.linger)
                        && st.persisted_seq >= st.record.last_seq
                        && st.stored_version == st.record_version;
                } else {
                    let has_session = self.link.has_session(&st.record.agent_id);
                    if !has_session && st.orphan_since.is_none() {
                        st.orphan_since = Some(Instant::now());
                    }
                    orphaned = st
                        .orphan_since
                        .is_some_and(|t| t.elapsed() >= self.cfg.orphan_after);
                    resend_cancel = st.cancel_requested
                        && has_session
                        && st
                            .cancel_sent
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
                }
                // Age retention (by the server's receive time), never past what is stored.
                let mut pruned = 0;
                while st.events.front().is_some_and(|e| e.received_at < age_limit) {
                    let Some(n) = st.prune_one() else { break };
                    pruned += n;
                }
                if pruned > 0 {
                    st.record.first_seq = st.first_available();
                    let agent = st.record.agent_id.clone();
                    self.account(&agent, -(pruned as isize), 0);
                }
                drop_chunks.extend(
                    st.take_stale_chunks()
                        .into_iter()
                        .map(|c| keys::job_event_chunk(&job.id, c.first)),
                );
            }
            if orphaned {
                let agent = job.st.lock().record.agent_id.clone();
                tracing::warn!(job_id = %job.id, agent_id = %agent, "job orphaned: agent did not come back");
                self.end(
                    &job,
                    EventType::Error,
                    format!(
                        "agent lost: {agent} did not reconnect and report the job within {:?}",
                        self.cfg.orphan_after
                    ),
                    "AGENT_LOST",
                );
            } else if resend_cancel {
                self.send_cancel(&job);
            } else if release {
                self.remove(&job.id);
            }
        }
        for key in drop_chunks {
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(key = %key, error = %e, "dropping an old job event chunk failed");
            }
        }
    }

    /// Retention of finished jobs in the store: events go after `max_event_age`, records after
    /// `record_retention`.
    pub(super) async fn sweep_stored(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let records = self.store.range(keys::JOBS).await?;
        for kv in records.kvs {
            let Ok(mut r) = serde_json::from_slice::<JobRecord>(&kv.value) else {
                continue;
            };
            if self.get(&r.job_id).is_some() {
                continue;
            }
            if !r.status.is_terminal() {
                self.end_abandoned(r, kv.mod_revision, now).await?;
                continue;
            }
            let age = now - r.ended_at;
            let drop_record = age > self.cfg.record_retention.as_millis() as i64;
            let drop_events = age > self.cfg.max_event_age.as_millis() as i64;
            if (drop_record || drop_events) && r.first_seq <= r.last_seq {
                for c in self.store.range(&keys::job_events(&r.job_id)).await?.kvs {
                    self.store.delete(&c.key).await?;
                }
            }
            if drop_record {
                for c in self.store.range(&keys::job_steps(&r.job_id)).await?.kvs {
                    self.store.delete(&c.key).await?;
                }
                self.store
                    .compare_and_delete(&kv.key, kv.mod_revision)
                    .await?;
            } else if drop_events && r.first_seq <= r.last_seq {
                r.first_seq = r.last_seq + 1;
                if let Ok(value) = serde_json::to_vec(&r) {
                    self.store
                        .compare_and_put(&kv.key, Expect::ModRevision(kv.mod_revision), value, None)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Ends a stored, unfinished job that no server runs: its server is gone and its agent did
    /// not come back anywhere (else the agent's new server would have adopted it). Compare-and-
    /// set on the record, so only one replica does it.
    pub(super) async fn end_abandoned(
        &self,
        mut r: JobRecord,
        mod_revision: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let Some(fwd) = self.forwarder.as_ref() else {
            return Ok(());
        };
        let abandoned = r.server_id != fwd.server_id()
            && !fwd.is_remote_server(&r.server_id)
            && !fwd.agent_known(&r.agent_id)
            && now - r.created_at > self.cfg.orphan_after.as_millis() as i64;
        if !abandoned {
            return Ok(());
        }
        let (events, _) = self.load_events(&r.job_id).await?;
        if let Some(last) = events.back().filter(|e| is_terminal_event(e.r#type)) {
            // It ended, and only its record missed the news: the record catches up.
            let kind = EventType::try_from(last.r#type).unwrap_or(EventType::Error);
            record_end(&mut r, kind, last);
            r.last_seq = r.last_seq.max(last.seq);
            let value = serde_json::to_vec(&r)
                .map_err(|e| StoreError::Encoding(format!("job record: {e}")))?;
            self.store
                .compare_and_put(
                    &keys::job(&r.job_id),
                    Expect::ModRevision(mod_revision),
                    value,
                    None,
                )
                .await?;
            return Ok(());
        }
        let seq = events
            .back()
            .map(|e| e.seq)
            .unwrap_or(r.last_seq)
            .max(r.last_seq)
            + 1;
        let message = format!(
            "agent lost: {} did not come back after its server {} went away",
            r.agent_id, r.server_id
        );
        let ev = JobEvent {
            job_id: r.job_id.clone(),
            r#type: EventType::Error as i32,
            message: message.clone(),
            progress: 0.0,
            timestamp: now,
            data: Some(json_to_struct(&serde_json::json!({ "code": "AGENT_LOST" }))),
            seq,
            received_at: now,
        };
        r.status = JobStatus::Failed;
        r.ended_at = now;
        r.error = message;
        r.error_code = "AGENT_LOST".into();
        r.last_seq = seq;
        let value =
            serde_json::to_vec(&r).map_err(|e| StoreError::Encoding(format!("job record: {e}")))?;
        if let CasOutcome::Done(_) = self
            .store
            .compare_and_put(
                &keys::job(&r.job_id),
                Expect::ModRevision(mod_revision),
                value,
                None,
            )
            .await?
        {
            let mut buf = Vec::new();
            ev.encode_length_delimited(&mut buf)
                .map_err(|e| StoreError::Encoding(format!("job event: {e}")))?;
            self.store
                .put(&keys::job_event_chunk(&r.job_id, seq), buf, None)
                .await?;
            tracing::warn!(job_id = %r.job_id, agent_id = %r.agent_id, server_id = %r.server_id, "abandoned job ended: agent lost");
        }
        Ok(())
    }
}
