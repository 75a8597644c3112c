//! What a job is on the outside: its settings, its status and its stored record.

use croupier_proto::function::v1::{self as pb};
use croupier_proto::json::json_to_struct;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Job settings.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Events kept per job; older ones are dropped (subscribers asking for them get a `GAP`).
    /// Default 10 000.
    pub max_events: usize,
    /// Events older than this are dropped, and a finished job's events go this long after it
    /// ended. Default 24 h.
    pub max_event_age: Duration,
    /// How long a finished job's record is kept. Default 7 days.
    pub record_retention: Duration,
    /// Deadline of a job when neither the call nor a job descriptor sets one, and the longest
    /// allowed. Default 24 h.
    pub max_duration: Duration,
    /// How long a finished job stays in memory (fast replay) before it is served from the store.
    /// Default 60 s.
    pub linger: Duration,
    /// How long a job waits for its agent to come back (after a server restart, or while the
    /// agent has no session) before it ends `ERROR` "agent lost". Default 45 s.
    pub orphan_after: Duration,
    /// Most events per stored chunk. Default 512.
    pub chunk_events: usize,
    /// Most bytes of one event (encoded); a larger one keeps its type, seq and a cut message,
    /// and its data is replaced by a note of its size. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Bytes of events kept per job; older (stored) ones are dropped past it, like events past
    /// `max_events`. Default 16 MiB.
    pub max_job_bytes: usize,
    /// Bytes of events kept for all the jobs of one agent; past it, the oldest stored events of
    /// the job receiving events are dropped. Default 64 MiB.
    pub max_agent_bytes: usize,
    /// Bytes of events from one agent not yet stored; past it, the server stops reading the
    /// agent's tunnel until the writer catches up (backpressure). Default 16 MiB.
    pub max_agent_unstored_bytes: usize,
    /// Clients may read (get, list, follow) every job in their scopes, not only the jobs they
    /// started. Admins and servers always may. Default false.
    pub clients_read_all: bool,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            max_events: 10_000,
            max_event_age: Duration::from_secs(24 * 3600),
            record_retention: Duration::from_secs(7 * 24 * 3600),
            max_duration: Duration::from_secs(24 * 3600),
            linger: Duration::from_secs(60),
            orphan_after: Duration::from_secs(45),
            chunk_events: 512,
            max_event_bytes: 1024 * 1024,
            max_job_bytes: 16 * 1024 * 1024,
            max_agent_bytes: 64 * 1024 * 1024,
            max_agent_unstored_bytes: 16 * 1024 * 1024,
            clients_read_all: false,
        }
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Created and sent to its agent, not started yet.
    #[default]
    Pending,
    /// Started on its agent.
    Running,
    /// Ended with `DONE`.
    Completed,
    /// Ended with `ERROR`.
    Failed,
    /// Ended with `CANCELLED`.
    Cancelled,
}

impl JobStatus {
    /// The name used in the API: pending, running, completed, failed, cancelled.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// True once the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job's stored record (`/croupier/jobs/{job_id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRecord {
    /// The job.
    pub job_id: String,
    /// Its function.
    pub function_id: String,
    /// Game.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Agent running it.
    pub agent_id: String,
    /// Identity of the caller who started it.
    pub caller: String,
    /// Status.
    pub status: JobStatus,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms by the server's clock (when its first event arrived); 0 before it started.
    pub started_at: i64,
    /// Unix ms by the server's clock (when its terminal event arrived); 0 before it ended.
    pub ended_at: i64,
    /// Result when completed.
    pub result: serde_json::Value,
    /// Error when failed or cancelled.
    pub error: String,
    /// Error code when failed.
    pub error_code: String,
    /// Seq of the last event.
    pub last_seq: i64,
    /// Seq of the oldest retained event.
    pub first_seq: i64,
    /// Why it was cancelled, once a cancel was asked for.
    pub cancel_reason: String,
    /// Deadline given to the agent, in ms.
    pub timeout_ms: i64,
    /// The server that runs the job (holds its agent's tunnel and its live events).
    pub server_id: String,
}

impl JobRecord {
    /// The API form.
    pub fn to_proto(&self) -> pb::JobRecord {
        pb::JobRecord {
            job_id: self.job_id.clone(),
            function_id: self.function_id.clone(),
            game_id: self.game_id.clone(),
            env: self.env.clone(),
            agent_id: self.agent_id.clone(),
            caller: self.caller.clone(),
            status: self.status.as_str().to_string(),
            created_at: self.created_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            result: (!self.result.is_null()).then(|| json_to_struct(&self.result)),
            error: self.error.clone(),
            error_code: self.error_code.clone(),
            last_seq: self.last_seq,
            first_seq: self.first_seq,
            cancel_reason: self.cancel_reason.clone(),
        }
    }
}
