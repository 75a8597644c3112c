//! `StreamJobEvents`: replay from a seq, then follow live; retention gaps are announced.

use std::sync::Arc;

use super::*;
use crate::error::FunctionError;
use croupier_proto::function::v1::{self as pb, EventType, JobEvent};
use croupier_proto::json::json_to_struct;
use croupier_registry::identity::Identity;
use croupier_registry::ids::check_id;
use croupier_registry::model::now_ms;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub(super) const FOLLOW_BATCH: usize = 256;

/// Counts one subscriber while its follower runs.
struct Subscriber;

impl Subscriber {
    fn new() -> Self {
        metrics::gauge!(crate::metrics::JOB_SUBSCRIBERS).increment(1.0);
        Subscriber
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::JOB_SUBSCRIBERS).decrement(1.0);
    }
}

impl JobManager {
    /// `StreamJobEvents`: replays from `from_seq` (0 or 1: from the start), then follows live
    /// until the terminal event.
    pub async fn subscribe(
        &self,
        who: &Identity,
        job_id: &str,
        from_seq: i64,
    ) -> Result<EventStream, FunctionError> {
        check_id("job_id", job_id).map_err(FunctionError::BadRequest)?;
        if from_seq < 0 {
            return Err(FunctionError::BadRequest(format!(
                "from_seq is {from_seq}; give 0 or 1 for the whole stream, or a later seq"
            )));
        }
        let from = from_seq.max(1);
        let (tx, rx) = mpsc::channel(FOLLOW_BATCH);
        if let Some(job) = self.get(job_id) {
            let record = job.st.lock().record.clone();
            self.may_read(who, &record)?;
            croupier_proto::task::spawn("job follower", follow(job, from, tx));
            return Ok(ReceiverStream::new(rx));
        }
        let record = self
            .load_record(job_id)
            .await?
            .ok_or_else(|| not_found(job_id))?;
        self.may_read(who, &record)?;
        if let Some(fwd) = self.remote_owner(&record) {
            let req = pb::StreamJobEventsRequest {
                job_id: job_id.to_string(),
                from_seq,
                step: String::new(),
            };
            let mut remote = fwd.stream_job_events(&record.server_id, who, req).await?;
            croupier_proto::task::spawn("job follower", async move {
                let _counted = Subscriber::new();
                loop {
                    let item = tokio::select! {
                        m = remote.message() => m,
                        _ = tx.closed() => return,
                    };
                    let out = match item {
                        Ok(Some(e)) => Ok(e),
                        Ok(None) => return,
                        Err(s) => Err(s),
                    };
                    let end = out.is_err();
                    if tx.send(out).await.is_err() || end {
                        return;
                    }
                }
            });
            return Ok(ReceiverStream::new(rx));
        }
        let (events, _) = self
            .load_events(job_id)
            .await
            .map_err(FunctionError::store("reading the job's events"))?;
        croupier_proto::task::spawn("job follower", async move {
            let _counted = Subscriber::new();
            let first = events.front().map(|e| e.seq).unwrap_or(record.last_seq + 1);
            let mut next = from;
            if next < first {
                if tx.send(Ok(gap(&record.job_id, next, first))).await.is_err() {
                    return;
                }
                next = first;
            }
            for e in events.into_iter().filter(|e| e.seq >= next) {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Follows a live job for one subscriber.
pub(super) async fn follow(
    job: Arc<Job>,
    mut next: i64,
    tx: mpsc::Sender<Result<JobEvent, Status>>,
) {
    let _counted = Subscriber::new();
    let since = now_ms();
    let delivery = metrics::histogram!(crate::metrics::JOB_DELIVERY_SECONDS);
    let mut changed = job.changed.subscribe();
    loop {
        let (gap_ev, batch, caught_up_and_done, moved) = {
            let st = job.st.lock();
            let first = st.first_available();
            let gap_ev = (next < first).then(|| gap(&job.id, next, first));
            if gap_ev.is_some() {
                next = first;
            }
            let i = st.index_of(next);
            let batch: Vec<JobEvent> = st.events.range(i..).take(FOLLOW_BATCH).cloned().collect();
            let last_in_batch = batch.last().map(|e| e.seq).unwrap_or(next - 1);
            let done = st.record.status.is_terminal() && last_in_batch >= st.record.last_seq;
            let moved = st
                .moved_to
                .clone()
                .filter(|_| last_in_batch >= st.record.last_seq);
            (gap_ev, batch, done, moved)
        };
        if let Some(g) = gap_ev
            && tx.send(Ok(g)).await.is_err()
        {
            return;
        }
        let full = batch.len() == FOLLOW_BATCH;
        for e in batch {
            next = e.seq + 1;
            let live = e.received_at >= since;
            let received = e.received_at;
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
            if live {
                delivery.record((now_ms() - received).max(0) as f64 / 1000.0);
            }
        }
        if caught_up_and_done {
            return;
        }
        if let Some(server) = moved {
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "job {} moved to server {server} with its agent; resume with from_seq {next}",
                    job.id
                ))))
                .await;
            return;
        }
        if full {
            continue;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

pub(super) fn gap(job_id: &str, from: i64, next: i64) -> JobEvent {
    metrics::counter!(crate::metrics::JOB_GAPS).increment(1);
    JobEvent {
        job_id: job_id.to_string(),
        r#type: EventType::Gap as i32,
        message: format!(
            "events {from}..={} were dropped by the server's retention and cannot be replayed; \
             continuing with {next}",
            next - 1
        ),
        progress: 0.0,
        timestamp: now_ms(),
        data: Some(json_to_struct(
            &serde_json::json!({ "from_seq": from, "next_seq": next }),
        )),
        seq: 0,
        received_at: 0,
    }
}
