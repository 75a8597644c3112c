//! The descriptors of the `container.*` functions: ids, descriptions, semantics, default
//! timeouts and the JSON Schemas of their parameters and results.

use croupier_proto::common::v1::{FunctionDescriptor, Semantics};
use croupier_proto::json::json_to_struct;
use serde_json::{Value, json};

use super::MAX_STOP_SECS;

/// Default timeouts (seconds) of the pack's functions.
const QUERY_TIMEOUT: i32 = 30;
const COMMAND_TIMEOUT: i32 = 60;
const STOP_TIMEOUT: i32 = MAX_STOP_SECS as i32 + 30;
const EXEC_TIMEOUT: i32 = 300;
const JOB_TIMEOUT: i32 = 3600;

fn descriptor(
    id: &str,
    kind: &str,
    idempotent: bool,
    timeout: i32,
    description: &str,
    params: Value,
    result: Value,
) -> FunctionDescriptor {
    FunctionDescriptor {
        id: id.into(),
        name: id.into(),
        category: "container".into(),
        description: description.into(),
        params_schema: Some(json_to_struct(&params)),
        result_schema: Some(json_to_struct(&result)),
        semantics: Some(Semantics {
            kind: kind.into(),
            idempotent,
            timeout,
            job: false,
        }),
        version: "1".into(),
        ..Default::default()
    }
}

/// JSON Schema of an object with these properties, the `required` ones, and no others.
fn params_object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// JSON Schema of an object whose listed properties are all required.
fn object(properties: Value) -> Value {
    let required: Vec<String> = properties
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "properties": properties, "required": required})
}

fn string_map(description: &str) -> Value {
    json!({
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": description,
    })
}

fn strings(description: &str) -> Value {
    json!({"type": "array", "items": {"type": "string"}, "description": description})
}

fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn container_id() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "description": "The container's id (or a unique prefix of it) or name."
    })
}

fn id_result() -> Value {
    object(json!({"id": {"type": "string"}}))
}

/// The properties of a container to create (`container.create`, `container.run`).
fn spec_properties() -> Value {
    json!({
        "image": {
            "type": "string",
            "minLength": 1,
            "description": "Image, present on the agent's host (never pulled)."
        },
        "name": {"type": "string", "minLength": 1, "description": "Container name."},
        "cmd": strings("Command and arguments (default: the image's)."),
        "entrypoint": strings("Entrypoint (default: the image's)."),
        "env": string_map("Environment variables, name → value."),
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "propertyNames": {"not": {"pattern": "^croupier\\."}},
            "description": "Labels; croupier.* are set by Croupier and may not be given."
        },
        "working_dir": {"type": "string"},
        "user": {"type": "string", "description": "User (name or uid[:gid]) the command runs as."},
        "network_mode": {
            "type": "string",
            "description": "Network mode: bridge (default), host, none or a network's name."
        },
        "memory_bytes": {"type": "integer", "minimum": 0, "description": "Memory limit."},
        "cpus": {"type": "number", "exclusiveMinimum": 0, "description": "CPU limit, in CPUs."},
        "binds": strings("Bind mounts, host-path:container-path[:ro]."),
    })
}

pub(super) fn list_descriptor() -> FunctionDescriptor {
    let summary = object(json!({
        "id": {"type": "string"},
        "name": {"type": "string"},
        "image": {"type": "string"},
        "command": {"type": "string"},
        "created": {"type": "integer", "description": "Unix seconds."},
        "state": {"type": "string", "description": "created, running, exited…"},
        "status": {"type": "string", "description": "Docker's status text, e.g. \"Up 3 minutes\"."},
        "labels": string_map("The container's labels."),
    }));
    descriptor(
        "container.list",
        "query",
        true,
        QUERY_TIMEOUT,
        "Lists the containers of the agent's host, newest first: running ones, or all with \
         `all`; `labels` keeps those carrying every given label (e.g. {\"croupier.job\": id}); \
         `mine` keeps those this agent created.",
        params_object(
            json!({
                "all": {"type": "boolean", "description": "Include stopped containers."},
                "labels": string_map("Labels every listed container carries, name → value."),
                "mine": {"type": "boolean", "description": "Only containers this agent created."},
            }),
            &[],
        ),
        object(json!({"containers": {"type": "array", "items": summary}})),
    )
}

pub(super) fn inspect_descriptor() -> FunctionDescriptor {
    let state = object(json!({
        "status": {"type": "string"},
        "running": {"type": "boolean"},
        "paused": {"type": "boolean"},
        "restarting": {"type": "boolean"},
        "oom_killed": {"type": "boolean"},
        "dead": {"type": "boolean"},
        "pid": {"type": "integer"},
        "exit_code": {"type": "integer"},
        "error": {"type": "string"},
        "started_at": {"type": "string"},
        "finished_at": {"type": "string"},
    }));
    descriptor(
        "container.inspect",
        "query",
        true,
        QUERY_TIMEOUT,
        "Describes one container: id, name, image, state (status, exit code, pid, times), \
         labels, command, entrypoint, working directory, user and restart count.",
        params_object(json!({"id": container_id()}), &["id"]),
        object(json!({
            "id": {"type": "string"},
            "name": {"type": "string"},
            "image": {"type": "string", "description": "The image as given at creation."},
            "image_id": {"type": "string"},
            "created": nullable(json!({"type": "string"})),
            "state": state,
            "labels": string_map("The container's labels."),
            "cmd": nullable(json!({"type": "array", "items": {"type": "string"}})),
            "entrypoint": nullable(json!({"type": "array", "items": {"type": "string"}})),
            "working_dir": {"type": "string"},
            "user": {"type": "string"},
            "restart_count": {"type": "integer"},
        })),
    )
}

pub(super) fn create_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.create",
        "command",
        false,
        COMMAND_TIMEOUT,
        "Creates a container (not started) from an image present on the host, labelled \
         croupier.agent=<agent id>. Images are never pulled.",
        params_object(spec_properties(), &["image"]),
        object(json!({
            "id": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        })),
    )
}

pub(super) fn start_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.start",
        "command",
        true,
        COMMAND_TIMEOUT,
        "Starts a container; a running one is left as it is.",
        params_object(json!({"id": container_id()}), &["id"]),
        id_result(),
    )
}

fn stop_params() -> Value {
    params_object(
        json!({
            "id": container_id(),
            "timeout": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_STOP_SECS,
                "description": "Seconds to wait after the stop signal before killing \
                                (default: the container's, usually 10)."
            },
        }),
        &["id"],
    )
}

pub(super) fn stop_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.stop",
        "command",
        true,
        STOP_TIMEOUT,
        "Stops a container: its stop signal, then SIGKILL after `timeout` seconds; a stopped \
         one is left as it is.",
        stop_params(),
        id_result(),
    )
}

pub(super) fn restart_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.restart",
        "command",
        false,
        STOP_TIMEOUT,
        "Restarts a container (stopping it first, killing it after `timeout` seconds).",
        stop_params(),
        id_result(),
    )
}

pub(super) fn remove_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.remove",
        "command",
        false,
        COMMAND_TIMEOUT,
        "Removes a container; a running one only with `force` (which kills it). `volumes` \
         also removes its anonymous volumes.",
        params_object(
            json!({
                "id": container_id(),
                "force": {"type": "boolean", "description": "Kill and remove a running container."},
                "volumes": {"type": "boolean", "description": "Remove its anonymous volumes."},
            }),
            &["id"],
        ),
        id_result(),
    )
}

pub(super) fn exec_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.exec",
        "command",
        false,
        EXEC_TIMEOUT,
        "Runs a command in a running container and answers when it ends: exit code, stdout and \
         stderr (each cut at 1 MiB, `truncated` says so). A call cancelled or past its deadline \
         kills the command.",
        params_object(
            json!({
                "id": container_id(),
                "cmd": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "description": "Command and arguments."
                },
                "env": string_map("Extra environment variables, name → value."),
                "working_dir": {"type": "string"},
                "user": {"type": "string"},
            }),
            &["id", "cmd"],
        ),
        object(json!({
            "id": {"type": "string"},
            "exit_code": nullable(json!({
                "type": "integer",
                "description": "null when the command closed its output but still runs."
            })),
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "truncated": {"type": "boolean"},
        })),
    )
}

pub(super) fn logs_descriptor() -> FunctionDescriptor {
    descriptor(
        "container.logs",
        "query",
        true,
        JOB_TIMEOUT,
        "A job: streams a container's output as LOG events, one per line, with data \
         {\"stream\": \"stdout\"|\"stderr\"}; with `follow` (default) until the container ends \
         or the job is cancelled.",
        params_object(
            json!({
                "id": container_id(),
                "follow": {"type": "boolean", "description": "Keep streaming new output (default true)."},
                "tail": {"type": "integer", "minimum": 0, "description": "Start with the last N lines (default: all)."},
                "since": {"type": "integer", "minimum": 0, "description": "Only output since this Unix time (seconds)."},
                "timestamps": {"type": "boolean", "description": "Prefix lines with Docker's timestamps."},
            }),
            &["id"],
        ),
        object(json!({
            "id": {"type": "string"},
            "lines": {"type": "integer", "minimum": 0, "description": "Lines streamed."},
        })),
    )
}

pub(super) fn run_descriptor() -> FunctionDescriptor {
    let mut params = spec_properties();
    params["remove"] = json!({
        "type": "boolean",
        "description": "Remove the container once it ended (default true)."
    });
    descriptor(
        "container.run",
        "command",
        false,
        JOB_TIMEOUT,
        "A job: creates a container (labelled croupier.agent and croupier.job), starts it, \
         streams its output as LOG events (data {\"stream\": \"stdout\"|\"stderr\"}), waits for \
         it to end and removes it (unless `remove` is false). The result has the exit code. \
         Cancelling the job stops and removes the container. Images are never pulled.",
        params_object(params, &["image"]),
        object(json!({
            "id": {"type": "string"},
            "exit_code": {"type": "integer"},
            "lines": {"type": "integer", "minimum": 0, "description": "Lines streamed."},
            "removed": {"type": "boolean"},
        })),
    )
}

/// A descriptor whose description also says Docker was unavailable at startup.
pub(super) fn with_note(
    mut d: FunctionDescriptor,
    unavailable: Option<&str>,
) -> FunctionDescriptor {
    if let Some(reason) = unavailable {
        d.description = format!(
            "{} [Docker is unavailable on this agent: {reason}. Calls answer UNAVAILABLE until \
             it runs.]",
            d.description
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::packs::container::fake::IMAGE;

    fn descriptors() -> Vec<FunctionDescriptor> {
        vec![
            list_descriptor(),
            inspect_descriptor(),
            create_descriptor(),
            start_descriptor(),
            stop_descriptor(),
            restart_descriptor(),
            remove_descriptor(),
            exec_descriptor(),
            logs_descriptor(),
            run_descriptor(),
        ]
    }

    fn schema(d: &FunctionDescriptor, result: bool) -> Value {
        let s = if result {
            &d.result_schema
        } else {
            &d.params_schema
        };
        croupier_proto::json::opt_struct_to_json(s.as_ref())
    }

    #[test]
    fn descriptors_are_container_functions_with_valid_schemas() {
        let all = descriptors();
        let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "container.list",
                "container.inspect",
                "container.create",
                "container.start",
                "container.stop",
                "container.restart",
                "container.remove",
                "container.exec",
                "container.logs",
                "container.run"
            ]
        );
        for d in &all {
            assert_eq!(d.category, "container", "{}", d.id);
            let sem = d.semantics.clone().unwrap();
            assert!(sem.timeout > 0, "{}", d.id);
            let query = ["container.list", "container.inspect", "container.logs"];
            assert_eq!(
                sem.kind == "query",
                query.contains(&d.id.as_str()),
                "{}",
                d.id
            );
            if sem.kind == "query" {
                assert!(sem.idempotent, "{}", d.id);
            }
            for result in [false, true] {
                jsonschema::validator_for(&schema(d, result))
                    .unwrap_or_else(|e| panic!("{} schema invalid: {e}", d.id));
            }
        }
        let create = jsonschema::validator_for(&schema(&create_descriptor(), false)).unwrap();
        assert!(create.is_valid(&json!({"image": IMAGE, "labels": {"team": "x"}})));
        assert!(!create.is_valid(&json!({"name": "x"})), "image is required");
        assert!(!create.is_valid(&json!({"image": IMAGE, "labels": {"croupier.job": "x"}})));
        assert!(!create.is_valid(&json!({"image": IMAGE, "bogus": 1})));
        let run = jsonschema::validator_for(&schema(&run_descriptor(), false)).unwrap();
        assert!(run.is_valid(&json!({"image": IMAGE, "cmd": ["true"], "remove": false})));
    }

    #[test]
    fn descriptions_say_when_docker_is_unavailable() {
        let d = with_note(
            list_descriptor(),
            Some("Docker is not running (no Docker socket at /x)"),
        );
        assert!(
            d.description
                .contains("Docker is unavailable on this agent: Docker is not running (no Docker socket at /x)"),
            "{}",
            d.description
        );
        assert_eq!(with_note(list_descriptor(), None), list_descriptor());
    }
}
