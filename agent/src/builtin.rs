//! Built-in `agent.*` functions, present on every agent: `agent.ping` answers with the agent's
//! id, the payload it got, how many pings it has served and its assignments' config;
//! `agent.sleep` waits `ms` milliseconds (honouring deadline and cancellation), useful for
//! testing timeouts and load;
//! `agent.countdown` is its job form: `steps` steps of `ms` milliseconds, each reported as
//! progress and a log line, stopping cleanly when cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use croupier_proto::common::v1::FunctionDescriptor;
use croupier_sdk::{HandlerError, JobContext, Provider};
use serde_json::json;

use crate::descriptor::semantics;

/// Longest `agent.sleep` accepted, in milliseconds (one hour).
pub const MAX_SLEEP_MS: u64 = 3_600_000;
/// Most steps of `agent.countdown`.
pub const MAX_COUNTDOWN_STEPS: u64 = 1_000_000;

/// A built-in function's descriptor: category `agent`, the server's default timeout, and
/// queries idempotent.
fn descriptor(
    id: &str,
    description: &str,
    kind: &str,
    params: serde_json::Value,
    result: serde_json::Value,
) -> FunctionDescriptor {
    crate::descriptor::descriptor(
        id,
        "agent",
        description,
        semantics(kind, kind == "query", 0),
        &params,
        &result,
    )
}

/// Adds the built-in functions to `provider`.
pub fn register(provider: Provider, agent_id: &str) -> Provider {
    let pings = Arc::new(AtomicU64::new(0));
    let id = agent_id.to_string();
    let ping = descriptor(
        "agent.ping",
        "Answers with the agent id, the payload it got, how many pings it has served and the \
         config its assignments give it.",
        // Counted per execution, so it is a command: repeats are not silently retried.
        "command",
        json!({"type": "object"}),
        json!({
            "type": "object",
            "properties": {
                "agent_id": {"type": "string"},
                "payload": {"type": "object"},
                "calls": {"type": "integer"},
                "config": {"type": "object", "additionalProperties": {"type": "string"}}
            },
            "required": ["agent_id", "payload", "calls"]
        }),
    );
    let sleep = descriptor(
        "agent.sleep",
        "Waits `ms` milliseconds, then answers; cancelled with the call.",
        "query",
        json!({
            "type": "object",
            "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}},
            "required": ["ms"],
            "additionalProperties": false
        }),
        json!({
            "type": "object",
            "properties": {"agent_id": {"type": "string"}, "slept_ms": {"type": "integer"}}
        }),
    );
    let countdown = descriptor(
        "agent.countdown",
        "A job: counts `steps` steps down, `ms` milliseconds each, reporting progress and a log \
         line per step; stops cleanly when cancelled.",
        "query",
        json!({
            "type": "object",
            "properties": {
                "steps": {"type": "integer", "minimum": 0, "maximum": MAX_COUNTDOWN_STEPS},
                "ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}
            },
            "required": ["steps"],
            "additionalProperties": false
        }),
        json!({
            "type": "object",
            "properties": {"agent_id": {"type": "string"}, "steps": {"type": "integer"}}
        }),
    );
    let sleep_id = id.clone();
    let countdown_id = id.clone();
    provider
        .function(ping, move |call| {
            let calls = pings.fetch_add(1, Ordering::Relaxed) + 1;
            let id = id.clone();
            async move {
                Ok(json!({
                    "agent_id": id, "payload": call.payload, "calls": calls, "config": call.config,
                }))
            }
        })
        .function(sleep, move |call| {
            let id = sleep_id.clone();
            async move {
                let ms = call.payload["ms"].as_u64().ok_or_else(|| {
                    HandlerError::new("INVALID_ARGUMENT", "ms must be an integer")
                })?;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {
                        Ok(json!({"agent_id": id, "slept_ms": ms}))
                    }
                    _ = call.cancel.cancelled() => {
                        Err(HandlerError::new("CANCELLED", format!("sleep cancelled on {id}")))
                    }
                }
            }
        })
        .job(countdown, move |job| {
            countdown_job(job, countdown_id.clone())
        })
}

async fn countdown_job(
    job: JobContext,
    agent_id: String,
) -> Result<serde_json::Value, HandlerError> {
    let steps = job.payload()["steps"]
        .as_u64()
        .ok_or_else(|| HandlerError::new("INVALID_ARGUMENT", "steps must be an integer"))?;
    let ms = job.payload()["ms"].as_u64().unwrap_or(0);
    for step in 1..=steps {
        if ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = job.cancel().cancelled() => {}
            }
        }
        if job.cancel().is_cancelled() {
            job.log(format!(
                "countdown cancelled at step {step} of {steps}; cleaning up"
            ))
            .await;
            return Err(HandlerError::new("CANCELLED", "countdown cancelled"));
        }
        let left = steps - step;
        job.progress(step as f64 / steps as f64, format!("{left} to go"))
            .await;
        job.log(format!("step {step}/{steps}")).await;
    }
    Ok(json!({"agent_id": agent_id, "steps": steps}))
}
