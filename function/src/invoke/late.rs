//! A keyed call whose deadline passed while its agent may still run it: the idempotency key
//! stays claimed until the agent's last word (or the grace) says how the execution ended.

use super::*;
use croupier_control::LinkError;
use croupier_proto::control::v1::InvokeResult;

/// A call whose deadline passed on an agent that may still be running it.
pub(super) struct LateAnswer {
    pub(super) agent: String,
    pub(super) answer: AbortOnDrop<Result<InvokeResult, LinkError>>,
}

/// A spawned task that is aborted when its handle is dropped.
pub(super) struct AbortOnDrop<T>(pub(super) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Invoker {
    /// The deadline of a keyed call passed while its agent may still run it: the key stays
    /// claimed while the server waits (up to `late_answer_grace`) for the agent's answer. A
    /// handler that completed stores its outcome (repeats get it); one that was cancelled or
    /// timed out frees the key; no answer leaves the claim to expire.
    pub(super) fn await_late_answer(
        &self,
        ticket: crate::idempotency::Ticket,
        mut late: LateAnswer,
    ) {
        let idem = self.idem.clone();
        let grace = self.cfg.late_answer_grace;
        croupier_proto::task::spawn("late answer", async move {
            match tokio::time::timeout(grace, &mut late.answer.0).await {
                Ok(Ok(Ok(r)))
                    if r.success
                        || !matches!(r.error_code.as_str(), "DEADLINE_EXCEEDED" | "CANCELLED") =>
                {
                    tracing::info!(agent_id = %late.agent, "late answer of a keyed call stored");
                    idem.finish(ticket, &response(r, &late.agent)).await;
                }
                Ok(_) => idem.abandon(ticket).await,
                Err(_) => tracing::warn!(
                    agent_id = %late.agent,
                    "no answer from the agent within the grace after the deadline; the \
                     idempotency key stays claimed until it expires"
                ),
            }
        });
    }
}

pub(super) fn cancel_frame(request_id: &str) -> croupier_proto::control::v1::ServerFrame {
    use croupier_proto::control::v1::{Cancel, ServerFrame, server_frame};
    ServerFrame {
        frame: Some(server_frame::Frame::Cancel(Cancel {
            request_id: request_id.to_string(),
            reason: "the call's deadline passed".into(),
        })),
    }
}
