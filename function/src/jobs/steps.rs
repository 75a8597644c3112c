//! Pipeline step logs (GameNodeServer design §1.2.3–§1.2.4): a step's log lines (the job's
//! `LOG` events whose data names the step) are gathered as they arrive; when the step ends
//! `COMPLETED` or `FAILED` its whole log is stored with the job (under
//! `/croupier-events/steps/{job}/`, kept as long as the job's record), bounded to
//! [`MAX_STEP_LOG_BYTES`] (the oldest lines go first, and are counted); a `CANCELLED` step's
//! log is not kept. `GetStepLog` reads it; `StreamJobEvents` with `step` follows one step live.

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::error::FunctionError;
use croupier_proto::function::v1::{self as pb, EventType, JobEvent};
use croupier_proto::json::opt_struct_to_json;
use croupier_registry::identity::Identity;
use croupier_registry::ids::check_id;
use croupier_registry::model::now_ms;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Most bytes of one step's stored log.
pub const MAX_STEP_LOG_BYTES: usize = 1 << 20;

/// The log lines of the steps running in one job.
#[derive(Default)]
pub(super) struct StepLogs {
    steps: HashMap<String, Lines>,
}

#[derive(Default)]
struct Lines {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: u64,
}

/// A step's log as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLogRecord {
    /// The job.
    pub job_id: String,
    /// The step's name.
    pub step: String,
    /// Its position in the pipeline.
    pub index: i64,
    /// COMPLETED or FAILED.
    pub status: String,
    /// The lines, oldest first.
    pub lines: Vec<String>,
    /// Older lines dropped to stay within [`MAX_STEP_LOG_BYTES`].
    pub dropped_lines: u64,
    /// When the step ended, Unix ms.
    pub ended_at: i64,
}

/// What a job event says about a step: `(step, Some(status, index))` for a status event,
/// `(step, None)` for one of its log lines.
fn step_of(ev: &JobEvent) -> Option<(String, Option<(String, i64)>)> {
    if ev.r#type != EventType::Log as i32 {
        return None;
    }
    let data = opt_struct_to_json(ev.data.as_ref());
    let step = data["step"].as_str()?.to_string();
    let status = data["status"]
        .as_str()
        .map(|s| (s.to_string(), data["index"].as_i64().unwrap_or(0)));
    Some((step, status))
}

impl StepLogs {
    /// Takes one event of the job: a step's log line is kept; a step's end returns its log to
    /// store (COMPLETED, FAILED) or drops it (CANCELLED).
    pub(super) fn observe(&mut self, job_id: &str, ev: &JobEvent) -> Option<StepLogRecord> {
        let (step, status) = step_of(ev)?;
        let Some((status, index)) = status else {
            let l = self.steps.entry(step).or_default();
            l.bytes += ev.message.len();
            l.lines.push_back(ev.message.clone());
            while l.bytes > MAX_STEP_LOG_BYTES {
                let Some(old) = l.lines.pop_front() else {
                    break;
                };
                l.bytes -= old.len();
                l.dropped += 1;
            }
            return None;
        };
        match status.as_str() {
            "COMPLETED" | "FAILED" => {
                let l = self.steps.remove(&step).unwrap_or_default();
                Some(StepLogRecord {
                    job_id: job_id.to_string(),
                    step,
                    index,
                    status,
                    lines: l.lines.into(),
                    dropped_lines: l.dropped,
                    ended_at: now_ms(),
                })
            }
            "CANCELLED" => {
                self.steps.remove(&step);
                None
            }
            _ => None,
        }
    }
}

impl JobManager {
    /// Stores a finished step's log (in the background; a failure is logged).
    pub(super) fn store_step_log(&self, rec: StepLogRecord) {
        let store = self.store.clone();
        croupier_proto::task::spawn("step log", async move {
            let key = keys::job_step(&rec.job_id, rec.index);
            let Ok(value) = serde_json::to_vec(&rec) else {
                return;
            };
            if let Err(e) = store.put(&key, value, None).await {
                tracing::warn!(job_id = %rec.job_id, step = %rec.step, error = %e, "storing a step log failed");
            }
        });
    }

    /// `StreamJobEvents` with its `step` filter: [`JobManager::subscribe`], and with a step
    /// only that step's events, ending when the step does.
    pub async fn subscribe_step(
        &self,
        who: &Identity,
        job_id: &str,
        from_seq: i64,
        step: &str,
    ) -> Result<EventStream, FunctionError> {
        let stream = self.subscribe(who, job_id, from_seq).await?;
        Ok(if step.is_empty() {
            stream
        } else {
            only_step(stream, step.to_string())
        })
    }

    /// `GetStepLog`: a finished step's stored log, for those who may read the job.
    pub async fn step_log(
        &self,
        who: &Identity,
        job_id: &str,
        step: &str,
    ) -> Result<pb::GetStepLogResponse, FunctionError> {
        check_id("job_id", job_id).map_err(FunctionError::BadRequest)?;
        let record = match self.get(job_id) {
            Some(job) => job.st.lock().record.clone(),
            None => self
                .load_record(job_id)
                .await?
                .ok_or_else(|| not_found(job_id))?,
        };
        self.may_read(who, &record)?;
        let stored = self
            .store
            .range(&keys::job_steps(job_id))
            .await
            .map_err(FunctionError::store("reading the job's step logs"))?;
        let mut names = Vec::new();
        for kv in stored.kvs {
            let Ok(rec) = serde_json::from_slice::<StepLogRecord>(&kv.value) else {
                continue;
            };
            if rec.step == step {
                return Ok(pb::GetStepLogResponse {
                    step: rec.step,
                    index: rec.index,
                    status: rec.status,
                    lines: rec.lines,
                    dropped_lines: rec.dropped_lines as i64,
                    ended_at: rec.ended_at,
                });
            }
            names.push(rec.step);
        }
        Err(FunctionError::StepLogNotFound(format!(
            "job {job_id} has no stored log of step {step:?} (logs are kept for steps that \
             completed or failed; still running: follow it with `croupier job logs {job_id} \
             --step {step} --follow`). Stored: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )))
    }
}

/// Only the events of one step from `inner`: its status events and log lines, gaps, and the
/// job's terminal event; ends after the step's last status (COMPLETED, FAILED, CANCELLED).
pub(super) fn only_step(mut inner: EventStream, step: String) -> EventStream {
    use tokio_stream::StreamExt;
    let (tx, rx) = mpsc::channel(follow::FOLLOW_BATCH);
    croupier_proto::task::spawn("step follower", async move {
        while let Some(item) = inner.next().await {
            let (keep, last) = match &item {
                Err(_) => (true, true),
                Ok(ev) => {
                    let kind = EventType::try_from(ev.r#type).unwrap_or(EventType::Log);
                    match step_of(ev) {
                        Some((s, status)) if s == step => (
                            true,
                            status.is_some_and(|(st, _)| {
                                matches!(st.as_str(), "COMPLETED" | "FAILED" | "CANCELLED")
                            }),
                        ),
                        Some(_) => (false, false),
                        None if kind == EventType::Gap => (true, false),
                        None => {
                            let end = is_terminal_event(ev.r#type);
                            (end, end)
                        }
                    }
                }
            };
            if keep && tx.send(item).await.is_err() {
                return;
            }
            if last {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_proto::json::json_to_struct;

    fn ev(data: serde_json::Value, message: &str) -> JobEvent {
        JobEvent {
            r#type: EventType::Log as i32,
            message: message.into(),
            data: Some(json_to_struct(&data)),
            ..Default::default()
        }
    }

    #[test]
    fn a_finished_steps_lines_are_kept_a_cancelled_ones_not() {
        let mut s = StepLogs::default();
        assert!(
            s.observe(
                "j",
                &ev(
                    serde_json::json!({"step": "build", "index": 0, "status": "RUNNING"}),
                    ""
                )
            )
            .is_none()
        );
        for i in 0..3 {
            assert!(
                s.observe(
                    "j",
                    &ev(serde_json::json!({"step": "build"}), &format!("line {i}"))
                )
                .is_none()
            );
        }
        s.observe("j", &ev(serde_json::json!({"step": "test"}), "other step"));
        let done = s
            .observe(
                "j",
                &ev(
                    serde_json::json!({"step": "build", "index": 0, "status": "FAILED"}),
                    "",
                ),
            )
            .unwrap();
        assert_eq!(done.lines, ["line 0", "line 1", "line 2"]);
        assert_eq!((done.status.as_str(), done.index), ("FAILED", 0));
        assert!(
            s.observe(
                "j",
                &ev(
                    serde_json::json!({"step": "test", "index": 1, "status": "CANCELLED"}),
                    ""
                )
            )
            .is_none()
        );
        assert!(s.steps.is_empty());
        // Untagged events are not step events.
        let plain = JobEvent {
            r#type: EventType::Log as i32,
            message: "x".into(),
            ..Default::default()
        };
        assert!(s.observe("j", &plain).is_none());
    }

    #[test]
    fn a_long_log_keeps_its_newest_lines() {
        let mut s = StepLogs::default();
        let line = "x".repeat(1000);
        for _ in 0..(MAX_STEP_LOG_BYTES / 1000 + 10) {
            s.observe("j", &ev(serde_json::json!({"step": "big"}), &line));
        }
        let done = s
            .observe(
                "j",
                &ev(
                    serde_json::json!({"step": "big", "index": 0, "status": "COMPLETED"}),
                    "",
                ),
            )
            .unwrap();
        assert!(done.lines.len() * 1000 <= MAX_STEP_LOG_BYTES);
        assert_eq!(done.dropped_lines, 10);
    }
}
