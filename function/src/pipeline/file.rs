//! The file form of a pipeline template, as `croupier pipeline put` reads it and the console
//! edits it: TOML (or JSON) with `id`, `description`, `envs`, `[[args]]` (`name`, `required`,
//! `default`, `description`) and `[[steps]]` (`name`, `function`, `args`, `timeout`,
//! `continue_on_failure`).

use croupier_proto::function::v1::{PipelineArg, PipelineStep, PipelineTemplate};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    envs: Vec<String>,
    #[serde(default)]
    args: Vec<ArgFile>,
    steps: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgFile {
    name: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    function: String,
    #[serde(default)]
    args: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    timeout: i32,
    #[serde(default)]
    continue_on_failure: bool,
}

/// Parses a template file's text: TOML, or JSON when `json`. The error names what is wrong
/// (an unknown key, a missing `id` or `steps`, a type).
pub fn parse_template(text: &str, json: bool) -> Result<PipelineTemplate, String> {
    let t: TemplateFile = if json {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        toml::from_str(text).map_err(|e| e.to_string())?
    };
    Ok(PipelineTemplate {
        id: t.id,
        description: t.description,
        envs: t.envs,
        args: t
            .args
            .into_iter()
            .map(|a| PipelineArg {
                name: a.name,
                required: a.required,
                default_value: a.default,
                description: a.description,
            })
            .collect(),
        steps: t
            .steps
            .into_iter()
            .map(|s| PipelineStep {
                name: s.name,
                function_id: s.function,
                args: Some(json_to_struct(&serde_json::Value::Object(s.args))),
                timeout: s.timeout,
                continue_on_failure: s.continue_on_failure,
            })
            .collect(),
    })
}

/// The template as the JSON `get` prints.
pub fn template_json(t: &PipelineTemplate) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "description": t.description,
        "envs": t.envs,
        "args": t.args.iter().map(|a| serde_json::json!({
            "name": a.name, "required": a.required, "default": a.default_value,
            "description": a.description,
        })).collect::<Vec<_>>(),
        "steps": t.steps.iter().map(|s| serde_json::json!({
            "name": s.name, "function": s.function_id,
            "args": opt_struct_to_json(s.args.as_ref()),
            "timeout": s.timeout, "continue_on_failure": s.continue_on_failure,
        })).collect::<Vec<_>>(),
    })
}

/// The template as TOML, the form people edit; `None` when a value has no TOML form (a null
/// in a step's args), for which the JSON form serves.
pub fn template_toml(t: &PipelineTemplate) -> Option<String> {
    toml::to_string(&template_json(t)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trips_and_errors_name_the_problem() {
        let text = "id = \"deploy\"\n[[args]]\nname = \"version\"\nrequired = true\n\n[[steps]]\nname = \"a\"\nfunction = \"container.run\"\nargs = { image = \"busybox\" }\n";
        let t = parse_template(text, false).unwrap();
        assert_eq!(t.steps[0].function_id, "container.run");
        let again = parse_template(&template_toml(&t).unwrap(), false).unwrap();
        assert_eq!(again, t);
        let err = parse_template("id = \"x\"\nstep = []\n", false).unwrap_err();
        assert!(err.contains("step"), "{err}");
    }
}
