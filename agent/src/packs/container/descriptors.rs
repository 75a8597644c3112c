//! The descriptors of the `container.*` functions: ids, descriptions, semantics and default
//! timeouts. Their JSON Schemas are derived from the parameter types ([`super::params`]) and the
//! result types ([`super::results`]) with `schemars` (see [`crate::descriptor`]).

use croupier_proto::common::v1::FunctionDescriptor;
use schemars::JsonSchema;

use super::MAX_STOP_SECS;
use super::params::{
    ExecParams, ListParams, LogsParams, RemoveParams, RunParams, Spec, StopParams, Target,
};
use super::results::{Acted, Created, Executed, Inspection, Listed, Logged, Ran};
use crate::descriptor::{Typed, semantics, typed};

/// Default timeouts (seconds) of the pack's functions.
const QUERY_TIMEOUT: i32 = 30;
const COMMAND_TIMEOUT: i32 = 60;
const STOP_TIMEOUT: i32 = MAX_STOP_SECS as i32 + 30;
const EXEC_TIMEOUT: i32 = 300;
const JOB_TIMEOUT: i32 = 3600;

/// A `container` descriptor with its schemas derived from `P` and `R`.
fn descriptor<P: JsonSchema, R: JsonSchema>(
    id: &str,
    kind: &str,
    idempotent: bool,
    timeout: i32,
    description: &str,
) -> Typed<P, R> {
    typed(
        id,
        "container",
        description,
        semantics(kind, idempotent, timeout),
    )
}

pub(super) fn list() -> Typed<ListParams, Listed> {
    descriptor(
        "container.list",
        "query",
        true,
        QUERY_TIMEOUT,
        "Lists the containers of the agent's host, newest first: running ones, or all with \
         `all`; `labels` keeps those carrying every given label (e.g. {\"croupier.job\": id}); \
         `mine` keeps those this agent created.",
    )
}

pub(super) fn inspect() -> Typed<Target, Inspection> {
    descriptor(
        "container.inspect",
        "query",
        true,
        QUERY_TIMEOUT,
        "Describes one container: id, name, image, state (status, exit code, pid, times), \
         labels, command, entrypoint, working directory, user and restart count.",
    )
}

pub(super) fn create() -> Typed<Spec, Created> {
    descriptor(
        "container.create",
        "command",
        false,
        COMMAND_TIMEOUT,
        "Creates a container (not started) from an image present on the host, labelled \
         croupier.agent=<agent id>. Images are never pulled.",
    )
}

pub(super) fn start() -> Typed<Target, Acted> {
    descriptor(
        "container.start",
        "command",
        true,
        COMMAND_TIMEOUT,
        "Starts a container; a running one is left as it is.",
    )
}

pub(super) fn stop() -> Typed<StopParams, Acted> {
    descriptor(
        "container.stop",
        "command",
        true,
        STOP_TIMEOUT,
        "Stops a container: its stop signal, then SIGKILL after `timeout` seconds; a stopped \
         one is left as it is.",
    )
}

pub(super) fn restart() -> Typed<StopParams, Acted> {
    descriptor(
        "container.restart",
        "command",
        false,
        STOP_TIMEOUT,
        "Restarts a container (stopping it first, killing it after `timeout` seconds).",
    )
}

pub(super) fn remove() -> Typed<RemoveParams, Acted> {
    descriptor(
        "container.remove",
        "command",
        false,
        COMMAND_TIMEOUT,
        "Removes a container; a running one only with `force` (which kills it). `volumes` \
         also removes its anonymous volumes.",
    )
}

pub(super) fn exec() -> Typed<ExecParams, Executed> {
    descriptor(
        "container.exec",
        "command",
        false,
        EXEC_TIMEOUT,
        "Runs a command in a running container and answers when it ends: exit code, stdout and \
         stderr (each cut at 1 MiB, `truncated` says so). A call cancelled or past its deadline \
         kills the command.",
    )
}

pub(super) fn logs() -> Typed<LogsParams, Logged> {
    descriptor(
        "container.logs",
        "query",
        true,
        JOB_TIMEOUT,
        "A job: streams a container's output as LOG events, one per line, with data \
         {\"stream\": \"stdout\"|\"stderr\"}; with `follow` (default) until the container ends \
         or the job is cancelled.",
    )
}

pub(super) fn run() -> Typed<RunParams, Ran> {
    descriptor(
        "container.run",
        "command",
        false,
        JOB_TIMEOUT,
        "A job: creates a container (labelled croupier.agent and croupier.job), starts it, \
         streams its output as LOG events (data {\"stream\": \"stdout\"|\"stderr\"}), waits for \
         it to end and removes it (unless `remove` is false). The result has the exit code. \
         Cancelling the job stops and removes the container. Images are never pulled.",
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
    use serde_json::{Value, json};

    use super::*;
    use crate::descriptor::check::schema;
    use crate::packs::container::fake::IMAGE;

    fn descriptors() -> Vec<FunctionDescriptor> {
        vec![
            list().descriptor,
            inspect().descriptor,
            create().descriptor,
            start().descriptor,
            stop().descriptor,
            restart().descriptor,
            remove().descriptor,
            exec().descriptor,
            logs().descriptor,
            run().descriptor,
        ]
    }

    fn params_validator(d: &FunctionDescriptor) -> jsonschema::Validator {
        jsonschema::validator_for(&schema(d, false)).unwrap()
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
            assert_inline_without_null(&schema(d, false), &d.id);
        }
        let create = params_validator(&create().descriptor);
        assert!(create.is_valid(&json!({"image": IMAGE, "labels": {"team": "x"}})));
        assert!(!create.is_valid(&json!({"name": "x"})), "image is required");
        assert!(!create.is_valid(&json!({"image": IMAGE, "labels": {"croupier.job": "x"}})));
        assert!(!create.is_valid(&json!({"image": IMAGE, "bogus": 1})));
        let run = params_validator(&run().descriptor);
        assert!(run.is_valid(&json!({"image": IMAGE, "cmd": ["true"], "remove": false})));
    }

    /// No `$ref`s (each schema reads on its own) and no `null` for a parameter that may be
    /// left out.
    fn assert_inline_without_null(schema: &Value, id: &str) {
        let text = schema.to_string();
        assert!(!text.contains("$ref"), "{id}: {schema:#}");
        assert!(!text.contains("\"null\""), "{id}: {schema:#}");
    }

    /// What the hand-written schemas refused is still refused, and what they accepted is still
    /// accepted.
    #[test]
    fn params_schemas_refuse_what_they_always_refused() {
        let cases: Vec<(FunctionDescriptor, Vec<Value>, Vec<Value>)> = vec![
            (
                list().descriptor,
                vec![
                    json!({}),
                    json!({"all": true, "labels": {"a": "b"}, "mine": false}),
                ],
                vec![
                    json!({"all": "yes"}),
                    json!({"labels": {"a": 1}}),
                    json!({"bogus": 1}),
                ],
            ),
            (
                inspect().descriptor,
                vec![json!({"id": "x"})],
                vec![
                    json!({}),
                    json!({"id": ""}),
                    json!({"id": "x", "force": true}),
                ],
            ),
            (
                start().descriptor,
                vec![json!({"id": "x"})],
                vec![
                    json!({}),
                    json!({"id": 1}),
                    json!({"id": "x", "timeout": 1}),
                ],
            ),
            (
                stop().descriptor,
                vec![
                    json!({"id": "x"}),
                    json!({"id": "x", "timeout": 0}),
                    json!({"id": "x", "timeout": 300}),
                ],
                vec![
                    json!({"id": "x", "timeout": 301}),
                    json!({"id": "x", "timeout": -1}),
                    json!({"id": "x", "timeout": 1.5}),
                    json!({"id": "x", "timeout": null}),
                    json!({"timeout": 1}),
                ],
            ),
            (
                restart().descriptor,
                vec![json!({"id": "x", "timeout": 10})],
                vec![json!({"id": "x", "timeout": 301})],
            ),
            (
                remove().descriptor,
                vec![json!({"id": "x", "force": true, "volumes": true})],
                vec![
                    json!({"id": "x", "force": 1}),
                    json!({"id": "x", "all": true}),
                ],
            ),
            (
                exec().descriptor,
                vec![json!({"id": "x", "cmd": ["true"], "env": {"A": "1"}, "user": "0"})],
                vec![
                    json!({"id": "x"}),
                    json!({"id": "x", "cmd": []}),
                    json!({"id": "x", "cmd": "true"}),
                    json!({"id": "x", "cmd": ["true"], "user": null}),
                    json!({"id": "x", "cmd": ["true"], "working_dir": 1}),
                ],
            ),
            (
                logs().descriptor,
                vec![json!({"id": "x", "follow": false, "tail": 10, "since": 0})],
                vec![
                    json!({"id": "x", "tail": -1}),
                    json!({"id": "x", "since": -1}),
                    json!({"id": "x", "tail": null}),
                    json!({"id": "x", "follow": "no"}),
                ],
            ),
            (
                create().descriptor,
                vec![json!({
                    "image": IMAGE, "name": "n", "cmd": ["a"], "entrypoint": ["b"],
                    "env": {"A": "1"}, "labels": {"team": "x", "croupierx": "y"},
                    "working_dir": "/", "user": "0", "network_mode": "none",
                    "memory_bytes": 0, "cpus": 0.5, "binds": ["/a:/b:ro"]
                })],
                vec![
                    json!({"image": ""}),
                    json!({"image": IMAGE, "name": ""}),
                    json!({"image": IMAGE, "name": null}),
                    json!({"image": IMAGE, "cmd": null}),
                    json!({"image": IMAGE, "memory_bytes": -1}),
                    json!({"image": IMAGE, "cpus": 0}),
                    json!({"image": IMAGE, "cpus": -1}),
                    json!({"image": IMAGE, "remove": false}),
                ],
            ),
            (
                run().descriptor,
                vec![
                    json!({"image": IMAGE}),
                    json!({"image": IMAGE, "remove": true}),
                ],
                vec![
                    json!({"remove": true}),
                    json!({"image": IMAGE, "remove": "no"}),
                    json!({"image": IMAGE, "labels": {"croupier.agent": "x"}}),
                    json!({"image": IMAGE, "cpus": 0}),
                    json!({"image": IMAGE, "bogus": 1}),
                ],
            ),
        ];
        for (d, good, bad) in cases {
            let v = params_validator(&d);
            for p in good {
                assert!(v.is_valid(&p), "{} refused {p}", d.id);
            }
            for p in bad {
                assert!(!v.is_valid(&p), "{} accepted {p}", d.id);
            }
        }
    }

    #[test]
    fn descriptions_say_when_docker_is_unavailable() {
        let d = with_note(
            list().descriptor,
            Some("Docker is not running (no Docker socket at /x)"),
        );
        assert!(
            d.description
                .contains("Docker is unavailable on this agent: Docker is not running (no Docker socket at /x)"),
            "{}",
            d.description
        );
        assert_eq!(with_note(list().descriptor, None), list().descriptor);
    }
}
