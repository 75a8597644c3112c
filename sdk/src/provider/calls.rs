//! Running one call or job: the handler with its deadline and cancellation, and the answer or
//! the job's events.

use super::*;
use crate::job::{JobContext, Outbox};
use croupier_proto::control::v1::{AgentFrame, Invoke, InvokeResult, agent_frame};
use croupier_proto::function::v1::EventType;
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

impl Provider {
    /// Answers a call (or job) that will not run: a failure with `code`, or the job's `ERROR`.
    fn refuse(
        &self,
        inv: Invoke,
        out: mpsc::Sender<AgentFrame>,
        code: &'static str,
        message: String,
    ) {
        if inv.job_id.is_empty() {
            let result = failure(&inv.request_id, code, message);
            croupier_proto::task::spawn("call", async move { out.send(result).await });
        } else {
            let outbox = self.outbox.clone();
            croupier_proto::task::spawn("call", async move {
                if outbox.begin(&inv.job_id, &inv.function_id).await {
                    let data = Some(serde_json::json!({ "code": code }));
                    outbox
                        .emit(&inv.job_id, EventType::Error, message, 0.0, data)
                        .await;
                }
            });
        }
    }

    pub(super) fn spawn_call(&self, mut inv: Invoke, out: &mpsc::Sender<AgentFrame>) {
        let out = out.clone();
        let request_id = inv.request_id.clone();
        if let Some(why) = croupier_proto::codec::undecodable_reason(inv.payload.as_ref()) {
            // The codec could not decode this call's payload: fail the call, keep the tunnel.
            let message = format!("the agent could not decode the call's payload: {why}");
            tracing::warn!(request_id = %request_id, function = %inv.function_id, %message);
            self.refuse(inv, out, "INVALID_ARGUMENT", message);
            return;
        }
        let Some(handler) = self.handlers.get(&inv.function_id).cloned() else {
            let message = format!("this agent does not provide {}", inv.function_id);
            metrics::counter!(crate::metrics::CALLS, "function" => "(unknown)", "outcome" => "NOT_FOUND")
                .increment(1);
            self.refuse(inv, out, "NOT_FOUND", message);
            return;
        };
        if let Some(a) = self
            .assignments
            .lock()
            .get(&inv.function_id)
            // Disabled by an assignment (not only by the node state, which the server checks
            // when it routes, and which the map may not reflect yet).
            .filter(|a| !a.enabled && !a.assignment_ids.is_empty())
            .filter(|_| {
                self.state.borrow().node_state
                    == croupier_proto::common::v1::NodeState::Normal as i32
            })
        {
            // The server routes around a disabled function; a call sent before the change
            // reached it is refused here.
            let message = format!(
                "{} is disabled on agent {} by assignment {}",
                inv.function_id,
                self.cfg.agent_id,
                a.assignment_ids.join(", ")
            );
            self.refuse(inv, out, "FUNCTION_DISABLED", message);
            return;
        }
        let running = Arc::new(Running::default());
        self.running
            .lock()
            .insert(request_id.clone(), running.clone());
        let running_map = self.running.clone();
        let call_metrics = self.call_metrics.clone();
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_millis(inv.timeout_ms.max(1) as u64);
        let job_id = inv.job_id.clone();
        // The handler's span, child of the server's; it is the context the handler sees.
        let mut span = (!inv.traceparent.is_empty()).then(|| {
            use croupier_proto::trace::{KeyValue, Span, SpanKind};
            let mut attrs = vec![
                KeyValue::new("croupier.function", inv.function_id.clone()),
                KeyValue::new("croupier.agent_id", self.cfg.agent_id.clone()),
                KeyValue::new("croupier.request_id", request_id.clone()),
            ];
            if !job_id.is_empty() {
                attrs.push(KeyValue::new("croupier.job_id", job_id.clone()));
            }
            Span::start("handler", SpanKind::Server, Some(&inv.traceparent), attrs)
        });
        if let Some(span) = &span {
            inv.traceparent = span.traceparent().to_string();
        }
        let call = Invocation {
            request_id: request_id.clone(),
            function_id: inv.function_id,
            payload: opt_struct_to_json(inv.payload.as_ref()),
            caller: inv.caller,
            game_id: inv.game_id,
            env: inv.env,
            idempotency_key: inv.idempotency_key,
            traceparent: inv.traceparent,
            config: inv.config,
            deadline: Instant::now() + timeout,
            cancel: running.cancel.clone(),
        };
        let env = JobEnv {
            outbox: self.outbox.clone(),
            locals: self.locals.clone(),
            agent_id: self.cfg.agent_id.clone(),
            cancel_grace: self.cfg.cancel_grace,
        };
        let limit = self.server_limit.load(Ordering::Relaxed);
        let trace = call.traceparent.clone();
        let run = async move {
            let started = Instant::now();
            let function = call.function_id.clone();
            let outcome_code = if job_id.is_empty() {
                let outcome = run_call(handler, call, timeout, &running, &env.locals).await;
                let frame = match outcome.map(|v| json_to_struct(&v)) {
                    Ok(result) => match croupier_proto::limits::check_payload(Some(&result), limit)
                    {
                        Ok(()) => AgentFrame {
                            frame: Some(agent_frame::Frame::Result(InvokeResult {
                                request_id: request_id.clone(),
                                success: true,
                                result: Some(result),
                                error: String::new(),
                                error_code: String::new(),
                            })),
                        },
                        Err(e) => {
                            tracing::warn!(request_id = %request_id, error = %e, "result refused");
                            failure(
                                &request_id,
                                "RESULT_REFUSED",
                                format!("the handler's result {e}"),
                            )
                        }
                    },
                    Err(e) => failure(&request_id, &e.code, e.message),
                };
                let code = match &frame.frame {
                    Some(agent_frame::Frame::Result(r)) if !r.success => r.error_code.clone(),
                    _ => "ok".to_string(),
                };
                let _ = out.send(frame).await;
                Some(code)
            } else {
                metrics::gauge!(crate::metrics::JOBS_RUNNING).increment(1.0);
                let outcome = run_job(handler, call, timeout, &running, &env).await;
                metrics::gauge!(crate::metrics::JOBS_RUNNING).decrement(1.0);
                outcome
            };
            if let (Some(span), Some(code)) = (&mut span, &outcome_code)
                && code != "ok"
            {
                span.set_error(code.clone());
            }
            drop(span);
            if let Some(code) = outcome_code {
                let took = started.elapsed().as_secs_f64();
                call_metrics.record(&[&function, &code], took, || {
                    let labels = [("function", function.clone()), ("outcome", code.clone())];
                    (
                        metrics::counter!(crate::metrics::CALLS, &labels),
                        metrics::histogram!(crate::metrics::CALL_SECONDS, &labels),
                    )
                });
            }
            running_map.lock().remove(&request_id);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        };
        // The handler runs inside its call's trace: calls it makes carry it on.
        if trace.is_empty() {
            croupier_proto::task::spawn("call", run);
        } else {
            croupier_proto::task::spawn("call", croupier_proto::trace::scope(trace, run));
        }
    }
}

/// Runs a plain invocation: the handler is dropped when the deadline passes or the call is
/// cancelled.
/// What a job needs besides its handler and invocation.
pub(super) struct JobEnv {
    pub(super) outbox: Arc<Outbox>,
    pub(super) locals: crate::job::Locals,
    pub(super) agent_id: String,
    pub(super) cancel_grace: Duration,
}

pub(super) async fn run_call(
    handler: Handler,
    call: Invocation,
    timeout: Duration,
    running: &Running,
    locals: &crate::job::Locals,
) -> Result<serde_json::Value, HandlerError> {
    let fut = match handler {
        Handler::Call(h) => h(call),
        Handler::Job(h) => h(JobContext::new(call, None).with_locals(locals.clone())),
    };
    tokio::select! {
        r = fut => r,
        _ = tokio::time::sleep(timeout) => {
            running.cancel.cancel();
            Err(HandlerError::new("DEADLINE_EXCEEDED", "the call's deadline passed"))
        }
        _ = running.cancel.cancelled() => Err(HandlerError::new("CANCELLED", "the call was cancelled")),
    }
}

/// Runs a job: `START`, the handler (given `cancel_grace` to clean up once cancelled), then one
/// terminal event. Returns its outcome (`ok` or the error code), None for a repeated `Invoke`.
pub(super) async fn run_job(
    handler: Handler,
    call: Invocation,
    timeout: Duration,
    running: &Running,
    env: &JobEnv,
) -> Option<String> {
    let (outbox, agent_id, cancel_grace) = (&env.outbox, env.agent_id.as_str(), env.cancel_grace);
    let job_id = call.request_id.clone();
    if !outbox.begin(&job_id, &call.function_id).await {
        tracing::debug!(job_id = %job_id, "job already running here; repeated Invoke ignored");
        return None;
    }
    let start_data = serde_json::json!({ "agent_id": agent_id });
    outbox
        .emit(
            &job_id,
            EventType::Start,
            format!("started on {agent_id}"),
            0.0,
            Some(start_data),
        )
        .await;
    let fut = match handler {
        Handler::Job(h) => {
            h(JobContext::new(call, Some(outbox.clone())).with_locals(env.locals.clone()))
        }
        Handler::Call(h) => h(call),
    };
    tokio::pin!(fut);
    let mut deadline_passed = false;
    let outcome = tokio::select! {
        r = &mut fut => r,
        _ = tokio::time::sleep(timeout) => {
            deadline_passed = true;
            running.cancel.cancel();
            tokio::time::timeout(cancel_grace, &mut fut).await.unwrap_or_else(|_| {
                Err(HandlerError::new("CANCELLED", "the handler did not stop within the cancel grace"))
            })
        }
        _ = running.cancel.cancelled() => {
            tokio::time::timeout(cancel_grace, &mut fut).await.unwrap_or_else(|_| {
                Err(HandlerError::new("CANCELLED", "the handler did not stop within the cancel grace"))
            })
        }
    };
    let reason = running.reason.lock().clone();
    let (kind, message, progress, data) = match (reason, deadline_passed, outcome) {
        (Some(reason), _, _) => (
            EventType::Cancelled,
            reason,
            0.0,
            serde_json::json!({ "code": "CANCELLED" }),
        ),
        (None, true, _) => (
            EventType::Error,
            format!("the job's deadline ({timeout:?}) passed"),
            0.0,
            serde_json::json!({ "code": "DEADLINE_EXCEEDED" }),
        ),
        (None, false, Ok(v)) => (EventType::Done, "done".to_string(), 1.0, v),
        (None, false, Err(e)) => (
            EventType::Error,
            e.message,
            0.0,
            serde_json::json!({ "code": e.code }),
        ),
    };
    let outcome = match kind {
        EventType::Done => "ok".to_string(),
        _ => data["code"].as_str().unwrap_or("ERROR").to_string(),
    };
    outbox
        .emit(&job_id, kind, message, progress, Some(data))
        .await;
    Some(outcome)
}

pub(super) fn failure(request_id: &str, code: &str, message: String) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Result(InvokeResult {
            request_id: request_id.to_string(),
            success: false,
            result: None,
            error: message,
            error_code: code.to_string(),
        })),
    }
}
