//! One agent's session as the server holds it: its tunnel, the calls waiting for answers, its
//! load figures and the jobs it runs (for routing).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};

use crate::link::{LinkError, Load};
use croupier_proto::control::v1::{self as pb, InvokeResult, ServerFrame};
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_registry::model::now_ms;
use croupier_registry::store::Revision;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

/// What goes down a tunnel's queue: boxed, so that the queue's first block (32 slots, allocated
/// with the queue) is 512 bytes rather than 32 whole frames, for every agent held.
pub(super) type Outgoing = Result<Box<ServerFrame>, Box<Status>>;

pub(super) type FrameTx = mpsc::Sender<Outgoing>;

/// A frame for the tunnel's queue.
pub(super) fn out(frame: ServerFrame) -> Outgoing {
    Ok(Box::new(frame))
}

/// The frames of a tunnel's queue as the `Connect` response streams them.
pub struct Frames(pub(super) tokio_stream::wrappers::ReceiverStream<Outgoing>);

impl tokio_stream::Stream for Frames {
    type Item = Result<ServerFrame, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|f| f.map(|f| f.map(|b| *b).map_err(|e| *e)))
    }
}

#[derive(Clone)]
pub(super) struct Tunnel {
    pub(super) generation: u64,
    pub(super) tx: FrameTx,
}

pub(super) struct Pending {
    pub(super) generation: u64,
    pub(super) tx: oneshot::Sender<Result<InvokeResult, LinkError>>,
}

/// An agent's registration record and the revision it was written at.
pub(super) struct StoredRecord {
    pub(super) value: Vec<u8>,
    pub(super) rev: Revision,
}

pub(super) struct Session {
    pub(super) agent_id: String,
    pub(super) session_id: String,
    pub(super) key: String,
    /// The registration as stored: written again when the agents' lease is replaced, deleted
    /// (if still this revision) when the session ends.
    pub(super) record: Mutex<StoredRecord>,
    pub(super) last_heartbeat: Mutex<Instant>,
    pub(super) last_heartbeat_ms: AtomicI64,
    pub(super) status: Mutex<HashMap<String, String>>,
    pub(super) tunnel: Mutex<Option<Tunnel>>,
    pub(super) pending: Mutex<HashMap<String, Pending>>,
    pub(super) in_flight: AtomicI64,
    /// Jobs running on the agent, as seen from here (for routing).
    pub(super) running: RunningJobs,
    /// `cpu_percent` of the last heartbeat in tenths of a percent; -1 when it had none.
    pub(super) cpu_tenths: AtomicI64,
    /// The largest frame the agent accepts: its own limit and the server's, whichever is less.
    pub(super) max_frame: usize,
    /// A `SetNodeState` waiting for the agent to apply the change made at this time.
    pub(super) state_waiter: Mutex<Option<(i64, tokio::sync::oneshot::Sender<i64>)>>,
    /// The `changed_at` of the last node state change sent down the tunnel.
    pub(super) state_sent: AtomicI64,
    /// The assignments version the agent was last told about.
    pub(super) assignments_sent: AtomicI64,
}

impl Session {
    pub(super) fn tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().clone()
    }

    pub(super) fn touch(&self) {
        *self.last_heartbeat.lock() = Instant::now();
        self.last_heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Takes the CPU figure of a heartbeat's status summary, parsed once here so that routing
    /// reads an atomic.
    pub(super) fn take_summary(&self, status: &HashMap<String, String>) {
        let cpu = status
            .get("cpu_percent")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(-1, |c| (c.clamp(0.0, 100.0) * 10.0) as i64);
        self.cpu_tenths.store(cpu, Ordering::Relaxed);
    }

    pub(super) fn load(&self) -> Load {
        let cpu = self.cpu_tenths.load(Ordering::Relaxed);
        Load {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            jobs: self.running.count.load(Ordering::Relaxed),
            cpu_percent: (cpu >= 0).then(|| cpu as f32 / 10.0),
        }
    }

    /// Refuses a frame the agent could not decode (larger than its limit).
    pub(super) fn check_frame(&self, frame: &ServerFrame) -> Result<(), LinkError> {
        use prost::Message as _;
        let bytes = frame.encoded_len();
        if bytes > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                agent: self.agent_id.clone(),
                bytes,
                limit: self.max_frame,
            });
        }
        Ok(())
    }

    /// Fails every pending invocation sent over `generation` (or all, with None).
    /// The node was disabled: every synchronous call in flight fails with `NODE_DISABLED`
    /// saying `why`, and the agent is told to cancel it.
    pub(super) fn fail_pending_disabled(&self, why: &str) {
        let failed: Vec<(String, Pending)> = self.pending.lock().drain().collect();
        let tunnel = self.tunnel();
        for (request_id, p) in failed {
            if let Some(t) = &tunnel {
                let _ = t.tx.try_send(out(pb::ServerFrame {
                    frame: Some(pb::server_frame::Frame::Cancel(pb::Cancel {
                        request_id: request_id.clone(),
                        reason: why.to_string(),
                    })),
                }));
            }
            let _ = p.tx.send(Ok(pb::InvokeResult {
                request_id,
                success: false,
                error: why.to_string(),
                error_code: "NODE_DISABLED".into(),
                ..Default::default()
            }));
        }
    }

    pub(super) fn fail_pending(&self, generation: Option<u64>) {
        let failed: Vec<Pending> = {
            let mut pending = self.pending.lock();
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| generation.is_none_or(|g| p.generation == g))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in failed {
            let _ = p.tx.send(Err(LinkError::Lost(self.agent_id.clone())));
        }
    }
}

/// The jobs an agent runs, as this server sees them: added when a job's `Invoke` goes down the
/// tunnel, removed at the job's terminal event, replaced by the agent's `JobsReport` on every
/// new tunnel. A set, so events re-sent after a reconnect count once; `count` mirrors its size
/// for routing.
#[derive(Default)]
pub(super) struct RunningJobs {
    pub(super) ids: Mutex<HashSet<String>>,
    pub(super) count: AtomicI64,
}

impl RunningJobs {
    pub(super) fn update(&self, change: impl FnOnce(&mut HashSet<String>)) {
        let mut ids = self.ids.lock();
        change(&mut ids);
        self.count.store(ids.len() as i64, Ordering::Relaxed);
    }

    pub(super) fn started(&self, job_id: &str) {
        self.update(|ids| {
            ids.insert(job_id.to_string());
        });
    }

    /// Notes `event` of a job: a terminal one ends the job.
    pub(super) fn event(&self, event: &JobEvent) {
        let terminal = matches!(
            EventType::try_from(event.r#type),
            Ok(EventType::Done | EventType::Error | EventType::Cancelled)
        );
        if terminal {
            self.ended(&event.job_id);
        }
    }

    pub(super) fn ended(&self, job_id: &str) {
        self.update(|ids| {
            ids.remove(job_id);
        });
    }

    pub(super) fn reported(&self, jobs: &[pb::RunningJob]) {
        self.update(|ids| *ids = jobs.iter().map(|j| j.job_id.clone()).collect());
    }
}
