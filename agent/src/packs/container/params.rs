//! The functions' parameters, decoded from the payload, and the checks that JSON Schema does
//! not make: names free of `=`, no `croupier.*` labels, limits in range.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerCreateBody, HostConfig};
use croupier_sdk::HandlerError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    pub(super) all: bool,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) mine: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Target {
    pub(super) id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StopParams {
    pub(super) id: String,
    pub(super) timeout: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveParams {
    pub(super) id: String,
    #[serde(default)]
    pub(super) force: bool,
    #[serde(default)]
    pub(super) volumes: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecParams {
    pub(super) id: String,
    pub(super) cmd: Vec<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) working_dir: Option<String>,
    pub(super) user: Option<String>,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsParams {
    pub(super) id: String,
    #[serde(default = "default_true")]
    pub(super) follow: bool,
    pub(super) tail: Option<u64>,
    pub(super) since: Option<i64>,
    #[serde(default)]
    pub(super) timestamps: bool,
}

/// A container to create.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Spec {
    pub(super) image: String,
    pub(super) name: Option<String>,
    pub(super) cmd: Option<Vec<String>>,
    pub(super) entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    pub(super) working_dir: Option<String>,
    pub(super) user: Option<String>,
    pub(super) network_mode: Option<String>,
    pub(super) memory_bytes: Option<i64>,
    pub(super) cpus: Option<f64>,
    #[serde(default)]
    pub(super) binds: Vec<String>,
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

/// `container.run`'s parameters: a [`Spec`] plus `remove`.
pub(super) fn run_params(payload: &Value) -> Result<(Spec, bool), HandlerError> {
    let mut payload = if payload.is_null() {
        json!({})
    } else {
        payload.clone()
    };
    let remove = match payload.as_object_mut().and_then(|o| o.remove("remove")) {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(invalid(format!(
                "container.run: remove must be a boolean, not {other}"
            )));
        }
    };
    Ok((params("container.run", &payload)?, remove))
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
