//! Fakes of [`AgentLink`] and [`JobSink`] for unit tests of the router and the job manager
//! (feature `test-util`). They hold no tunnel: a [`FakeLink`] answers invocations with what a
//! test scripted per agent and records every frame and job it was given; a [`RecordingSink`]
//! records what the tunnel would have handed on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use croupier_proto::control::v1::{Invoke, InvokeResult, RunningJob, ServerFrame};
use croupier_proto::function::v1::JobEvent;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::link::{AgentLink, JobSink, LinkError, Load};

/// How a fake agent answers one invocation.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answers `result` after `delay` (tokio time, so `tokio::time::pause` applies).
    After(Duration, InvokeResult),
    /// The agent is lost before it answers.
    Lost,
    /// The agent's tunnel is gone when the call is sent (nothing ran).
    Unreachable,
    /// The agent never answers (the caller's deadline decides).
    Never,
}

impl Reply {
    /// A successful answer with `result`, at once.
    pub fn ok(result: serde_json::Value) -> Reply {
        Reply::After(
            Duration::ZERO,
            InvokeResult {
                success: true,
                result: Some(croupier_proto::json::json_to_struct(&result)),
                ..Default::default()
            },
        )
    }
}

type Script = Arc<dyn Fn(&Invoke) -> Reply + Send + Sync>;

#[derive(Default)]
struct State {
    connected: HashSet<String>,
    sessions: HashSet<String>,
    scripts: HashMap<String, Script>,
    invokes: Vec<(String, Invoke)>,
    jobs: Vec<(String, Invoke)>,
    frames: Vec<(String, ServerFrame)>,
    load: HashMap<String, Load>,
    generation: u64,
}

/// An [`AgentLink`] whose agents are scripted by the test.
#[derive(Clone, Default)]
pub struct FakeLink {
    st: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl FakeLink {
    /// A link with no agents.
    pub fn new() -> Self {
        FakeLink::default()
    }

    /// Connects `agent` (tunnel up, session alive), answering with `script`.
    pub fn agent(&self, agent: &str, script: impl Fn(&Invoke) -> Reply + Send + Sync + 'static) {
        let mut st = self.st.lock();
        st.connected.insert(agent.to_string());
        st.sessions.insert(agent.to_string());
        st.scripts.insert(agent.to_string(), Arc::new(script));
    }

    /// Takes `agent`'s tunnel down (its session stays unless `session` is false).
    pub fn disconnect(&self, agent: &str, session: bool) {
        let mut st = self.st.lock();
        st.connected.remove(agent);
        if !session {
            st.sessions.remove(agent);
        }
    }

    /// Sets the load routing sees for `agent`.
    pub fn set_load(&self, agent: &str, load: Load) {
        self.st.lock().load.insert(agent.to_string(), load);
    }

    /// Every invocation sent, with its agent, in order.
    pub fn invokes(&self) -> Vec<(String, Invoke)> {
        self.st.lock().invokes.clone()
    }

    /// Every job `Invoke` sent, with its agent, in order.
    pub fn jobs(&self) -> Vec<(String, Invoke)> {
        self.st.lock().jobs.clone()
    }

    /// Every frame queued with `send_frame`, with its agent, in order.
    pub fn frames(&self) -> Vec<(String, ServerFrame)> {
        self.st.lock().frames.clone()
    }

    /// Waits until `pred` holds for the recorded frames (or panics after 10 s of tokio time).
    pub async fn wait_frames(&self, pred: impl Fn(&[(String, ServerFrame)]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let changed = self.changed.notified();
            if pred(&self.st.lock().frames) {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, changed).await.is_ok(),
                "the expected frames were never sent: {:?}",
                self.st.lock().frames
            );
        }
    }
}

#[async_trait]
impl AgentLink for FakeLink {
    fn is_connected(&self, agent_id: &str) -> bool {
        self.st.lock().connected.contains(agent_id)
    }

    fn load(&self, agent_id: &str) -> Load {
        self.st
            .lock()
            .load
            .get(agent_id)
            .copied()
            .unwrap_or_default()
    }

    async fn invoke(&self, agent_id: &str, invoke: Invoke) -> Result<InvokeResult, LinkError> {
        let script = {
            let mut st = self.st.lock();
            if !st.connected.contains(agent_id) {
                return Err(LinkError::NotConnected(agent_id.to_string()));
            }
            st.invokes.push((agent_id.to_string(), invoke.clone()));
            st.scripts.get(agent_id).cloned()
        };
        self.changed.notify_waiters();
        let reply = script.map_or(Reply::Never, |s| s(&invoke));
        match reply {
            Reply::After(delay, mut r) => {
                tokio::time::sleep(delay).await;
                r.request_id = invoke.request_id;
                Ok(r)
            }
            Reply::Lost => Err(LinkError::Lost(agent_id.to_string())),
            Reply::Unreachable => Err(LinkError::NotConnected(agent_id.to_string())),
            Reply::Never => std::future::pending().await,
        }
    }

    async fn start_job(&self, agent_id: &str, invoke: Invoke) -> Result<u64, LinkError> {
        let mut st = self.st.lock();
        if !st.connected.contains(agent_id) {
            return Err(LinkError::NotConnected(agent_id.to_string()));
        }
        st.jobs.push((agent_id.to_string(), invoke));
        st.generation += 1;
        let generation = st.generation;
        drop(st);
        self.changed.notify_waiters();
        Ok(generation)
    }

    fn send_frame(&self, agent_id: &str, frame: ServerFrame) -> bool {
        let mut st = self.st.lock();
        if !st.connected.contains(agent_id) {
            return false;
        }
        st.frames.push((agent_id.to_string(), frame));
        drop(st);
        self.changed.notify_waiters();
        true
    }

    fn has_session(&self, agent_id: &str) -> bool {
        self.st.lock().sessions.contains(agent_id)
    }
}

/// What a [`RecordingSink`] was handed.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkCall {
    /// A job event.
    Event(String, u64, JobEvent),
    /// A jobs report.
    Report(String, u64, Vec<RunningJob>),
    /// An agent went away.
    AgentGone(String, String),
    /// A node was disabled.
    NodeDisabled(String, String),
}

/// A [`JobSink`] that records every call, in order.
#[derive(Clone, Default)]
pub struct RecordingSink {
    calls: Arc<Mutex<Vec<SinkCall>>>,
}

impl RecordingSink {
    /// The calls so far.
    pub fn calls(&self) -> Vec<SinkCall> {
        self.calls.lock().clone()
    }
}

#[async_trait]
impl JobSink for RecordingSink {
    async fn event(&self, agent_id: &str, generation: u64, event: JobEvent) {
        self.calls
            .lock()
            .push(SinkCall::Event(agent_id.into(), generation, event));
    }

    async fn report(&self, agent_id: &str, generation: u64, jobs: Vec<RunningJob>) {
        self.calls
            .lock()
            .push(SinkCall::Report(agent_id.into(), generation, jobs));
    }

    fn agent_gone(&self, agent_id: &str, reason: &str) {
        self.calls
            .lock()
            .push(SinkCall::AgentGone(agent_id.into(), reason.into()));
    }

    fn node_disabled(&self, agent_id: &str, reason: &str) {
        self.calls
            .lock()
            .push(SinkCall::NodeDisabled(agent_id.into(), reason.into()));
    }
}
