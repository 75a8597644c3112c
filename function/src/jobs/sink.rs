//! The job traffic of agents' tunnels ([`JobSink`]): events checked, bounded and appended,
//! backpressure per agent, reports reconciled, jobs adopted from another replica, lost agents.

use std::collections::HashSet;

use super::*;
use croupier_control::JobSink;
use croupier_proto::control::v1::RunningJob;
use croupier_proto::function::v1::{EventType, JobEvent};
use croupier_registry::model::now_ms;
use std::time::Duration;

/// Bytes of one agent's job events.
#[derive(Default, Clone, Copy, Debug)]
pub(super) struct AgentUsage {
    /// Kept in memory (all its live jobs).
    pub(super) retained: usize,
    /// Received and not yet stored.
    pub(super) unstored: usize,
}

impl JobManager {
    /// Waits while `agent_id` has more unstored event bytes than its budget: the tunnel's reader
    /// waits here, so the agent is slowed by HTTP/2 flow control instead of filling memory.
    pub(super) async fn backpressure(&self, agent_id: &str) {
        let budget = self.cfg.max_agent_unstored_bytes;
        let mut logged = false;
        loop {
            let stored = self.stored.notified();
            let unstored = self.usage_of(agent_id).unstored;
            if unstored <= budget {
                return;
            }
            if !logged {
                logged = true;
                metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "job_event_backpressure")
                    .increment(1);
                tracing::warn!(
                    agent_id,
                    unstored,
                    budget,
                    "agent's job events arrive faster than they are stored; reading its tunnel waits"
                );
            }
            self.wake.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), stored).await;
        }
    }

    /// Tells an agent that a job it sent events for is over here: acks the event (so the
    /// agent lets it go) and, unless the event ended the job, cancels it.
    pub(super) fn refuse(&self, agent_id: &str, ev: &JobEvent) {
        self.link
            .send_frame(agent_id, ack_frame(&ev.job_id, ev.seq));
        if !is_terminal_event(ev.r#type) {
            self.link.send_frame(
                agent_id,
                cancel_frame(
                    &ev.job_id,
                    "the server has no running job with this id (it ended, e.g. as agent lost)",
                ),
            );
        }
    }

    /// Takes one event from an agent's tunnel: checks it belongs to a live job of the agent,
    /// bounds its size, notes when it arrived and appends it (see [`apply`]).
    pub(super) fn accept_event(&self, agent_id: &str, generation: u64, mut ev: JobEvent) {
        let Some(job) = self.get(&ev.job_id) else {
            self.refuse(agent_id, &ev);
            return;
        };
        {
            let mut st = job.st.lock();
            if st.record.agent_id != agent_id {
                tracing::warn!(job_id = %job.id, agent_id, owner = %st.record.agent_id, "job event from an agent that does not run the job dropped");
                return;
            }
            if st.record.status.is_terminal() {
                let persisted = st.persisted_seq;
                drop(st);
                if ev.seq <= persisted {
                    self.link
                        .send_frame(agent_id, ack_frame(&job.id, persisted));
                } else {
                    self.refuse(agent_id, &ev);
                }
                return;
            }
            st.generation = st.generation.max(generation);
            st.orphan_since = None;
            if ev.seq <= st.record.last_seq {
                // Sent again after a reconnect: already have it.
                let persisted = st.persisted_seq;
                if ev.seq <= persisted {
                    drop(st);
                    self.link
                        .send_frame(agent_id, ack_frame(&job.id, persisted));
                }
                return;
            }
            if ev.seq != st.record.last_seq + 1 {
                tracing::warn!(job_id = %job.id, expected = st.record.last_seq + 1, got = ev.seq, "job events arrived with a gap");
            }
            if ev.r#type == EventType::Gap as i32 {
                ev.r#type = EventType::Log as i32; // GAP is the server's to send
            }
            ev.received_at = now_ms();
            bound_event(&mut ev, self.cfg.max_event_bytes);
            if let Some(log) = st.steps.observe(&job.id, &ev) {
                self.store_step_log(log);
            }
            let was_running = !st.record.status.is_terminal();
            let (added, mut dropped) = apply(&self.cfg, &mut st, ev);
            if was_running && st.record.status == JobStatus::Failed {
                self.tell_failed(&st.record);
            }
            // The agent's jobs together keep at most max_agent_bytes.
            let retained = self.usage_of(agent_id).retained + added - dropped;
            let mut over = retained.saturating_sub(self.cfg.max_agent_bytes);
            while over > 0 {
                let Some(n) = st.prune_one() else { break };
                over = over.saturating_sub(n);
                dropped += n;
            }
            if over == 0 && retained > self.cfg.max_agent_bytes {
                st.record.first_seq = st.first_available();
                metrics::counter!(crate::metrics::LIMITS_HIT, "kind" => "agent_event_bytes")
                    .increment(1);
            }
            self.account(agent_id, added as isize - dropped as isize, added as isize);
        }
        job.changed.send_replace(());
        self.mark(&job);
    }

    /// Takes over an unfinished job whose agent now holds its tunnel here (it moved from
    /// another server): its record and stored events come from the store, and the agent sends
    /// again what was not stored. False when the store has no such job for this agent.
    pub(super) async fn adopt(&self, agent_id: &str, job_id: &str) -> bool {
        if self.get(job_id).is_some() {
            return true;
        }
        let record = match self.load_record(job_id).await {
            Ok(Some(r)) if r.agent_id == agent_id && !r.status.is_terminal() => r,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "reading a reported job failed");
                return false;
            }
        };
        let (events, chunks) = match self.load_events(job_id).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "reading a reported job's events failed");
                return false;
            }
        };
        let previous = record.server_id.clone();
        let mut st = self.restore(record, events, chunks);
        if let Some(fwd) = self.forwarder.as_ref() {
            st.record.server_id = fwd.server_id().to_string();
        }
        st.touch_record();
        let job = Job::new(job_id.to_string(), st);
        self.jobs
            .write()
            .entry(job_id.to_string())
            .or_insert(job.clone());
        self.mark(&job);
        tracing::info!(job_id, agent_id, from = %previous, "job adopted: its agent moved here");
        true
    }
}

#[async_trait::async_trait]
impl JobSink for JobManager {
    async fn event(&self, agent_id: &str, generation: u64, ev: JobEvent) {
        self.accept_event(agent_id, generation, ev);
        self.backpressure(agent_id).await;
    }

    async fn report(&self, agent_id: &str, generation: u64, jobs: Vec<RunningJob>) {
        for j in &jobs {
            if self.get(&j.job_id).is_none() {
                self.adopt(agent_id, &j.job_id).await;
            }
        }
        let reported: HashSet<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        let mut lost = Vec::new();
        let mut cancel = Vec::new();
        for job in self.live() {
            let mut st = job.st.lock();
            if st.record.agent_id != agent_id || st.record.status.is_terminal() {
                continue;
            }
            if reported.contains(job.id.as_str()) {
                st.generation = st.generation.max(generation);
                st.orphan_since = None;
                if st.cancel_requested {
                    cancel.push(job.clone());
                }
            } else if st.generation < generation {
                lost.push(job.clone());
            }
        }
        for job in cancel {
            self.send_cancel(&job);
        }
        for job in lost {
            tracing::warn!(job_id = %job.id, agent_id, "agent no longer runs the job");
            self.end(
                &job,
                EventType::Error,
                format!(
                    "agent lost: {agent_id} no longer runs the job (it restarted, or never received it)"
                ),
                "AGENT_LOST",
            );
        }
        for j in &jobs {
            let running_here = self
                .get(&j.job_id)
                .is_some_and(|job| !job.st.lock().record.status.is_terminal());
            if !running_here {
                self.link.send_frame(
                    agent_id,
                    cancel_frame(
                        &j.job_id,
                        "the server has no running job with this id (it ended, e.g. as agent lost)",
                    ),
                );
            }
        }
    }

    fn node_disabled(&self, agent_id: &str, reason: &str) {
        for job in self.live() {
            let cancel = {
                let mut st = job.st.lock();
                let mine = st.record.agent_id == agent_id && !st.record.status.is_terminal();
                if mine && !st.cancel_requested {
                    st.cancel_requested = true;
                    st.record.cancel_reason = reason.to_string();
                    st.touch_record();
                }
                mine
            };
            if cancel {
                tracing::info!(job_id = %job.id, agent_id, "cancelling job: node disabled");
                self.mark(&job);
                self.send_cancel(&job);
            }
        }
    }

    fn agent_gone(&self, agent_id: &str, reason: &str) {
        if let Some(fwd) = self.forwarder.as_ref()
            && let Some(owner) = fwd.remote_owner(agent_id)
        {
            // The agent moved to another replica, which adopts its jobs: let them go here.
            for job in self.live() {
                let mine = {
                    let st = job.st.lock();
                    st.record.agent_id == agent_id && !st.record.status.is_terminal()
                };
                if mine {
                    tracing::info!(job_id = %job.id, agent_id, owner = %owner, "job handed over: its agent moved");
                    job.st.lock().moved_to = Some(owner.clone());
                    job.changed.send_replace(());
                    self.remove(&job.id);
                }
            }
            return;
        }
        for job in self.live() {
            let mine = {
                let st = job.st.lock();
                st.record.agent_id == agent_id && !st.record.status.is_terminal()
            };
            if mine {
                tracing::warn!(job_id = %job.id, agent_id, reason, "job ends: agent lost");
                self.end(
                    &job,
                    EventType::Error,
                    format!("agent lost: {agent_id} went away ({reason})"),
                    "AGENT_LOST",
                );
            }
        }
    }
}
