//! A job's state in memory: its retained events, what is stored, and how an event changes
//! the record ([`apply`]), with the byte and count retention applied as events arrive.

use std::collections::VecDeque;
use std::sync::Arc;

use super::*;
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use croupier_registry::model::now_ms;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;

/// One stored chunk of events.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunk {
    pub(super) first: i64,
    pub(super) last: i64,
}

pub(super) struct JobState {
    pub(super) record: JobRecord,
    /// Retained events, ascending seq.
    pub(super) events: VecDeque<JobEvent>,
    /// Encoded bytes of `events`.
    pub(super) bytes: usize,
    /// Highest seq stored.
    pub(super) persisted_seq: i64,
    /// Bumped on each record change; the writer stores the record when it moved.
    pub(super) record_version: u64,
    pub(super) stored_version: u64,
    pub(super) chunks: VecDeque<Chunk>,
    /// Tunnel generation the job was last seen on (0: unknown, e.g. loaded after a restart).
    pub(super) generation: u64,
    pub(super) cancel_requested: bool,
    pub(super) cancel_sent: Option<Instant>,
    /// Since when the job has waited for its agent.
    pub(super) orphan_since: Option<Instant>,
    /// When the job ended (for `linger`).
    pub(super) ended: Option<Instant>,
    /// The replica the job moved to (its agent did); followers here are told to resume there.
    pub(super) moved_to: Option<String>,
    /// The log lines of its pipeline steps still running.
    pub(super) steps: super::steps::StepLogs,
}

impl JobState {
    pub(super) fn new(record: JobRecord) -> Self {
        JobState {
            record,
            events: VecDeque::new(),
            bytes: 0,
            persisted_seq: 0,
            record_version: 0,
            stored_version: 0,
            chunks: VecDeque::new(),
            generation: 0,
            cancel_requested: false,
            cancel_sent: None,
            orphan_since: None,
            ended: None,
            moved_to: None,
            steps: Default::default(),
        }
    }

    pub(super) fn touch_record(&mut self) {
        self.record_version += 1;
    }

    /// Index of the first retained event with seq >= `seq`.
    pub(super) fn index_of(&self, seq: i64) -> usize {
        self.events.partition_point(|e| e.seq < seq)
    }

    /// Drops the oldest retained event if it is stored (and not the last one); returns its size.
    pub(super) fn prune_one(&mut self) -> Option<usize> {
        let front = self.events.front()?;
        if front.seq > self.persisted_seq || front.seq >= self.record.last_seq {
            return None;
        }
        let ev = self.events.pop_front()?;
        let n = ev.encoded_len();
        self.bytes = self.bytes.saturating_sub(n);
        Some(n)
    }

    /// Drops the oldest stored events while more than `max_events` events or `max_bytes` bytes
    /// are retained (never one that is not stored yet); returns the bytes dropped. The record's
    /// `first_seq` follows.
    pub(super) fn prune_to(&mut self, max_events: usize, max_bytes: usize) -> usize {
        let mut dropped = 0;
        while self.events.len() > max_events.max(1) || self.bytes > max_bytes {
            let Some(n) = self.prune_one() else { break };
            dropped += n;
        }
        if dropped > 0 {
            self.record.first_seq = self.first_available();
        }
        dropped
    }

    /// Takes the stored chunks that hold only events no longer retained (their keys are for
    /// the caller to delete).
    pub(super) fn take_stale_chunks(&mut self) -> Vec<Chunk> {
        let first = self.first_available();
        let mut out = Vec::new();
        while self.chunks.front().is_some_and(|c| c.last < first) {
            out.extend(self.chunks.pop_front());
        }
        out
    }

    /// Seq of the oldest event a subscriber can still get.
    pub(super) fn first_available(&self) -> i64 {
        self.events
            .front()
            .map(|e| e.seq)
            .unwrap_or(self.record.last_seq + 1)
    }
}

pub(super) struct Job {
    pub(super) id: String,
    pub(super) st: Mutex<JobState>,
    pub(super) changed: watch::Sender<()>,
}

impl Job {
    pub(super) fn new(id: String, st: JobState) -> Arc<Job> {
        Arc::new(Job {
            id,
            st: Mutex::new(st),
            changed: watch::channel(()).0,
        })
    }
}

/// Most bytes of events in one stored chunk (one event larger than this is a chunk alone).
pub(super) const CHUNK_BYTES: usize = 1 << 20;

/// Splits `events` into runs of at most `max_events` events and `max_bytes` bytes (at least
/// one event each).
pub(super) fn chunks_of(
    events: &[JobEvent],
    max_events: usize,
    max_bytes: usize,
) -> Vec<&[JobEvent]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let n = e.encoded_len();
        if i > start && (i - start >= max_events || bytes + n > max_bytes) {
            out.push(&events[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// Appends a new event to a job and applies what it means to the record; then drops the oldest
/// stored events past the job's count and byte retention. Returns the bytes added and dropped.
pub(super) fn apply(cfg: &JobConfig, st: &mut JobState, ev: JobEvent) -> (usize, usize) {
    let kind = EventType::try_from(ev.r#type).unwrap_or(EventType::Log);
    let r = &mut st.record;
    match kind {
        EventType::Start | EventType::Progress | EventType::Log | EventType::Gap => {
            if r.status == JobStatus::Pending {
                r.status = JobStatus::Running;
                r.started_at = if ev.received_at > 0 {
                    ev.received_at
                } else {
                    now_ms()
                };
                st.record_version += 1;
            }
        }
        EventType::Done | EventType::Error | EventType::Cancelled => {
            let first_end = !r.status.is_terminal();
            record_end(r, kind, &ev);
            if first_end {
                metrics::counter!(crate::metrics::JOBS_ENDED, "outcome" => r.status.as_str())
                    .increment(1);
                let secs = (r.ended_at - r.created_at).max(0) as f64 / 1000.0;
                metrics::histogram!(crate::metrics::JOB_SECONDS, "outcome" => r.status.as_str())
                    .record(secs);
            }
            st.ended = Some(Instant::now());
            st.record_version += 1;
        }
    }
    let r = &mut st.record;
    r.last_seq = ev.seq;
    if r.first_seq == 0 {
        r.first_seq = ev.seq;
    }
    metrics::counter!(crate::metrics::JOB_EVENTS).increment(1);
    let added = ev.encoded_len();
    st.bytes += added;
    st.events.push_back(ev);
    // Count and byte retention, never past what is stored.
    let dropped = st.prune_to(cfg.max_events, cfg.max_job_bytes);
    if dropped > 0 && st.bytes + dropped > cfg.max_job_bytes {
        metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "job_event_bytes").increment(1);
    }
    (added, dropped)
}

/// Writes what a terminal event means into the job's record: status, end time, result or error.
pub(super) fn record_end(r: &mut JobRecord, kind: EventType, ev: &JobEvent) {
    let data = opt_struct_to_json(ev.data.as_ref());
    r.status = match kind {
        EventType::Done => JobStatus::Completed,
        EventType::Error => JobStatus::Failed,
        _ => JobStatus::Cancelled,
    };
    r.ended_at = if ev.received_at > 0 {
        ev.received_at
    } else {
        now_ms()
    };
    if r.started_at == 0 {
        r.started_at = r.ended_at;
    }
    match kind {
        EventType::Done => r.result = data,
        _ => {
            r.error = ev.message.clone();
            r.error_code = data
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or(if kind == EventType::Cancelled {
                    "CANCELLED"
                } else {
                    "ERROR"
                })
                .to_string();
        }
    }
}

/// Keeps an event within `max_bytes`: a larger one keeps its type, seq and times, its message
/// is cut, and its data becomes a note of its size (a `DONE` whose result is dropped becomes an
/// `ERROR`, since its result is gone).
pub(super) fn bound_event(ev: &mut JobEvent, max_bytes: usize) {
    let bytes = ev.encoded_len();
    if bytes <= max_bytes {
        return;
    }
    metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "job_event_size").increment(1);
    tracing::warn!(job_id = %ev.job_id, seq = ev.seq, bytes, max_bytes, "job event too large; its data was dropped");
    let mut message = croupier_proto::limits::excerpt(&ev.message, 4096);
    let mut code = "EVENT_TOO_LARGE";
    if ev.r#type == EventType::Done as i32 {
        ev.r#type = EventType::Error as i32;
        code = "RESULT_TOO_LARGE";
        message = format!(
            "the job's result was {bytes} bytes, more than the {max_bytes} an event may hold \
             (jobs.max_event_bytes)"
        );
    }
    ev.message = message;
    ev.data = Some(json_to_struct(&serde_json::json!({
        "code": code,
        "bytes": bytes,
        "limit": max_bytes,
    })));
}

pub(super) fn is_terminal_event(kind: i32) -> bool {
    matches!(
        EventType::try_from(kind),
        Ok(EventType::Done | EventType::Error | EventType::Cancelled)
    )
}
