//! The functions' results, as the handlers return them and as their result schemas describe
//! them, and how Docker's answers become them.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerInspectResponse, ContainerSummary};
use schemars::JsonSchema;
use serde::Serialize;

/// The container a command acted on (`container.start`, `stop`, `restart`, `remove`).
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Acted {
    /// The container as the call named it.
    pub(super) id: String,
}

/// `container.list`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Listed {
    /// Newest first.
    pub(super) containers: Vec<Summary>,
}

/// One container as `container.list` describes it.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Summary {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) image: String,
    pub(super) command: String,
    /// Unix seconds.
    pub(super) created: i64,
    /// created, running, exited…
    pub(super) state: String,
    /// Docker's status text, e.g. "Up 3 minutes".
    pub(super) status: String,
    /// The container's labels.
    pub(super) labels: BTreeMap<String, String>,
}

/// Labels in name order.
fn sorted(labels: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    labels.unwrap_or_default().into_iter().collect()
}

impl From<ContainerSummary> for Summary {
    fn from(c: ContainerSummary) -> Self {
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        Summary {
            id: c.id.unwrap_or_default(),
            name,
            image: c.image.unwrap_or_default(),
            command: c.command.unwrap_or_default(),
            created: c.created.unwrap_or_default(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            status: c.status.unwrap_or_default(),
            labels: sorted(c.labels),
        }
    }
}

/// `container.inspect`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Inspection {
    pub(super) id: String,
    pub(super) name: String,
    /// The image as given at creation.
    pub(super) image: String,
    pub(super) image_id: String,
    pub(super) created: Option<String>,
    pub(super) state: State,
    /// The container's labels.
    pub(super) labels: BTreeMap<String, String>,
    pub(super) cmd: Option<Vec<String>>,
    pub(super) entrypoint: Option<Vec<String>>,
    pub(super) working_dir: String,
    pub(super) user: String,
    pub(super) restart_count: i64,
}

/// A container's state, in `container.inspect`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct State {
    pub(super) status: String,
    pub(super) running: bool,
    pub(super) paused: bool,
    pub(super) restarting: bool,
    pub(super) oom_killed: bool,
    pub(super) dead: bool,
    pub(super) pid: i64,
    pub(super) exit_code: i64,
    pub(super) error: String,
    pub(super) started_at: String,
    pub(super) finished_at: String,
}

impl From<ContainerInspectResponse> for Inspection {
    fn from(c: ContainerInspectResponse) -> Self {
        let state = c.state.unwrap_or_default();
        let config = c.config.unwrap_or_default();
        Inspection {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            image_id: c.image.unwrap_or_default(),
            created: c.created,
            state: State {
                status: state.status.map(|s| s.to_string()).unwrap_or_default(),
                running: state.running.unwrap_or(false),
                paused: state.paused.unwrap_or(false),
                restarting: state.restarting.unwrap_or(false),
                oom_killed: state.oom_killed.unwrap_or(false),
                dead: state.dead.unwrap_or(false),
                pid: state.pid.unwrap_or(0),
                exit_code: state.exit_code.unwrap_or(0),
                error: state.error.unwrap_or_default(),
                started_at: state.started_at.unwrap_or_default(),
                finished_at: state.finished_at.unwrap_or_default(),
            },
            labels: sorted(config.labels),
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            working_dir: config.working_dir.unwrap_or_default(),
            user: config.user.unwrap_or_default(),
            restart_count: c.restart_count.unwrap_or(0),
        }
    }
}

/// `container.create`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Created {
    /// The new container's id.
    pub(super) id: String,
    /// What Docker warned about when creating it.
    pub(super) warnings: Vec<String>,
}

/// `container.exec`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Executed {
    /// The container as the call named it.
    pub(super) id: String,
    /// null when the command closed its output but still runs.
    pub(super) exit_code: Option<i64>,
    pub(super) stdout: String,
    pub(super) stderr: String,
    /// Whether stdout or stderr was cut.
    pub(super) truncated: bool,
}

/// `container.logs`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Logged {
    /// The container as the call named it.
    pub(super) id: String,
    /// Lines streamed.
    pub(super) lines: u64,
}

/// `container.run`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Ran {
    /// The container's id.
    pub(super) id: String,
    pub(super) exit_code: i64,
    /// Lines streamed.
    pub(super) lines: u64,
    /// Whether the container was removed.
    pub(super) removed: bool,
}
