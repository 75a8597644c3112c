//! The writer: stores new events in chunks together with the record in one atomic write,
//! acknowledges them to the agent, and restores jobs from the store after a restart.

use std::collections::VecDeque;
use std::sync::Arc;

use super::*;
use crate::error::FunctionError;
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_registry::keys;
use croupier_registry::model::now_ms;
use croupier_registry::store::{MAX_BATCH_OPS, StoreError, WriteOp};
use prost::Message;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

impl JobManager {
    pub(super) async fn load(&self) -> Result<(), StoreError> {
        let all = self.store.range(keys::JOBS).await?;
        let mut loaded = 0;
        for kv in all.kvs {
            let Ok(record) = serde_json::from_slice::<JobRecord>(&kv.value) else {
                tracing::warn!(key = %kv.key, "unreadable job record skipped");
                continue;
            };
            if record.status.is_terminal() {
                continue;
            }
            let (events, chunks) = self.load_events(&record.job_id).await?;
            let mut st = self.restore(record, events, chunks);
            if !st.record.status.is_terminal() {
                st.orphan_since = Some(Instant::now());
            }
            let id = st.record.job_id.clone();
            let ended = st.record.status.is_terminal();
            let job = Job::new(id.clone(), st);
            self.jobs.write().insert(id, job.clone());
            if ended {
                self.mark(&job); // its record catches up with its stored terminal event
            }
            loaded += 1;
        }
        if loaded > 0 {
            tracing::info!(
                jobs = loaded,
                "unfinished jobs loaded; waiting for their agents"
            );
        }
        Ok(())
    }

    /// A job's state from its stored record and events. When the events end with a terminal
    /// event whose record update was not stored (a crash between the two writes), the job ends
    /// as that event says: it never gets a second terminal event.
    pub(super) fn restore(
        &self,
        record: JobRecord,
        events: VecDeque<JobEvent>,
        chunks: VecDeque<Chunk>,
    ) -> JobState {
        let mut st = JobState::new(record);
        if let Some(last) = events.back() {
            st.record.last_seq = st.record.last_seq.max(last.seq);
            let kind = EventType::try_from(last.r#type).unwrap_or(EventType::Log);
            if is_terminal_event(last.r#type) && !st.record.status.is_terminal() {
                tracing::info!(job_id = %st.record.job_id, "stored terminal event ends the job");
                record_end(&mut st.record, kind, last);
                st.ended = Some(Instant::now());
                st.touch_record();
            }
        }
        st.persisted_seq = st.record.last_seq;
        st.record.first_seq = events.front().map(|e| e.seq).unwrap_or(0);
        st.bytes = events.iter().map(prost::Message::encoded_len).sum();
        self.account(&st.record.agent_id, st.bytes as isize, 0);
        st.events = events;
        st.chunks = chunks;
        st
    }

    pub(super) async fn load_events(
        &self,
        job_id: &str,
    ) -> Result<(VecDeque<JobEvent>, VecDeque<Chunk>), StoreError> {
        let kvs = self.store.range(&keys::job_events(job_id)).await?.kvs;
        let mut events = VecDeque::new();
        let mut chunks = VecDeque::new();
        for kv in kvs {
            let mut buf = kv.value.as_slice();
            let start = events.len();
            while !buf.is_empty() {
                match JobEvent::decode_length_delimited(&mut buf) {
                    Ok(mut e) => {
                        if e.received_at == 0 {
                            e.received_at = now_ms(); // stored before receive times were kept
                        }
                        events.push_back(e);
                    }
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "corrupt job event chunk cut short");
                        break;
                    }
                }
            }
            if let (Some(first), Some(last)) = (events.get(start), events.back()) {
                chunks.push_back(Chunk {
                    first: first.seq,
                    last: last.seq,
                });
            }
        }
        Ok((events, chunks))
    }

    pub(super) async fn load_record(
        &self,
        job_id: &str,
    ) -> Result<Option<JobRecord>, FunctionError> {
        let kv = self
            .store
            .get(&keys::job(job_id))
            .await
            .map_err(FunctionError::store("reading the job record"))?;
        kv.map(|kv| {
            serde_json::from_slice::<JobRecord>(&kv.value)
                .map_err(|e| FunctionError::Corrupt(format!("job record {job_id}: {e}")))
        })
        .transpose()
    }

    pub(super) async fn run_writer(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.flush().await;
                    return;
                }
                _ = self.wake.notified() => {}
            }
            if !self.flush().await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Stores what changed; false when something failed (it stays dirty and is retried).
    pub(super) async fn flush(&self) -> bool {
        let ids: Vec<String> = self.dirty.lock().drain().collect();
        let mut ok = true;
        for id in ids {
            let Some(job) = self.get(&id) else { continue };
            if let Err(e) = self.persist(&job).await {
                tracing::warn!(job_id = %id, error = %e, "storing job events failed; retrying");
                self.dirty.lock().insert(id);
                ok = false;
            }
        }
        if !ok {
            self.wake.notify_one();
        }
        ok
    }

    pub(super) async fn persist(&self, job: &Job) -> Result<(), StoreError> {
        let (batch, record, agent) = {
            let st = job.st.lock();
            let from = st.index_of(st.persisted_seq + 1);
            let batch: Vec<JobEvent> = st.events.range(from..).cloned().collect();
            let record = (st.record_version != st.stored_version)
                .then(|| (st.record.clone(), st.record_version));
            (batch, record, st.record.agent_id.clone())
        };
        // The chunks and the record go in one atomic write, so a crash never leaves a record
        // without the events it counts, nor the reverse.
        let mut puts = Vec::new();
        let mut stored = Vec::new();
        for chunk in chunks_of(&batch, self.cfg.chunk_events.max(1), CHUNK_BYTES) {
            let mut buf = Vec::new();
            for e in chunk {
                e.encode_length_delimited(&mut buf)
                    .map_err(|e| StoreError::Encoding(format!("job event: {e}")))?;
            }
            let (first, last) = (&chunk[0], &chunk[chunk.len() - 1]);
            puts.push(WriteOp::put(keys::job_event_chunk(&job.id, first.seq), buf));
            stored.push(Chunk {
                first: first.seq,
                last: last.seq,
            });
        }
        if let Some((record, _)) = &record {
            let value = serde_json::to_vec(record)
                .map_err(|e| StoreError::Encoding(format!("job record: {e}")))?;
            puts.push(WriteOp::put(keys::job(&job.id), value));
        }
        // A backlog too big for one write (etcd takes about 1.5 MiB) sends its oldest chunks
        // ahead one by one; the newest chunk and the record still share the last write.
        const BATCH_BYTES: usize = 1 << 20;
        let bytes: usize = puts
            .iter()
            .map(|op| match op {
                WriteOp::Put { value, .. } => value.len(),
                WriteOp::Delete { .. } => 0,
            })
            .sum();
        if puts.len() > MAX_BATCH_OPS || bytes > BATCH_BYTES {
            let ahead = puts.len().saturating_sub(2);
            for op in puts.drain(..ahead) {
                self.store.write_all(vec![op]).await?;
            }
        }
        if !puts.is_empty() {
            self.store.write_all(puts).await?;
        }
        // What was kept past the job's budgets only because it was not stored yet goes now, and
        // so do the stored chunks that hold nothing retained: a flood of events costs the store
        // about one budget, not everything sent between two sweeps.
        let (pruned, stale) = {
            let mut st = job.st.lock();
            for chunk in stored {
                st.persisted_seq = st.persisted_seq.max(chunk.last);
                st.chunks.push_back(chunk);
            }
            if let Some((_, version)) = record {
                st.stored_version = st.stored_version.max(version);
            }
            let pruned = st.prune_to(self.cfg.max_events, self.cfg.max_job_bytes);
            (pruned, st.take_stale_chunks())
        };
        if pruned > 0 {
            self.account(&agent, -(pruned as isize), 0);
        }
        for batch in stale.chunks(MAX_BATCH_OPS) {
            let deletes = batch
                .iter()
                .map(|c| WriteOp::delete(keys::job_event_chunk(&job.id, c.first)))
                .collect();
            if let Err(e) = self.store.write_all(deletes).await {
                // Not retried here: the stored-job sweep removes them with the job's other
                // events when those age out.
                tracing::warn!(job_id = %job.id, error = %e, "dropping old job event chunks failed");
                break;
            }
        }
        if !batch.is_empty() {
            let bytes: usize = batch.iter().map(prost::Message::encoded_len).sum();
            self.account(&agent, 0, -(bytes as isize));
            self.stored.notify_waiters();
        }
        if let Some(last) = batch.last() {
            self.link.send_frame(&agent, ack_frame(&job.id, last.seq));
        }
        Ok(())
    }
}
