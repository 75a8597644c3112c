//! The functions' parameters, decoded from the payload, and the checks that JSON Schema does
//! not make: names free of `=`, no `croupier.*` labels, limits in range.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerCreateBody, HostConfig};
use croupier_sdk::HandlerError;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::error::invalid;
use super::{AGENT_LABEL, JOB_LABEL, MAX_STOP_SECS, RESERVED_PREFIX};

/// Decodes a payload (null counts as `{}`), naming the function in the error.
pub(super) fn params<T: DeserializeOwned>(
    function: &str,
    payload: &Value,
) -> Result<T, HandlerError> {
    let payload = if payload.is_null() {
        json!({})
    } else {
        payload.clone()
    };
    serde_json::from_value(payload).map_err(|e| invalid(format!("{function}: {e}")))
}

/// What every `id` parameter says.
const CONTAINER_ID: &str = "The container's id (or a unique prefix of it) or name.";

/// `container.list`'s parameters.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// Include stopped containers.
    #[serde(default)]
    pub(super) all: bool,
    /// Labels every listed container carries, name → value.
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    /// Only containers this agent created.
    #[serde(default)]
    pub(super) mine: bool,
}

/// The container a function acts on (`container.inspect`, `container.start`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Target {
    #[schemars(description = CONTAINER_ID, length(min = 1))]
    pub(super) id: String,
}

/// `container.stop`'s and `container.restart`'s parameters.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StopParams {
    #[schemars(description = CONTAINER_ID, length(min = 1))]
    pub(super) id: String,
    /// Seconds to wait after the stop signal before killing (default: the container's, usually 10).
    #[schemars(range(min = 0, max = MAX_STOP_SECS))]
    pub(super) timeout: Option<i64>,
}

/// `container.remove`'s parameters.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveParams {
    #[schemars(description = CONTAINER_ID, length(min = 1))]
    pub(super) id: String,
    /// Kill and remove a running container.
    #[serde(default)]
    pub(super) force: bool,
    /// Remove its anonymous volumes.
    #[serde(default)]
    pub(super) volumes: bool,
}

/// `container.exec`'s parameters.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecParams {
    #[schemars(description = CONTAINER_ID, length(min = 1))]
    pub(super) id: String,
    /// Command and arguments.
    #[schemars(length(min = 1))]
    pub(super) cmd: Vec<String>,
    /// Extra environment variables, name → value.
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    /// Working directory of the command (default: the container's).
    pub(super) working_dir: Option<String>,
    /// User (name or uid[:gid]) the command runs as (default: the container's).
    pub(super) user: Option<String>,
}

fn default_true() -> bool {
    true
}

/// `container.logs`'s parameters.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsParams {
    #[schemars(description = CONTAINER_ID, length(min = 1))]
    pub(super) id: String,
    /// Keep streaming new output (default true).
    #[serde(default = "default_true")]
    pub(super) follow: bool,
    /// Start with the last N lines (default: all).
    pub(super) tail: Option<u64>,
    /// Only output since this Unix time (seconds).
    #[schemars(range(min = 0))]
    pub(super) since: Option<i64>,
    /// Prefix lines with Docker's timestamps.
    #[serde(default)]
    pub(super) timestamps: bool,
}

/// A container to create (`container.create`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Spec {
    /// Image, present on the agent's host (never pulled).
    #[schemars(length(min = 1))]
    pub(super) image: String,
    /// Container name.
    #[schemars(length(min = 1))]
    pub(super) name: Option<String>,
    /// Command and arguments (default: the image's).
    pub(super) cmd: Option<Vec<String>>,
    /// Entrypoint (default: the image's).
    pub(super) entrypoint: Option<Vec<String>>,
    /// Environment variables, name → value.
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    /// Labels; croupier.* are set by Croupier and may not be given.
    #[serde(default)]
    #[schemars(extend("propertyNames" = reserved_labels_refused()))]
    pub(super) labels: BTreeMap<String, String>,
    /// Working directory (default: the image's).
    pub(super) working_dir: Option<String>,
    /// User (name or uid[:gid]) the command runs as.
    pub(super) user: Option<String>,
    /// Network mode: bridge (default), host, none or a network's name.
    pub(super) network_mode: Option<String>,
    /// Memory limit.
    #[schemars(range(min = 0))]
    pub(super) memory_bytes: Option<i64>,
    /// CPU limit, in CPUs.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub(super) cpus: Option<f64>,
    /// Bind mounts, host-path:container-path[:ro].
    #[serde(default)]
    pub(super) binds: Vec<String>,
}

/// The JSON Schema of label names that are not under [`RESERVED_PREFIX`].
fn reserved_labels_refused() -> Value {
    json!({"not": {"pattern": format!("^{}", RESERVED_PREFIX.replace('.', "\\."))}})
}

/// `container.run`'s parameters: a container to create, and whether to remove it once it ended.
///
/// Decoded by hand (see the `Deserialize` impl): serde cannot combine `flatten` with
/// `deny_unknown_fields`. The serde attributes here tell `schemars` the shape that impl
/// accepts: the properties of [`Spec`] and `remove`, and no others.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunParams {
    #[serde(flatten)]
    pub(super) spec: Spec,
    /// Remove the container once it ended (default true).
    #[serde(default = "default_true")]
    pub(super) remove: bool,
}

impl<'de> Deserialize<'de> for RunParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut payload = Value::deserialize(deserializer)?;
        let remove = match payload.as_object_mut().and_then(|o| o.remove("remove")) {
            None => true,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "remove must be a boolean, not {other}"
                )));
            }
        };
        let spec = Spec::deserialize(payload).map_err(D::Error::custom)?;
        Ok(RunParams { spec, remove })
    }
}

pub(super) fn non_empty(field: &str, value: &str) -> Result<(), HandlerError> {
    if value.trim().is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    Ok(())
}

/// `NAME=value` entries; names must be non-empty and free of `=`.
pub(super) fn env_list(env: BTreeMap<String, String>) -> Result<Vec<String>, HandlerError> {
    env.into_iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                Err(invalid(format!(
                    "environment variable name {k:?} must be non-empty and free of '='"
                )))
            } else {
                Ok(format!("{k}={v}"))
            }
        })
        .collect()
}

/// The labels of a container Croupier creates: the caller's (none under `croupier.`), the
/// agent's id and, for a job, the job's id.
fn croupier_labels(
    user: BTreeMap<String, String>,
    agent_id: &str,
    job_id: &str,
) -> Result<HashMap<String, String>, HandlerError> {
    if let Some(k) = user.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
        return Err(invalid(format!(
            "label {k:?} is reserved: Croupier sets the {RESERVED_PREFIX}* labels itself"
        )));
    }
    let mut labels: HashMap<String, String> = user.into_iter().collect();
    labels.insert(AGENT_LABEL.into(), agent_id.into());
    if !job_id.is_empty() {
        labels.insert(JOB_LABEL.into(), job_id.into());
    }
    Ok(labels)
}

impl Spec {
    /// The container name and Docker's create body.
    pub(super) fn into_body(
        self,
        agent_id: &str,
        job_id: &str,
    ) -> Result<(Option<String>, ContainerCreateBody), HandlerError> {
        non_empty("image", &self.image)?;
        if let Some(name) = &self.name {
            non_empty("name", name)?;
        }
        let labels = croupier_labels(self.labels, agent_id, job_id)?;
        let nano_cpus = match self.cpus {
            Some(c) if !(c > 0.0 && c.is_finite()) => {
                return Err(invalid(format!("cpus must be a positive number, not {c}")));
            }
            Some(c) => Some((c * 1e9).round() as i64),
            None => None,
        };
        if let Some(m) = self.memory_bytes
            && m < 0
        {
            return Err(invalid(format!(
                "memory_bytes must not be negative, not {m}"
            )));
        }
        let host_config = HostConfig {
            network_mode: self.network_mode,
            memory: self.memory_bytes,
            nano_cpus,
            binds: (!self.binds.is_empty()).then_some(self.binds),
            ..Default::default()
        };
        let env = env_list(self.env)?;
        let body = ContainerCreateBody {
            image: Some(self.image),
            cmd: self.cmd,
            entrypoint: self.entrypoint,
            env: (!env.is_empty()).then_some(env),
            labels: Some(labels),
            working_dir: self.working_dir,
            user: self.user,
            host_config: Some(host_config),
            ..Default::default()
        };
        Ok((self.name, body))
    }
}

pub(super) fn stop_timeout(
    function: &str,
    timeout: Option<i64>,
) -> Result<Option<i32>, HandlerError> {
    match timeout {
        Some(t) if !(0..=MAX_STOP_SECS).contains(&t) => Err(invalid(format!(
            "{function}: timeout must be 0 to {MAX_STOP_SECS} seconds, not {t}"
        ))),
        Some(t) => Ok(Some(t as i32)),
        None => Ok(None),
    }
}
