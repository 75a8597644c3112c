//! The `pipeline` pack: `pipeline.start`, a job that runs a pipeline template's steps in order
//! on this agent (DESIGN §7).
//!
//! The server gives it `{template, args, envs}`: the template, its args already checked and
//! filled, and the caller's envs. Here the envs are merged with the agent's own environment
//! (the agent's value wins for the same name; names only the caller gives are added), the
//! `${args.NAME}` and `${env.NAME}` placeholders in each step's arguments are filled, and each
//! step's function runs as a local call. Every step reports `{step, index, status}` data events:
//! PENDING (all, at the start), then RUNNING, then COMPLETED, FAILED or CANCELLED; a step's own
//! log lines (e.g. its container's output) are the job's LOG events tagged with the step.
//! Progress is steps done / steps. A step fails when its function fails or answers a non-zero
//! `exit_code` (container.run, container.exec). A failed step stops the pipeline unless it says
//! `continue_on_failure`; cancelling the job cancels the running step (a `container.run` step
//! stops and removes its container) and the steps not run end CANCELLED.

use std::collections::BTreeMap;
use std::time::Duration;

use croupier_proto::common::v1::{FunctionDescriptor, Semantics};
use croupier_sdk::{HandlerError, JobContext, Provider};
use serde_json::{Value, json};

use crate::descriptor;

/// Registers `pipeline.start`.
pub(crate) fn register(provider: Provider) -> Provider {
    provider.job(descriptor(), run)
}

fn descriptor() -> FunctionDescriptor {
    descriptor::descriptor(
        "pipeline.start",
        "pipeline",
        "Runs a stored pipeline template's steps in order on this agent. Start it with \
         {template_id, args, envs}; the server fills the template's args.",
        Semantics {
            job: true,
            ..descriptor::semantics("command", false, 0)
        },
        &json!({
            "type": "object",
            "properties": {
                "template_id": {"type": "string"},
                "args": {"type": "object", "additionalProperties": {"type": "string"}},
                "envs": {"type": "object", "additionalProperties": {"type": "string"}},
                "template": {"type": "object"}
            }
        }),
        &json!({
            "type": "object",
            "properties": {
                "pipeline": {"type": "string"},
                "steps": {"type": "array", "items": {"type": "object"}}
            }
        }),
    )
}

/// The caller's envs with the agent's environment over them.
pub fn merge_envs(
    given: &Value,
    agent: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = given
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in agent {
        out.insert(k, v);
    }
    out
}

/// Fills `${args.X}` and `${env.X}` in every string of `v`; an unknown name is an error
/// naming it.
pub fn fill(v: &Value, args: &Value, envs: &BTreeMap<String, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    out.push_str(&rest[start..]);
                    rest = "";
                    break;
                };
                let inner = &after[..end];
                let value = match inner.split_once('.') {
                    Some(("args", name)) => args[name]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("no value for ${{args.{name}}}"))?,
                    Some(("env", name)) => envs.get(name).cloned().ok_or_else(|| {
                        format!(
                            "no value for ${{env.{name}}}: neither the caller nor this agent's \
                             environment sets {name}"
                        )
                    })?,
                    _ => format!("${{{inner}}}"),
                };
                out.push_str(&value);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| fill(x, args, envs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), fill(x, args, envs)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// A step whose result has a non-zero `exit_code` (container.run, container.exec) failed.
fn exit_status(v: Value) -> Result<Value, HandlerError> {
    match v["exit_code"].as_i64() {
        Some(code) if code != 0 => {
            let stderr = v["stderr"].as_str().unwrap_or_default().trim();
            Err(HandlerError::new(
                "EXIT_CODE",
                if stderr.is_empty() {
                    format!("exited with code {code}")
                } else {
                    format!("exited with code {code}: {stderr}")
                },
            ))
        }
        _ => Ok(v),
    }
}

async fn status(job: &JobContext, index: usize, step: &str, status: &str, message: String) {
    job.data(
        message,
        json!({"step": step, "index": index, "status": status}),
    )
    .await;
}

async fn run(job: JobContext) -> Result<Value, HandlerError> {
    let outcome = run_steps(job).await;
    let label = match &outcome {
        Ok(_) => "completed",
        Err(e) if e.code == "CANCELLED" => "cancelled",
        Err(e) if e.code == "STEP_FAILED" => "failed",
        Err(_) => "invalid",
    };
    metrics::counter!(crate::metrics::PIPELINE_RUNS, "outcome" => label).increment(1);
    outcome
}

fn count_step(status: &'static str) {
    metrics::counter!(crate::metrics::PIPELINE_STEPS, "status" => status).increment(1);
}

async fn run_steps(job: JobContext) -> Result<Value, HandlerError> {
    let payload = job.payload().clone();
    let template = &payload["template"];
    let Some(steps) = template["steps"].as_array().filter(|s| !s.is_empty()) else {
        return Err(HandlerError::new(
            "INVALID_ARGUMENT",
            "start pipelines with InvokeJob of pipeline.start and {template_id, args, envs}; \
             the server fills in the template",
        ));
    };
    let id = template["id"].as_str().unwrap_or_default().to_string();
    let envs = merge_envs(&payload["envs"], std::env::vars());
    let args = payload["args"].clone();
    let name = |s: &Value| s["name"].as_str().unwrap_or_default().to_string();
    for (i, s) in steps.iter().enumerate() {
        status(
            &job,
            i,
            &name(s),
            "PENDING",
            format!("step {} pending", name(s)),
        )
        .await;
    }
    let mut results = Vec::new();
    let mut failed: Option<String> = None;
    for (i, s) in steps.iter().enumerate() {
        let step = name(s);
        if job.cancel().is_cancelled() || failed.is_some() {
            let why = failed
                .as_ref()
                .map_or("the pipeline was cancelled".to_string(), |f| {
                    format!("not run: step {f} failed")
                });
            status(&job, i, &step, "CANCELLED", why).await;
            count_step("CANCELLED");
            results.push(json!({"step": step, "status": "CANCELLED"}));
            continue;
        }
        let function = s["function_id"].as_str().unwrap_or_default();
        status(
            &job,
            i,
            &step,
            "RUNNING",
            format!("step {step}: {function}"),
        )
        .await;
        let outcome = match fill(&s["args"], &args, &envs) {
            Err(e) => Err(HandlerError::new("INVALID_ARGUMENT", e)),
            Ok(step_args) => {
                let timeout = s["timeout"]
                    .as_u64()
                    .filter(|t| *t > 0)
                    .map(Duration::from_secs);
                job.call_local(function, step_args, timeout, &step)
                    .await
                    .and_then(exit_status)
            }
        };
        let cancelled = job.cancel().is_cancelled();
        let (state, result) = match &outcome {
            _ if cancelled => ("CANCELLED", json!({"error": "cancelled"})),
            Ok(v) => ("COMPLETED", v.clone()),
            Err(e) => ("FAILED", json!({"error_code": e.code, "error": e.message})),
        };
        count_step(state);
        let message = match &outcome {
            Err(e) if !cancelled => format!("step {step} failed: {}: {}", e.code, e.message),
            _ => format!("step {step} {}", state.to_lowercase()),
        };
        job.data(
            message,
            json!({"step": step, "index": i, "status": state, "result": result}),
        )
        .await;
        results.push(json!({"step": step, "status": state, "result": result}));
        job.progress(
            (i + 1) as f64 / steps.len() as f64,
            format!("{} of {} steps", i + 1, steps.len()),
        )
        .await;
        if state == "FAILED" && !s["continue_on_failure"].as_bool().unwrap_or(false) {
            failed = Some(step);
        }
    }
    if job.cancel().is_cancelled() {
        return Err(HandlerError::new(
            "CANCELLED",
            format!("pipeline {id} cancelled"),
        ));
    }
    if let Some(step) = failed {
        return Err(HandlerError::new(
            "STEP_FAILED",
            format!("pipeline {id} stopped: step {step} failed"),
        ));
    }
    Ok(json!({"pipeline": id, "steps": results}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_envs_win_and_placeholders_fill() {
        let envs = merge_envs(
            &json!({"REGION": "us", "ONLY_CALLER": "c"}),
            [("REGION".to_string(), "eu".to_string())],
        );
        assert_eq!(envs["REGION"], "eu", "the agent's value wins");
        assert_eq!(envs["ONLY_CALLER"], "c", "missing names are added");
        let v = fill(
            &json!({"cmd": ["echo", "${args.v} in ${env.REGION}"], "n": 3}),
            &json!({"v": "1.2"}),
            &envs,
        )
        .unwrap();
        assert_eq!(v, json!({"cmd": ["echo", "1.2 in eu"], "n": 3}));
        let err = fill(&json!("${env.NOPE}"), &json!({}), &envs).unwrap_err();
        assert!(err.contains("NOPE"), "{err}");
    }
}
