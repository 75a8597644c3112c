//! The provider side of jobs: [`JobContext`], through which a job handler reports progress,
//! log lines and data, and the outbox that numbers a job's events, sends them over the tunnel in
//! order and keeps each one until the server acknowledges that it stored it. A job stays in the
//! outbox until it finished and every one of its events was acknowledged.
//!
//! A handler that emits faster than the tunnel carries events waits (at most
//! [`OUTBOX_PER_JOB`] unacknowledged events per job); nothing is dropped. After a reconnect the
//! outbox sends a `JobsReport` of the jobs it holds, then every unacknowledged event again,
//! before any new one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use croupier_proto::control::v1::{AgentFrame, AgentJobEvent, JobsReport, RunningJob, agent_frame};
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_proto::json::json_to_struct;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::MAX_MESSAGE_BYTES;
use crate::provider::{Handler, HandlerError, Invocation};

/// Most unacknowledged events one job may have; emitting more waits for acknowledgements.
pub const OUTBOX_PER_JOB: usize = 4096;

/// What a job handler gets: its invocation (payload, caller, cancellation) and the means to
/// report progress, logs and data. Reporting waits while the job's outbox is full, so a handler
/// is slowed down rather than losing events. When the function was invoked synchronously
/// (`InvokeFunction`), reports go nowhere and only the result matters.
#[derive(Clone)]
pub struct JobContext {
    call: Invocation,
    out: Option<Arc<Outbox>>,
    locals: Option<Locals>,
    /// For a job run as a step of another job: that job, and the step's name.
    parent: Option<(Box<JobContext>, String)>,
}

/// The provider's handlers, for local calls.
pub(crate) type Locals = Arc<std::collections::HashMap<String, Handler>>;

impl JobContext {
    pub(crate) fn new(call: Invocation, out: Option<Arc<Outbox>>) -> Self {
        JobContext {
            call,
            out,
            locals: None,
            parent: None,
        }
    }

    /// Lets the handler call the provider's other functions ([`JobContext::call_local`]).
    pub(crate) fn with_locals(mut self, locals: Locals) -> Self {
        self.locals = Some(locals);
        self
    }

    /// Runs another function of this provider in-process, as a step of this job (a pipeline's
    /// steps): with `payload`, a deadline of `timeout` (else this job's) and a cancellation
    /// token that follows this job's. A job function's log lines become this job's `LOG`
    /// events with `data.step = step`. A step that outlives its deadline is cancelled and given
    /// 10 s to clean up.
    pub async fn call_local(
        &self,
        function_id: &str,
        payload: serde_json::Value,
        timeout: Option<std::time::Duration>,
        step: &str,
    ) -> Result<serde_json::Value, HandlerError> {
        let locals = self.locals.clone().ok_or_else(|| {
            HandlerError::new(
                "FAILED_PRECONDITION",
                "local calls need a handler run by the provider",
            )
        })?;
        let handler = locals.get(function_id).cloned().ok_or_else(|| {
            HandlerError::new(
                "NOT_FOUND",
                format!("this agent does not provide {function_id}"),
            )
        })?;
        let cancel = self.call.cancel.child_token();
        let now = tokio::time::Instant::now();
        let deadline = timeout.map_or(self.call.deadline, |t| (now + t).min(self.call.deadline));
        let inv = Invocation {
            request_id: format!("{}/{step}", self.call.request_id),
            function_id: function_id.to_string(),
            payload,
            caller: self.call.caller.clone(),
            game_id: self.call.game_id.clone(),
            env: self.call.env.clone(),
            idempotency_key: String::new(),
            traceparent: self.call.traceparent.clone(),
            config: std::collections::HashMap::new(),
            deadline,
            cancel: cancel.clone(),
        };
        let fut = match handler {
            Handler::Call(h) => h(inv),
            Handler::Job(h) => h(JobContext {
                call: inv,
                out: None,
                locals: Some(locals.clone()),
                parent: Some((Box::new(self.clone()), step.to_string())),
            }),
        };
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = tokio::time::sleep_until(deadline) => {
                cancel.cancel();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), &mut fut).await;
                Err(HandlerError::new(
                    "DEADLINE_EXCEEDED",
                    format!("step {step} ({function_id}) did not finish within its timeout"),
                ))
            }
        }
    }

    /// The invocation: payload, caller, game, env, deadline.
    pub fn invocation(&self) -> &Invocation {
        &self.call
    }

    /// The payload.
    pub fn payload(&self) -> &serde_json::Value {
        &self.call.payload
    }

    /// The job id (empty when invoked synchronously; for a step, the job running it).
    pub fn job_id(&self) -> &str {
        if self.out.is_some() {
            &self.call.request_id
        } else if let Some((parent, _)) = &self.parent {
            parent.job_id()
        } else {
            ""
        }
    }

    /// Cancelled when the job is cancelled, its deadline passes or the agent shuts down. The
    /// handler should clean up and return soon after.
    pub fn cancel(&self) -> &CancellationToken {
        &self.call.cancel
    }

    /// Reports progress: `fraction` in 0.0–1.0 (clamped) and a message.
    pub async fn progress(&self, fraction: f64, message: impl Into<String>) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self.emit(EventType::Progress, message.into(), fraction, None)
            .await;
    }

    /// Reports a log line.
    pub async fn log(&self, line: impl Into<String>) {
        self.emit(EventType::Log, line.into(), 0.0, None).await;
    }

    /// Reports structured data with a message (sent as a `LOG` event carrying `data`).
    pub async fn data(&self, message: impl Into<String>, data: serde_json::Value) {
        self.emit(EventType::Log, message.into(), 0.0, Some(data))
            .await;
    }

    async fn emit(
        &self,
        kind: EventType,
        message: String,
        progress: f64,
        data: Option<serde_json::Value>,
    ) {
        if let Some(out) = &self.out {
            out.emit(&self.call.request_id, kind, message, progress, data)
                .await;
        } else if let Some((parent, step)) = &self.parent
            && kind == EventType::Log
        {
            // A step's log line is a log line of the job running it, tagged with the step.
            let mut tagged = match data {
                Some(serde_json::Value::Object(m)) => m,
                Some(other) => {
                    let mut m = serde_json::Map::new();
                    m.insert("data".into(), other);
                    m
                }
                None => serde_json::Map::new(),
            };
            tagged.insert("step".into(), serde_json::Value::String(step.clone()));
            Box::pin(parent.emit(
                EventType::Log,
                message,
                0.0,
                Some(serde_json::Value::Object(tagged)),
            ))
            .await;
        }
    }
}

struct JobOut {
    function_id: String,
    next_seq: i64,
    unacked: VecDeque<JobEvent>,
    finished: bool,
}

struct State {
    tunnel: Option<(u64, mpsc::Sender<AgentFrame>)>,
    jobs: BTreeMap<String, JobOut>,
}

/// The events of the jobs running on this provider, kept until acknowledged.
pub(crate) struct Outbox {
    st: Mutex<State>,
    space: Notify,
    /// The server's message limit (from its Welcome): events must fit in it.
    limit: std::sync::atomic::AtomicUsize,
}

/// Most characters of an event's message.
const MAX_EVENT_MESSAGE_CHARS: usize = 64 * 1024;

/// An event as it may be sent: data past the payload limits (which the server's decoder shares)
/// is replaced by an error saying so, a `DONE` with such a result becomes an `ERROR`, and a
/// very long message is cut.
pub(crate) fn bounded_event(
    kind: EventType,
    message: String,
    data: Option<&serde_json::Value>,
    max_message_bytes: usize,
) -> (EventType, String, Option<prost_types::Struct>) {
    let message = if message.len() > MAX_EVENT_MESSAGE_CHARS {
        let mut cut = message
            .chars()
            .take(MAX_EVENT_MESSAGE_CHARS)
            .collect::<String>();
        cut.push('…');
        cut
    } else {
        message
    };
    let data = data.map(json_to_struct);
    match croupier_proto::limits::check_payload(data.as_ref(), max_message_bytes) {
        Ok(()) => (kind, message, data),
        Err(e) => {
            tracing::warn!(error = %e, "job event data refused");
            let kind = if kind == EventType::Done {
                EventType::Error
            } else {
                kind
            };
            let refused = serde_json::json!({
                "code": "EVENT_DATA_REFUSED",
                "error": format!("the event's data {e}"),
            });
            (kind, message, Some(json_to_struct(&refused)))
        }
    }
}

fn frame(ev: JobEvent) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::JobEvent(AgentJobEvent {
            event: Some(ev),
        })),
    }
}

impl Outbox {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Outbox {
            st: Mutex::new(State {
                tunnel: None,
                jobs: BTreeMap::new(),
            }),
            space: Notify::new(),
            limit: std::sync::atomic::AtomicUsize::new(MAX_MESSAGE_BYTES),
        })
    }

    /// Starts tracking a job; false when it is already known (a repeated `Invoke`).
    pub(crate) async fn begin(&self, job_id: &str, function_id: &str) -> bool {
        let mut st = self.st.lock().await;
        if st.jobs.contains_key(job_id) {
            return false;
        }
        st.jobs.insert(
            job_id.to_string(),
            JobOut {
                function_id: function_id.to_string(),
                next_seq: 1,
                unacked: VecDeque::new(),
                finished: false,
            },
        );
        true
    }

    /// Jobs not finished yet.
    pub(crate) async fn running(&self) -> usize {
        self.st
            .lock()
            .await
            .jobs
            .values()
            .filter(|j| !j.finished)
            .count()
    }

    /// Numbers an event, keeps it and sends it when a tunnel is up. Waits while the job's
    /// outbox is full. A terminal event finishes the job (later events are ignored).
    pub(crate) async fn emit(
        &self,
        job_id: &str,
        kind: EventType,
        message: String,
        progress: f64,
        data: Option<serde_json::Value>,
    ) {
        let terminal = matches!(
            kind,
            EventType::Done | EventType::Error | EventType::Cancelled
        );
        loop {
            let space = self.space.notified();
            let mut st = self.st.lock().await;
            let Some(job) = st.jobs.get_mut(job_id) else {
                return;
            };
            if job.finished {
                return;
            }
            if job.unacked.len() >= OUTBOX_PER_JOB {
                drop(st);
                space.await;
                continue;
            }
            let limit = self.limit.load(std::sync::atomic::Ordering::Relaxed);
            let (kind, message, data) = bounded_event(kind, message, data.as_ref(), limit);
            let ev = JobEvent {
                job_id: job_id.to_string(),
                r#type: kind as i32,
                message,
                progress,
                timestamp: now_ms(),
                data,
                seq: job.next_seq,
                received_at: 0,
            };
            job.next_seq += 1;
            job.finished = terminal;
            job.unacked.push_back(ev.clone());
            if let Some((_, tx)) = &st.tunnel
                && tx.send(frame(ev)).await.is_err()
            {
                st.tunnel = None; // sent again on the next tunnel
            }
            return;
        }
    }

    /// The server stored a job's events up to `seq`.
    pub(crate) async fn ack(&self, job_id: &str, seq: i64) {
        let mut st = self.st.lock().await;
        if let Some(job) = st.jobs.get_mut(job_id) {
            while job.unacked.front().is_some_and(|e| e.seq <= seq) {
                job.unacked.pop_front();
            }
            if job.finished && job.unacked.is_empty() {
                st.jobs.remove(job_id);
            }
        }
        drop(st);
        self.space.notify_waiters();
    }

    /// Uses a new tunnel: reports the jobs still in the outbox, sends every unacknowledged
    /// event again, then lets new events through.
    ///
    /// The report lists finished jobs whose last events the server has not acknowledged too:
    /// a server that restarted before storing a job's end still thinks it runs, and would call
    /// it lost if the report left it out, before the terminal event sent again could arrive.
    /// Sets the server's message limit (from its Welcome; 0 keeps the default).
    pub(crate) fn set_limit(&self, max_message_bytes: usize) {
        if max_message_bytes > 0 {
            self.limit.store(
                max_message_bytes.min(MAX_MESSAGE_BYTES),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    pub(crate) async fn attach(&self, generation: u64, tx: mpsc::Sender<AgentFrame>) {
        let mut st = self.st.lock().await;
        let report = JobsReport {
            jobs: st
                .jobs
                .iter()
                .map(|(id, j)| RunningJob {
                    job_id: id.clone(),
                    function_id: j.function_id.clone(),
                    last_seq: j.next_seq - 1,
                })
                .collect(),
        };
        let report = AgentFrame {
            frame: Some(agent_frame::Frame::JobsReport(report)),
        };
        if tx.send(report).await.is_err() {
            return;
        }
        let resend: Vec<JobEvent> = st
            .jobs
            .values()
            .flat_map(|j| j.unacked.iter().cloned())
            .collect();
        if !resend.is_empty() {
            tracing::info!(
                events = resend.len(),
                "sending unacknowledged job events again"
            );
        }
        for ev in resend {
            if tx.send(frame(ev)).await.is_err() {
                return;
            }
        }
        st.tunnel = Some((generation, tx));
    }

    /// Stops using the tunnel of `generation` (events wait for the next one).
    pub(crate) async fn detach(&self, generation: u64) {
        let mut st = self.st.lock().await;
        if st.tunnel.as_ref().is_some_and(|(g, _)| *g == generation) {
            st.tunnel = None;
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_numbered_kept_until_acked_and_resent_on_attach() {
        let out = Outbox::new();
        assert!(out.begin("j1", "f").await);
        assert!(
            !out.begin("j1", "f").await,
            "a repeated Invoke is not a new job"
        );
        // No tunnel yet: events wait.
        out.emit("j1", EventType::Start, "s".into(), 0.0, None)
            .await;
        out.emit("j1", EventType::Log, "l".into(), 0.0, None).await;
        let (tx, mut rx) = mpsc::channel(16);
        out.attach(1, tx).await;
        let report = rx.recv().await.unwrap();
        match report.frame {
            Some(agent_frame::Frame::JobsReport(r)) => {
                assert_eq!(r.jobs.len(), 1);
                assert_eq!(r.jobs[0].last_seq, 2);
            }
            other => panic!("expected a report, got {other:?}"),
        }
        let seqs: Vec<i64> = (0..2)
            .map(|_| match rx.try_recv().unwrap().frame {
                Some(agent_frame::Frame::JobEvent(e)) => e.event.unwrap().seq,
                other => panic!("expected an event, got {other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![1, 2]);
        out.ack("j1", 1).await;
        out.emit("j1", EventType::Done, "d".into(), 1.0, None).await;
        assert_eq!(out.running().await, 0);
        // A new tunnel gets only what was not acknowledged: 2 and 3. The finished job is still
        // reported, since its end is not acknowledged yet.
        let (tx2, mut rx2) = mpsc::channel(16);
        out.attach(2, tx2).await;
        match rx2.recv().await.unwrap().frame {
            Some(agent_frame::Frame::JobsReport(r)) => {
                assert_eq!(r.jobs.len(), 1);
                assert_eq!((r.jobs[0].job_id.as_str(), r.jobs[0].last_seq), ("j1", 3));
            }
            other => panic!("expected a report, got {other:?}"),
        }
        let mut again = Vec::new();
        while let Ok(f) = rx2.try_recv() {
            if let Some(agent_frame::Frame::JobEvent(e)) = f.frame {
                again.push(e.event.unwrap().seq);
            }
        }
        assert_eq!(again, vec![2, 3]);
        out.ack("j1", 3).await;
        assert!(
            out.st.lock().await.jobs.is_empty(),
            "finished and acked jobs are let go"
        );
        let (tx3, mut rx3) = mpsc::channel(16);
        out.attach(3, tx3).await;
        match rx3.recv().await.unwrap().frame {
            Some(agent_frame::Frame::JobsReport(r)) => assert!(r.jobs.is_empty(), "{r:?}"),
            other => panic!("expected a report, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_outbox_makes_the_emitter_wait_for_acks() {
        let out = Outbox::new();
        out.begin("j", "f").await;
        for _ in 0..OUTBOX_PER_JOB {
            out.emit("j", EventType::Log, String::new(), 0.0, None)
                .await;
        }
        let out2 = out.clone();
        let blocked = croupier_proto::task::spawn(
            "a_full_outbox_makes_the_emitter_wait_for_acks",
            async move {
                out2.emit("j", EventType::Log, "one more".into(), 0.0, None)
                    .await;
            },
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !blocked.is_finished(),
            "the emitter waits while the outbox is full"
        );
        out.ack("j", 10).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), blocked)
            .await
            .expect("an ack lets the emitter go on")
            .unwrap();
    }
}
