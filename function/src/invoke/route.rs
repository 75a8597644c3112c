//! Routing one call: the candidates, the mode's pick, the send down a tunnel or to the owning
//! replica, safe retries, broadcasts, and the errors that say why no agent could take it.

use super::*;
use crate::error::FunctionError;
use crate::router::{Mode, Slot, rendezvous};
use croupier_control::LinkError;
use croupier_proto::control::v1::{Invoke, InvokeResult};
use croupier_proto::function::v1::{AgentResult, InvokeFunctionRequest, InvokeFunctionResponse};
use croupier_registry::model::NodeState;
use croupier_registry::view::{Candidate, FnKey};
use tokio::time::Instant;

impl Invoker {
    /// True when the candidate can take the call now.
    pub(super) fn usable(
        &self,
        c: &Candidate,
        key: &FnKey,
        opts: &croupier_proto::function::v1::InvokeOptions,
        local_only: bool,
    ) -> bool {
        c.state == NodeState::Normal
            && c.assignment.as_ref().is_none_or(|a| a.enabled)
            && c.agent.matches(&opts.selector)
            && (opts.version.is_empty()
                || c.agent
                    .provides(&key.function_id)
                    .is_some_and(|f| f.version == opts.version))
            && (self.link.is_connected(&c.agent.agent_id)
                || (!local_only && self.remote_owner(&c.agent.agent_id).is_some()))
    }

    /// The function's configuration on `agent` from the admins' assignments (empty when none
    /// applies).
    pub(super) fn assigned_config(
        &self,
        agent: &str,
        function_id: &str,
    ) -> std::collections::HashMap<String, String> {
        self.view
            .assignment(agent, function_id)
            .map(|a| a.config.into_iter().collect())
            .unwrap_or_default()
    }

    /// The other replica holding the agent's tunnel, when there is one and it is alive.
    pub(super) fn remote_owner(&self, agent_id: &str) -> Option<String> {
        self.forwarder.as_ref()?.remote_owner(agent_id)
    }

    /// For targeted routing: the target must provide the function and be usable.
    pub(super) fn check_target(
        &self,
        all: &[Candidate],
        key: &FnKey,
        opts: &croupier_proto::function::v1::InvokeOptions,
        local_only: bool,
    ) -> Result<(), FunctionError> {
        if opts.target_agent.is_empty() {
            return Err(FunctionError::BadRequest(
                "routing_mode targeted needs options.target_agent".into(),
            ));
        }
        let Some(c) = all.iter().find(|c| c.agent.agent_id == opts.target_agent) else {
            if self.view.agent(&opts.target_agent).is_none() {
                return Err(FunctionError::NotProvided(format!(
                    "no agent {:?} is registered; `croupier agents` lists those there are",
                    opts.target_agent
                )));
            }
            return Err(FunctionError::NotProvided(format!(
                "agent {:?} does not provide {} in game {:?} env {:?}",
                opts.target_agent, key.function_id, key.game_id, key.env
            )));
        };
        if !self.usable(c, key, opts, local_only) {
            return Err(FunctionError::NoAgent(format!(
                "agent {:?} cannot take {} now: {}",
                opts.target_agent,
                key.function_id,
                self.why_not(c, opts, &key.function_id)
            )));
        }
        Ok(())
    }

    pub(super) async fn route(
        &self,
        call: &Call<'_>,
        mode: Mode,
        opts: &croupier_proto::function::v1::InvokeOptions,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let all = self.view.candidates(&call.key);
        match mode {
            Mode::Broadcast => {
                let targets: Vec<&Candidate> = all
                    .iter()
                    .filter(|c| self.usable(c, &call.key, opts, call.local_only))
                    .collect();
                if targets.is_empty() {
                    return Err(self.unavailable(&call.key, &all, opts));
                }
                Ok(self.broadcast(call, &targets).await)
            }
            Mode::Targeted => {
                self.check_target(&all, &call.key, opts, call.local_only)?;
                let target: Vec<Candidate> = all
                    .into_iter()
                    .filter(|c| c.agent.agent_id == opts.target_agent)
                    .collect();
                self.single(call, &target, mode, opts).await
            }
            _ => {
                if mode == Mode::Hash && opts.hash_key.is_empty() {
                    return Err(FunctionError::BadRequest(
                        "routing_mode hash needs options.hash_key".into(),
                    ));
                }
                let usable: Vec<Candidate> = all
                    .iter()
                    .filter(|c| self.usable(c, &call.key, opts, call.local_only))
                    .cloned()
                    .collect();
                if usable.is_empty() {
                    return Err(self.unavailable(&call.key, &all, opts));
                }
                self.single(call, &usable, mode, opts).await
            }
        }
    }

    /// Picks one of `candidates` (minus `excluded`) by `mode`.
    pub(super) fn pick(
        &self,
        key: &FnKey,
        candidates: &[Candidate],
        mode: Mode,
        opts: &croupier_proto::function::v1::InvokeOptions,
        excluded: &[String],
    ) -> Option<String> {
        let slots: Vec<Slot<'_>> = candidates
            .iter()
            .filter(|c| !excluded.contains(&c.agent.agent_id))
            .map(|c| Slot {
                agent_id: &c.agent.agent_id,
                load: self.link.load(&c.agent.agent_id),
            })
            .collect();
        let i = match mode {
            Mode::RoundRobin => self.rotation.round_robin(&key.function_id, &slots),
            Mode::Hash => rendezvous(&opts.hash_key, &slots),
            _ => self.rotation.least_loaded(&slots),
        }?;
        Some(slots[i].agent_id.to_string())
    }

    /// Runs the call on one agent picked by `mode`, moving to another agent only when the first
    /// was never reached, or was lost and the call is safe to repeat.
    pub(super) async fn single(
        &self,
        call: &Call<'_>,
        candidates: &[Candidate],
        mode: Mode,
        opts: &croupier_proto::function::v1::InvokeOptions,
    ) -> Result<InvokeFunctionResponse, FunctionError> {
        let mut excluded: Vec<String> = Vec::new();
        let mut lost: Option<String> = None;
        loop {
            let Some(agent) = self.pick(&call.key, candidates, mode, opts, &excluded) else {
                return Err(FunctionError::NoAgent(match lost {
                    Some(a) => format!(
                        "agent {a} was lost before it answered {} and no other agent could take \
                         the retry",
                        call.key.function_id
                    ),
                    None => format!(
                        "no agent could be reached for {} (all disconnected)",
                        call.key.function_id
                    ),
                }));
            };
            let agent = agent.as_str();
            match self.send(call, agent).await {
                Ok(r) => return Ok(response(r, agent)),
                Err(Sent::DeadlinePassed) => return Err(self.deadline(call, agent)),
                Err(Sent::Remote(owner, s)) => return Err(remote_error(&owner, agent, s)),
                Err(Sent::Link(LinkError::NotConnected(_) | LinkError::Overloaded(_))) => {
                    excluded.push(agent.to_string());
                }
                Err(Sent::Link(e @ LinkError::FrameTooLarge { .. })) => {
                    return Err(FunctionError::LimitReached(e.to_string()));
                }
                Err(Sent::Link(LinkError::Lost(_)))
                    if call.retry_safe && mode != Mode::Targeted =>
                {
                    tracing::warn!(
                        agent_id = agent,
                        "agent lost mid-call; retrying on another agent"
                    );
                    excluded.push(agent.to_string());
                    lost = Some(agent.to_string());
                }
                Err(Sent::Link(LinkError::Lost(_))) => {
                    return Err(FunctionError::AgentLost(format!(
                        "agent {agent} was lost before it answered {}; the call may or may not \
                         have run, so it was not retried{}",
                        call.key.function_id,
                        if call.retry_safe {
                            String::new()
                        } else {
                            " (the function is not idempotent and the call has no idempotency key)"
                                .into()
                        }
                    )));
                }
            }
            if Instant::now() >= call.deadline {
                return Err(self.deadline(call, agent));
            }
        }
    }

    pub(super) async fn broadcast(
        &self,
        call: &Call<'_>,
        targets: &[&Candidate],
    ) -> InvokeFunctionResponse {
        let runs = targets.iter().map(|c| async move {
            let agent = c.agent.agent_id.as_str();
            match self.send(call, agent).await {
                Ok(r) => AgentResult {
                    agent_id: agent.to_string(),
                    success: r.success,
                    result: r.result,
                    error: r.error,
                    error_code: r.error_code,
                },
                Err(Sent::Remote(owner, s)) => AgentResult {
                    agent_id: agent.to_string(),
                    success: false,
                    result: None,
                    error: remote_error(&owner, agent, s.clone()).to_string(),
                    error_code: format!("{:?}", s.code()).to_uppercase(),
                },
                Err(Sent::DeadlinePassed) => AgentResult {
                    agent_id: agent.to_string(),
                    success: false,
                    result: None,
                    error: self.deadline(call, agent).to_string(),
                    error_code: "DEADLINE_EXCEEDED".into(),
                },
                Err(Sent::Link(e)) => AgentResult {
                    agent_id: agent.to_string(),
                    success: false,
                    result: None,
                    error: e.to_string(),
                    error_code: "UNAVAILABLE".into(),
                },
            }
        });
        let mut results: Vec<AgentResult> = futures::future::join_all(runs).await;
        fit_results(&mut results, self.cfg.max_message_bytes);
        let failed = results.iter().filter(|r| !r.success).count();
        InvokeFunctionResponse {
            success: failed == 0,
            result: None,
            error: if failed == 0 {
                String::new()
            } else {
                format!("{failed} of {} agents failed", results.len())
            },
            error_code: if failed == 0 {
                String::new()
            } else {
                "PARTIAL_FAILURE".into()
            },
            agent_id: String::new(),
            results,
            request_id: String::new(),
        }
    }

    /// Sends the call to one agent within the remaining deadline. When the deadline passes the
    /// invocation future is dropped, which cancels the call on the agent.
    pub(super) async fn send(&self, call: &Call<'_>, agent: &str) -> Result<InvokeResult, Sent> {
        let mut span = croupier_proto::trace::Span::in_current(
            "route",
            croupier_proto::trace::SpanKind::Internal,
            vec![croupier_proto::trace::KeyValue::new(
                "croupier.agent_id",
                agent.to_string(),
            )],
        );
        let tp = span.traceparent().to_string();
        let sent = croupier_proto::trace::scope(tp, self.send_to(call, agent)).await;
        match &sent {
            Ok(r) if !r.success => span.set_error(format!("{}: {}", r.error_code, r.error)),
            Ok(_) => {}
            Err(Sent::Remote(owner, s)) => span.set_error(format!("via {owner}: {s}")),
            Err(Sent::Link(e)) => span.set_error(e.to_string()),
            Err(Sent::DeadlinePassed) => span.set_error("deadline passed"),
        }
        sent
    }

    async fn send_to(&self, call: &Call<'_>, agent: &str) -> Result<InvokeResult, Sent> {
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        if !call.local_only
            && !self.link.is_connected(agent)
            && let (Some(fwd), Some(owner)) = (&self.forwarder, self.remote_owner(agent))
        {
            let mut opts = call.req.options.clone().unwrap_or_default();
            opts.routing_mode = "targeted".into();
            opts.target_agent = agent.to_string();
            // A broadcast's key stays with this server (it stores the whole broadcast's outcome).
            if !(call.keyed && self.hand_over(&call.claim).await) {
                opts.idempotency_key.clear();
            }
            opts.timeout = remaining.as_secs_f64().ceil().max(1.0) as i32;
            let req = InvokeFunctionRequest {
                game_id: call.key.game_id.clone(),
                env: call.key.env.clone(),
                function_id: call.key.function_id.clone(),
                payload: call.req.payload.clone(),
                options: Some(opts),
            };
            return match fwd.invoke(&owner, call.who, req, remaining).await {
                Ok(r) => Ok(InvokeResult {
                    request_id: r.request_id,
                    success: r.success,
                    result: r.result,
                    error: r.error,
                    error_code: r.error_code,
                }),
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => Err(Sent::DeadlinePassed),
                // tonic ends a request whose own timeout ran out with CANCELLED "Timeout
                // expired": the owner did not answer in time (unreachable, partitioned or
                // overloaded), and whether the call ran there is unknown.
                Err(s) if s.code() == tonic::Code::Cancelled && Instant::now() >= call.deadline => {
                    Err(Sent::Remote(owner, crate::forward::no_answer(call.timeout)))
                }
                Err(s) => Err(Sent::Remote(owner, s)),
            };
        }
        let invoke = Invoke {
            // Random v4 id from the thread-local generator: no system call per call.
            request_id: uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string(),
            function_id: call.key.function_id.clone(),
            payload: call.req.payload.clone(),
            // Rounded up, so that the agent's deadline is never before this server's.
            timeout_ms: remaining.as_micros().div_ceil(1000).max(1) as i64,
            game_id: call.key.game_id.clone(),
            env: call.key.env.clone(),
            caller: call.who.uri(),
            // The agent's handler is a child of the route span.
            traceparent: croupier_proto::trace::current().unwrap_or_default(),
            idempotency_key: call
                .req
                .options
                .as_ref()
                .map(|o| o.idempotency_key.clone())
                .unwrap_or_default(),
            job_id: String::new(),
            config: self.assigned_config(agent, &call.key.function_id),
        };
        let request_id = invoke.request_id.clone();
        let outcome = if call.keyed {
            // Spawned, so that an agent still running the call past the deadline can be heard.
            let link = self.link.clone();
            let owned = agent.to_string();
            let mut answer = AbortOnDrop(croupier_proto::task::spawn("keyed call", async move {
                link.invoke(&owned, invoke).await
            }));
            match tokio::time::timeout(remaining, &mut answer.0).await {
                Ok(joined) => Ok(joined.unwrap_or_else(|_| Err(LinkError::Lost(agent.into())))),
                Err(elapsed) => {
                    self.link.send_frame(agent, cancel_frame(&request_id));
                    *call.late.lock() = Some(LateAnswer {
                        agent: agent.to_string(),
                        answer,
                    });
                    Err(elapsed)
                }
            }
        } else {
            tokio::time::timeout(remaining, self.link.invoke(agent, invoke)).await
        };
        match outcome {
            // The agent gave up at the deadline it was sent, which is never before ours; on a
            // busy machine its answer can be read before our own timer is: the same outcome.
            Ok(Ok(r))
                if !r.success
                    && r.error_code == "DEADLINE_EXCEEDED"
                    && Instant::now() >= call.deadline =>
            {
                Err(Sent::DeadlinePassed)
            }
            Ok(Ok(mut r)) => {
                r.request_id = request_id;
                Ok(r)
            }
            Ok(Err(e)) => Err(Sent::Link(e)),
            Err(_) => Err(Sent::DeadlinePassed),
        }
    }

    /// A keyed call about to be forwarded hands its idempotency key to the owner: this server
    /// frees its claim and the forward carries the key, so the owner claims it, runs the call
    /// once and stores the outcome. That holds when the request reaches the owner late (a
    /// partition between the replicas delays it past the caller's deadline) and when the caller
    /// repeats the call through either server. True when the claim was handed over (the
    /// forward keeps the key); false when this server held none (the key is not sent on).
    pub(super) async fn hand_over(
        &self,
        claim: &Mutex<Option<crate::idempotency::Ticket>>,
    ) -> bool {
        let ticket = claim.lock().take();
        match ticket {
            Some(ticket) => {
                self.idem.abandon(ticket).await;
                true
            }
            None => false,
        }
    }

    pub(super) fn deadline(&self, call: &Call<'_>, agent: &str) -> FunctionError {
        FunctionError::DeadlinePassed(format!(
            "agent {agent} did not answer {} within {:?}; the call was cancelled on the agent",
            call.key.function_id, call.timeout
        ))
    }

    pub(super) fn why_not(
        &self,
        c: &Candidate,
        opts: &croupier_proto::function::v1::InvokeOptions,
        function_id: &str,
    ) -> String {
        let node = self.view.node(&c.agent.agent_id);
        match c.state {
            NodeState::Maintenance => {
                return format!("in maintenance ({:?} by {})", node.reason, node.actor);
            }
            NodeState::Disabled => {
                return format!("disabled ({:?} by {})", node.reason, node.actor);
            }
            NodeState::Normal => {}
        }
        if let Some(a) = c.assignment.as_ref().filter(|a| !a.enabled) {
            return format!("{function_id} is disabled on it by {}", a.decided_by);
        }
        if !c.agent.matches(&opts.selector) {
            return "labels do not match the selector".into();
        }
        if !opts.version.is_empty() {
            let v = c
                .agent
                .provides(function_id)
                .map(|f| f.version.as_str())
                .unwrap_or("");
            if v != opts.version {
                return format!("provides version {v:?}, not {:?}", opts.version);
            }
        }
        "not connected (tunnel down)".into()
    }

    pub(super) fn unavailable(
        &self,
        key: &FnKey,
        all: &[Candidate],
        opts: &croupier_proto::function::v1::InvokeOptions,
    ) -> FunctionError {
        let f = &key.function_id;
        if all.is_empty() {
            return FunctionError::NoAgent(format!(
                "no agent provides {f} in game {:?} env {:?} right now (the function is \
                 registered, but its agents are offline)",
                key.game_id, key.env
            ));
        }
        let reasons: Vec<String> = all
            .iter()
            .take(5)
            .map(|c| format!("{}: {}", c.agent.agent_id, self.why_not(c, opts, f)))
            .collect();
        let more = all.len().saturating_sub(5);
        FunctionError::NoAgent(format!(
            "no agent can take {f} now ({}{})",
            reasons.join("; "),
            if more > 0 {
                format!("; {more} more")
            } else {
                String::new()
            }
        ))
    }
}

/// Why a send did not produce a result.
pub(super) enum Sent {
    /// The owning replica answered with an error.
    Remote(String, tonic::Status),
    /// The agent could not be reached or was lost.
    Link(LinkError),
    /// The deadline passed first.
    DeadlinePassed,
}

/// An error the owning replica answered, naming the hop.
pub(super) fn remote_error(owner: &str, agent: &str, s: tonic::Status) -> FunctionError {
    let message = format!(
        "via server {owner} (owner of agent {agent}): {}",
        s.message()
    );
    FunctionError::Remote(tonic::Status::new(s.code(), message))
}

/// Keeps a broadcast's answer within the message limit: while the results together are too
/// large, the largest one is replaced by an error that says why (each alone fits: agents' results
/// are checked when they arrive).
pub(super) fn fit_results(results: &mut [AgentResult], max_message_bytes: usize) {
    use prost::Message as _;
    let limit = croupier_proto::limits::max_payload_bytes(max_message_bytes);
    let mut total: usize = results.iter().map(|r| r.encoded_len() + 8).sum();
    while total > limit {
        let Some(largest) = results
            .iter_mut()
            .filter(|r| r.result.is_some())
            .max_by_key(|r| r.encoded_len())
        else {
            return;
        };
        let before = largest.encoded_len();
        largest.result = None;
        largest.success = false;
        largest.error = format!(
            "the result ({before} bytes) was dropped: all agents' results together pass the \
             message limit of {max_message_bytes} bytes; call the agent alone (routing_mode \
             targeted) to get it"
        );
        largest.error_code = "RESULT_TOO_LARGE".into();
        total = total - before + largest.encoded_len();
    }
}
